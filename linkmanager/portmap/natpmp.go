package portmap

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
)

// NATPMP speaks NAT-PMP (RFC 6886) to the gateway's port 5351 through
// github.com/jackpal/go-nat-pmp. The library takes no context: each call
// gets the context's remaining time as its retry budget.
type NATPMP struct {
	gw      net.IP
	timeout time.Duration
}

// NewNATPMP is a NAT-PMP client of gateway; timeout bounds each request.
func NewNATPMP(gateway netip.Addr, timeout time.Duration) *NATPMP {
	return &NATPMP{gw: net.IP(gateway.AsSlice()), timeout: timeout}
}

// Name implements Protocol.
func (*NATPMP) Name() string { return "nat-pmp" }

func (n *NATPMP) client(ctx context.Context) *natpmp.Client {
	t := n.timeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < t {
		t = max(time.Until(d), time.Millisecond)
	}
	return natpmp.NewClientWithTimeout(n.gw, t)
}

// ExternalAddr implements Protocol.
func (n *NATPMP) ExternalAddr(ctx context.Context) (netip.Addr, error) {
	r, err := n.client(ctx).GetExternalAddress()
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.AddrFrom4(r.ExternalIPAddress), nil
}

// Map implements Protocol.
func (n *NATPMP) Map(ctx context.Context, internal, external uint16, lifetime time.Duration) (uint16, time.Duration, error) {
	r, err := n.client(ctx).AddPortMapping("udp", int(internal), int(external), int(lifetime/time.Second))
	if err != nil {
		return 0, 0, err
	}
	if r.InternalPort != internal {
		return 0, 0, fmt.Errorf("%w: asked for internal port %d, answer names %d", ErrBadResponse, internal, r.InternalPort)
	}
	return r.MappedExternalPort, time.Duration(r.PortMappingLifetimeInSeconds) * time.Second, nil
}

// Unmap implements Protocol: a request with lifetime 0 and external port 0
// (RFC 6886 §3.4).
func (n *NATPMP) Unmap(ctx context.Context, internal, _ uint16) error {
	_, err := n.client(ctx).AddPortMapping("udp", int(internal), 0, 0)
	return err
}
