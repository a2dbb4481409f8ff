package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// igdClient is the part of goupnp's WANIPConnection and WANPPPConnection
// clients that UPnP uses.
type igdClient interface {
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	AddPortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string,
		internalPort uint16, internalClient string, enabled bool, description string, leaseSeconds uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string) error
}

// UPnP speaks UPnP IGD (WANIPConnection, or WANPPPConnection on PPPoE
// routers) through github.com/huin/goupnp.
type UPnP struct {
	c     igdClient
	local string // our LAN address, the mapping's internal client
}

// Name implements Protocol.
func (*UPnP) Name() string { return "upnp" }

// upnpPermanentOnly is UPnP's OnlyPermanentLeasesSupported: some IGDv1
// routers take only lease 0.
const upnpPermanentOnly = 725

// ExternalAddr implements Protocol.
func (u *UPnP) ExternalAddr(ctx context.Context) (netip.Addr, error) {
	s, err := u.c.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: external address %q", ErrBadResponse, s)
	}
	return a, nil
}

// Map implements Protocol. UPnP grants the asked external port or fails
// (ConflictInMappingEntry).
func (u *UPnP) Map(ctx context.Context, internal, external uint16, lifetime time.Duration) (uint16, time.Duration, error) {
	if external == 0 {
		external = internal
	}
	secs := uint32(lifetime / time.Second)
	err := u.c.AddPortMappingCtx(ctx, "", external, "UDP", internal, u.local, true, "linkmanager", secs)
	var se *soap.SOAPFaultError
	if errors.As(err, &se) && se.Detail.UPnPError.Errorcode == upnpPermanentOnly {
		// Permanent it is; Run still "renews" it, and Close deletes it.
		err = u.c.AddPortMappingCtx(ctx, "", external, "UDP", internal, u.local, true, "linkmanager", 0)
	}
	if err != nil {
		return 0, 0, err
	}
	return external, lifetime, nil
}

// Unmap implements Protocol.
func (u *UPnP) Unmap(ctx context.Context, _, external uint16) error {
	return u.c.DeletePortMappingCtx(ctx, "", external, "UDP")
}

// discoverUPnP searches by SSDP for an IGD at gateway: WANIPConnection
// first, then WANPPPConnection. Devices other than the gateway are ignored.
func discoverUPnP(ctx context.Context, gateway, local netip.Addr) (*UPnP, error) {
	atGateway := func(sc goupnp.ServiceClient) bool {
		if sc.Location == nil {
			return false
		}
		h, err := netip.ParseAddr(sc.Location.Hostname())
		return err == nil && h.Unmap() == gateway
	}
	ip1, _, err1 := internetgateway2.NewWANIPConnection1ClientsCtx(ctx)
	for _, c := range ip1 {
		if atGateway(c.ServiceClient) {
			return &UPnP{c: c, local: local.String()}, nil
		}
	}
	ppp, _, err2 := internetgateway2.NewWANPPPConnection1ClientsCtx(ctx)
	for _, c := range ppp {
		if atGateway(c.ServiceClient) {
			return &UPnP{c: c, local: local.String()}, nil
		}
	}
	return nil, fmt.Errorf("%w: no UPnP IGD at %s (%w)", ErrNoGateway, gateway, errors.Join(err1, err2))
}
