package b2bua

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ringing admits the calls the provider side offers while they are not
// answered yet, up to a bound per trunk and in total (issue 9 item 7).
// Each holds a relay pair from its INVITE on; 700 INVITEs from a forged
// provider address once took 499 of 500 pairs, so the PBX's next call got
// 503. Answered calls are not counted: they hold their pair by right, and
// a flood cannot answer its own calls.
type ringing struct {
	perTrunk, total int // 0: no bound

	mu      sync.Mutex
	n       int            // guarded by mu
	byTrunk map[string]int // guarded by mu

	// refusedLog lets one refusal a while be logged: the refusals are
	// the flood.
	refusedLog rate.Sometimes
}

func newRinging(perTrunk, total int) *ringing {
	return &ringing{perTrunk: perTrunk, total: total, byTrunk: map[string]int{},
		refusedLog: rate.Sometimes{Interval: 10 * time.Second}}
}

// admit counts one more unanswered call on trunk, or reports that a bound
// is reached. Every true must be followed by one release.
func (r *ringing) admit(trunk string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.total > 0 && r.n >= r.total || r.perTrunk > 0 && r.byTrunk[trunk] >= r.perTrunk {
		return false
	}
	r.n++
	r.byTrunk[trunk]++
	return true
}

func (r *ringing) release(trunk string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n--
	if r.byTrunk[trunk]--; r.byTrunk[trunk] <= 0 {
		delete(r.byTrunk, trunk)
	}
}

// ringingOn is how many unanswered calls trunk has now.
func (r *ringing) ringingOn(trunk string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byTrunk[trunk]
}
