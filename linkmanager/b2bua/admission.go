package b2bua

import (
	"net/netip"
	"sync"

	"golang.org/x/time/rate"
)

// admission holds the outbound policy's counters (issue 9 item 4): the
// calls up on each trunk, both ways, against its max_calls, and the new
// calls per second of each source against pbx.max_call_rate. A call
// counts from its INVITE to its end: reserve before the call exists,
// then the call's end releases it (bridgeParams.onEnd, releaseUnlessLive).
type admission struct {
	calls trunkCount // by trunk, both ways

	mu      sync.Mutex
	sources map[netip.Addr]*rate.Limiter // guarded by mu; by PBX source
}

// maxSources bounds the limiters kept: only pbx.allow reaches them, but
// that may be a wide prefix.
const maxSources = 4096

func newAdmission() *admission {
	return &admission{sources: map[netip.Addr]*rate.Limiter{}}
}

// reserve counts a call on trunk unless max (>0) calls are up there;
// force counts it whatever the cap (an emergency call, an inbound one).
func (a *admission) reserve(trunk string, max int, force bool) bool {
	return a.calls.take(trunk, max, 0, force)
}

func (a *admission) unreserve(trunk string) { a.calls.put(trunk) }

// up is the calls counted on trunk.
func (a *admission) up(trunk string) int { return a.calls.on(trunk) }

// rate reports whether src may place one more call now at perSecond
// (bursts of twice that; 0: no limit).
func (a *admission) rate(src netip.Addr, perSecond float64) bool {
	if perSecond <= 0 {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.sources[src]
	if !ok || l.Limit() != rate.Limit(perSecond) {
		if len(a.sources) >= maxSources {
			clear(a.sources) // a fresh start for all beats unbounded memory
		}
		l = rate.NewLimiter(rate.Limit(perSecond), max(1, int(2*perSecond)))
		a.sources[src] = l
	}
	return l.Allow()
}
