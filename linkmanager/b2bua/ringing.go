package b2bua

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// trunkCount counts calls per trunk and in total, for the bounds the
// B2BUA admits calls by (ringing, admission).
type trunkCount struct {
	mu      sync.Mutex
	total   int            // guarded by mu
	byTrunk map[string]int // guarded by mu
}

// take counts one more on trunk unless perTrunk or total (each > 0) is
// reached; force counts it whatever the bounds. Every true must be
// followed by one put.
func (c *trunkCount) take(trunk string, perTrunk, total int, force bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !force && (total > 0 && c.total >= total || perTrunk > 0 && c.byTrunk[trunk] >= perTrunk) {
		return false
	}
	if c.byTrunk == nil {
		c.byTrunk = map[string]int{}
	}
	c.total++
	c.byTrunk[trunk]++
	return true
}

func (c *trunkCount) put(trunk string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.byTrunk[trunk]--; c.byTrunk[trunk] <= 0 {
		delete(c.byTrunk, trunk)
	}
}

// on is the count on trunk now.
func (c *trunkCount) on(trunk string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byTrunk[trunk]
}

// ringing admits the calls the provider side offers while they are not
// answered yet, up to a bound per trunk and in total (issue 9 item 7).
// Each holds a relay pair from its INVITE on; 700 INVITEs from a forged
// provider address once took 499 of 500 pairs, so the PBX's next call got
// 503. Answered calls are not counted: they hold their pair by right, and
// a flood cannot answer its own calls.
type ringing struct {
	perTrunk, total int // 0: no bound
	count           trunkCount

	// refusedLog lets one refusal a while be logged: the refusals are
	// the flood.
	refusedLog rate.Sometimes
}

func newRinging(perTrunk, total int) *ringing {
	return &ringing{perTrunk: perTrunk, total: total, refusedLog: rate.Sometimes{Interval: 10 * time.Second}}
}

// admit counts one more unanswered call on trunk, or reports that a bound
// is reached. Every true must be followed by one release.
func (r *ringing) admit(trunk string) bool { return r.count.take(trunk, r.perTrunk, r.total, false) }

func (r *ringing) release(trunk string) { r.count.put(trunk) }

// ringingOn is how many unanswered calls trunk has now.
func (r *ringing) ringingOn(trunk string) int { return r.count.on(trunk) }
