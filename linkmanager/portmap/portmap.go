// Package portmap asks the LAN's router for UDP port mappings (PCP,
// RFC 6887, then NAT-PMP, RFC 6886, then UPnP IGD: whichever answers, as
// tailscale's portmapper does), renews them before they expire and deletes them on
// shutdown.
//
// Behind a symmetric NAT (MASQUERADE --random-fully, carrier-grade and many
// enterprise firewalls) the relay's public port is random per destination,
// so a remote that does not latch sends its RTP into nothing
// (nat-findings 7). A router-granted mapping gives the port a fixed public
// address that any remote can reach.
//
// Ports are mapped on demand, one relay pair per call, not the whole RTP
// pool: miniupnpd 2.3.1 took 6.9 s to grant 1,000 NAT-PMP mappings and,
// with 1,000 rules in place, over 40 ms to delete each one (it rescans its
// rule list per request), so a pool-wide mapping would hold up shutdown for
// most of a minute. A call pair costs two round trips on the LAN before
// the SDP goes out.
//
// Everything that depends on time runs on an injectable clock, so the
// renewal logic is tested without waiting.
package portmap

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"
)

// Sentinel errors.
var (
	ErrNoGateway   = errors.New("portmap: no gateway answers PCP, NAT-PMP or UPnP")
	ErrNotMapped   = errors.New("portmap: no mapping granted")
	ErrClosed      = errors.New("portmap: closed")
	ErrBadResponse = errors.New("portmap: bad answer from the gateway")
)

// Protocol is one way of asking a gateway for mappings. Implementations:
// PCP, NATPMP, UPnP; tests use fakes.
type Protocol interface {
	// Name is how /status and the logs call it: "pcp", "nat-pmp", "upnp".
	Name() string
	// ExternalAddr is the gateway's public address.
	ExternalAddr(ctx context.Context) (netip.Addr, error)
	// Map asks for UDP internal → external (the wish; the gateway may
	// grant another port) for lifetime; it returns what was granted.
	Map(ctx context.Context, internal, external uint16, lifetime time.Duration) (granted uint16, life time.Duration, err error)
	// Unmap deletes the mapping of internal (granted as external).
	Unmap(ctx context.Context, internal, external uint16) error
}

// addrGranter is a Protocol whose every grant names the external address
// (PCP's MAP answer); it has no request for the address alone, so the
// Mapper takes it from the grants, and follows a redial with the next one.
type addrGranter interface {
	MapAddr(ctx context.Context, internal, external uint16, lifetime time.Duration) (netip.AddrPort, time.Duration, error)
}

// stateLoser is a Protocol that notices when the gateway lost its mappings
// (PCP's epoch, RFC 6887 §8.5): the Mapper then renews every lease at once.
type stateLoser interface {
	Lost() <-chan struct{}
}

// Lease is one granted mapping.
type Lease struct {
	Internal uint16         // our local port
	External netip.AddrPort // the router's public address and granted port
	Granted  time.Time      // when the gateway last granted it
	Lifetime time.Duration  // as granted
}

// Expires is when the gateway drops the lease unless it is renewed.
func (l Lease) Expires() time.Time { return l.Granted.Add(l.Lifetime) }

// RenewAt is when a lease should be renewed: at half its lifetime (RFC 6886
// §3.3 suggests renewing from half the lifetime on), and never later than
// renewMargin before it expires, so a lost renewal has time for retries.
func RenewAt(l Lease) time.Time {
	half := l.Lifetime / 2
	if m := l.Lifetime - renewMargin; m < half && m > 0 {
		half = m
	}
	return l.Granted.Add(half)
}

// renewMargin: a renewal starts at least this long before expiry.
const renewMargin = 30 * time.Second

// nextWake is the earliest RenewAt of leases, or ok=false when there is none.
func nextWake(leases map[uint16]Lease) (at time.Time, ok bool) {
	for _, l := range leases {
		if r := RenewAt(l); !ok || r.Before(at) {
			at, ok = r, true
		}
	}
	return at, ok
}

// due lists the internal ports whose leases should be renewed at now, in
// ascending order.
func due(leases map[uint16]Lease, now time.Time) []uint16 {
	var ports []uint16
	for p, l := range leases {
		if !now.Before(RenewAt(l)) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}
