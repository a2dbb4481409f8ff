package b2bua

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/policy"
)

// policyRouter is fakeRouter with the trunk's outbound rules and cap.
type policyRouter struct {
	fakeRouter
	rules    policy.Rules
	maxCalls int
}

func (r policyRouter) Route(dialled string) (Route, error) {
	rt, err := r.fakeRouter.Route(dialled)
	rt.Denied, rt.MaxCalls = r.rules.Check(dialled), r.maxCalls
	return rt, err
}

// policyHarness: a trunk that denies 0900*, takes one call at a time,
// and a PBX that may place 2 calls per second (bursts of 4); the provider
// answers everything.
func policyHarness(t *testing.T, rate float64) *harness {
	h := newHarness(t, func(c *Config) {
		c.Router = policyRouter{fakeRouter: fakeRouter{dst: c.Router.(fakeRouter).dst}, rules: policy.Rules{Deny: []string{"0900*"}}, maxCalls: 1}
		c.PBX.Emergency = []string{"112"}
		c.PBX.MaxCallRate = rate
	})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	return h
}

// talk places a call that must be answered, then hangs it up.
func (h *harness) talk(number string, port int, what string) {
	h.t.Helper()
	u, code := h.dial(number, port)
	if code != 200 {
		h.t.Fatalf("%s: %d, want 200", what, code)
	}
	if res := u.do(sip.BYE, 2, nil); res.StatusCode != 200 {
		h.t.Fatalf("%s: BYE answered %d", what, res.StatusCode)
	}
	h.awaitEnded()
}

func (h *harness) dial(number string, port int) (*uac, int) {
	h.t.Helper()
	u := h.pbx.call(h.lan.addr, number, sdpOf(pbxIP, port))
	final, _ := u.final()
	if final.StatusCode == 200 {
		u.ack()
	}
	return u, int(final.StatusCode)
}

// TestOutboundPolicy (issue 9 item 4): a denied number gets 403 and never
// reaches the provider; the trunk's cap refuses a second call while one is
// up and frees its place when that call ends; emergency numbers pass the
// deny rule, the cap and a drain.
func TestOutboundPolicy(t *testing.T) {
	h := policyHarness(t, 0)
	if _, code := h.dial("09001234567", 20000); code != 403 {
		t.Fatalf("premium-rate number: %d, want 403", code)
	}
	if n := len(h.prov.received(sip.INVITE)); n != 0 {
		t.Fatalf("the provider got %d INVITEs for a denied number", n)
	}
	first, code := h.dial("0301234567", 20002)
	if code != 200 {
		t.Fatalf("first call: %d", code)
	}
	if _, code := h.dial("0301234568", 20004); code != 503 {
		t.Fatalf("second call on a trunk with max_calls 1: %d, want 503", code)
	}
	emergency, code := h.dial("112", 20006)
	if code != 200 {
		t.Fatalf("emergency call while the trunk is full: %d, want 200", code)
	}
	if up := h.b.admit.up("provider"); up != 2 {
		t.Fatalf("%d calls counted on the trunk, want 2 (the emergency call counts too)", up)
	}
	for _, u := range []*uac{first, emergency} {
		if res := u.do(sip.BYE, 2, nil); res.StatusCode != 200 {
			t.Fatalf("BYE: %d", res.StatusCode)
		}
		h.awaitEnded()
	}
	if up := h.b.admit.up("provider"); up != 0 {
		t.Fatalf("%d calls counted after both ended, want 0", up)
	}
	h.talk("0301234569", 20008, "a call after the others ended")
	// Emergency numbers pass a deny rule for them, and the drain.
	h.b.Drain()
	if _, code := h.dial("0301234570", 20010); code != 503 {
		t.Fatalf("a call while draining: %d, want 503", code)
	}
	h.talk("112", 20012, "emergency call while draining")
}

// Emergency numbers beat the trunk's deny rules as well.
func TestEmergencyBeatsDeny(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Router = policyRouter{fakeRouter: fakeRouter{dst: c.Router.(fakeRouter).dst}, rules: policy.Rules{Allow: []string{"0*"}}}
		c.PBX.Emergency = []string{"112"}
	})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	if _, code := h.dial("4930123", 20000); code != 403 {
		t.Fatalf("a number outside the allow list: %d, want 403", code)
	}
	h.talk("112", 20002, "112 outside the allow list")
}

// The call rate per source: a burst of twice the rate, then 503; emergency
// calls are not limited.
func TestCallRatePerSource(t *testing.T) {
	h := policyHarness(t, 0.01) // one call per 100 s, in bursts of 1; the cap is 1 call, so hang up each
	h.talk("0301234567", 20000, "first call")
	if _, code := h.dial("0301234567", 20002); code != 503 {
		t.Fatalf("second call within the rate: %d, want 503", code)
	}
	for i := range 2 {
		h.talk("112", 20004+2*i, fmt.Sprintf("emergency call %d over the rate", i))
	}
	// Another source has its own budget.
	if !h.b.admit.rate(netip.MustParseAddr("127.0.0.9"), 0.01) {
		t.Fatal("a second source shares the first one's budget")
	}
}
