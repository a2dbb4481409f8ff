package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"sync"
	"time"

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

// igdSearch is one SSDP search for one IGD service type.
type igdSearch func(context.Context) ([]igdClient, []*url.URL, error)

// searchFor adapts goupnp's typed client constructors to igdSearch.
func searchFor[C interface {
	igdClient
	location() *url.URL
}](find func(context.Context) ([]C, []error, error)) igdSearch {
	return func(ctx context.Context) ([]igdClient, []*url.URL, error) {
		cs, errs, err := find(ctx)
		var out []igdClient
		var locs []*url.URL
		for _, c := range cs {
			out, locs = append(out, c), append(locs, c.location())
		}
		return out, locs, errors.Join(append(errs, err)...)
	}
}

// Typed wrappers, so searchFor can read each client's Location.
type (
	ip2 struct {
		*internetgateway2.WANIPConnection2
	}
	ip1 struct {
		*internetgateway2.WANIPConnection1
	}
	ppp1 struct {
		*internetgateway2.WANPPPConnection1
	}
)

func (c ip2) location() *url.URL  { return c.Location }
func (c ip1) location() *url.URL  { return c.Location }
func (c ppp1) location() *url.URL { return c.Location }

func wrap[T, C any](find func(context.Context) ([]T, []error, error), w func(T) C) func(context.Context) ([]C, []error, error) {
	return func(ctx context.Context) ([]C, []error, error) {
		ts, errs, err := find(ctx)
		cs := make([]C, len(ts))
		for i, t := range ts {
			cs[i] = w(t)
		}
		return cs, errs, err
	}
}

// igdSearches in order of preference: IGDv2 routers (miniupnpd's default)
// offer WANIPConnection:2 only, older ones :1, PPPoE ones WANPPPConnection.
var igdSearches = []igdSearch{
	searchFor(wrap(internetgateway2.NewWANIPConnection2ClientsCtx, func(c *internetgateway2.WANIPConnection2) ip2 { return ip2{c} })),
	searchFor(wrap(internetgateway2.NewWANIPConnection1ClientsCtx, func(c *internetgateway2.WANIPConnection1) ip1 { return ip1{c} })),
	searchFor(wrap(internetgateway2.NewWANPPPConnection1ClientsCtx, func(c *internetgateway2.WANPPPConnection1) ppp1 { return ppp1{c} })),
}

// ssdpSearch is how long goupnp's SSDP search listens for answers (fixed
// at 2 s inside DiscoverDevicesCtx); the device description is fetched
// after it, within the same context.
const ssdpSearch = 2 * time.Second

// discoverUPnP searches by SSDP for an IGD at gateway, every service type
// at once (each search listens ssdpSearch). Devices other than the gateway
// are ignored. timeout bounds the description fetch.
func discoverUPnP(ctx context.Context, gateway, local netip.Addr, timeout time.Duration) (*UPnP, error) {
	ctx, cancel := context.WithTimeout(ctx, ssdpSearch+timeout)
	defer cancel()
	found := make([]igdClient, len(igdSearches))
	errs := make([]error, len(igdSearches))
	var wg sync.WaitGroup
	for i, search := range igdSearches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, locs, err := search(ctx)
			for j, c := range cs {
				if atGateway(locs[j], gateway) {
					found[i] = c
					return
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, c := range found {
		if c != nil {
			return &UPnP{c: c, local: local.String()}, nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: no UPnP IGD at %s: %w", ErrNoGateway, gateway, err)
	}
	return nil, fmt.Errorf("%w: no UPnP IGD at %s", ErrNoGateway, gateway)
}

// atGateway: only the router we route through may map our ports.
func atGateway(loc *url.URL, gateway netip.Addr) bool {
	if loc == nil {
		return false
	}
	h, err := netip.ParseAddr(loc.Hostname())
	return err == nil && h.Unmap() == gateway
}
