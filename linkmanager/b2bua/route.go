package b2bua

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// resolveTimeout bounds the DNS lookup of one in-dialog request's next
// hop: a hang-up must not wait for a slow resolver.
const resolveTimeout = 2 * time.Second

// Resolve looks up a SIP URI's host the RFC 3263 way for UDP: with a
// port, its addresses; without one, its _sip._udp SRV targets, else its
// addresses on 5060; best first. The daemon passes the trunk package's.
type Resolve func(ctx context.Context, host string, port int) ([]netip.AddrPort, error)

// nextHops decides where the in-dialog requests of both sides go: what
// the dialog's route set and remote target say (RFC 3261 §12.2.1.1,
// §8.1.2), as long as the side trusts that address. Shared by every side.
type nextHops struct {
	ctx     context.Context // the B2BUA's: Close ends a lookup at once
	resolve Resolve         // nil: numeric hosts only
	log     *zap.Logger
	every   rate.Sometimes // one log line a while: the URIs come from the peers
	refused atomic.Uint64  // requests sent to the fallback instead (Snapshot.RouteFallbacks)
}

// routing is the Request-URI, the Route headers and the URI of the next
// hop of a request in this dialog (RFC 3261 §12.2.1.1). A loose router
// first (;lr): the remote target, the whole route set, sent to that
// router. A strict router first (RFC 2543): the router itself as
// Request-URI, the rest of the set and then the remote target as Route,
// sent to it. No route set: the remote target, sent to it. Call with
// d.mu held.
func (d *dialog) routing() (ruri sip.Uri, routes []sip.Uri, hop sip.Uri) {
	if len(d.routes) == 0 {
		return d.target, nil, d.target
	}
	first := d.routes[0]
	if first.UriParams.Has("lr") {
		return d.target, d.routes, first
	}
	// A Request-URI carries no headers (RFC 3261 §19.1.1).
	ruri = first
	ruri.Headers = nil
	return ruri, append(slices.Clone(d.routes[1:]), d.target), first
}

// where is the address a request with next hop u goes to on side s. The
// URI came from the peer (Record-Route, Contact), so it is only followed
// to an address the side trusts: on the Internet side the trunk's
// provider (its registrar's and proxy's SRV targets and trunks[].allow),
// so that a Contact or Record-Route naming a LAN host or a stranger
// cannot make us send there; on the LAN side pbx.allow, the only hosts
// whose answers the LAN socket lets through at all. A PBX puts its own
// LAN address in its Contact, so a PBX cluster in pbx.allow is followed,
// and a phone's address behind a PBX that does not record-route is not.
// Anything else, and a name that does not resolve, goes to fallback: the
// trunk's next hop the INVITE took, or the PBX address the call came
// from or went to.
func (s *side) where(u sip.Uri, fallback netip.AddrPort) netip.AddrPort {
	h := s.hops
	if h == nil {
		return fallback
	}
	var cands []netip.AddrPort
	if ip, err := netip.ParseAddr(strings.Trim(u.Host, "[]")); err == nil {
		cands = []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), uint16(cmpPort(u.Port)))}
	} else if h.resolve != nil && u.Host != "" {
		ctx, stop := context.WithTimeout(h.ctx, resolveTimeout)
		cands, err = h.resolve(ctx, u.Host, u.Port)
		stop()
		if err != nil {
			h.fellBack(s.name, u, fallback, "does not resolve")
			return fallback
		}
	}
	for _, a := range cands {
		if a.Addr() == fallback.Addr() || s.trusts != nil && s.trusts(a.Addr()) {
			return a
		}
	}
	h.fellBack(s.name, u, fallback, "not an address this side trusts")
	return fallback
}

// fellBack counts a request sent to the fallback instead of where the
// dialog said, with one log line a while.
func (h *nextHops) fellBack(side string, u sip.Uri, fallback netip.AddrPort, why string) {
	n := h.refused.Add(1)
	h.every.Do(func() {
		h.log.Warn("in-dialog request sent to the dialog's first hop instead of where its route set or Contact points",
			zap.String("side", side), zap.String("uri", u.String()), zap.String("why", why),
			zap.Stringer("sent_to", fallback), zap.Uint64("total", n))
	})
}

func cmpPort(p int) int {
	if p == 0 {
		return 5060
	}
	return p
}

// refreshTarget takes the Contact of a target refresh (a re-INVITE or
// UPDATE, or its 2xx) as the dialog's remote target (RFC 3261 §12.2.1.2,
// §12.2.2; RFC 3311 §5.1); the route set stays what the dialog was made
// with.
func (d *dialog) refreshTarget(ct *sip.ContactHeader) {
	if ct == nil {
		return
	}
	d.mu.Lock()
	d.target = ct.Address
	d.mu.Unlock()
}
