package b2bua

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestRingingBound (issue 9 item 7): calls from the provider side that
// nobody answers hold a relay pair each; past the bound the next one gets
// 503 without a pair or a PBX INVITE. An answered call does not count, a
// call that stops ringing frees its place at once, and the PBX's own calls
// are never held up by it.
func TestRingingBound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxRingingPerTrunk, c.MaxRinging = 2, 10 })
	// The PBX rings until cancelled, except on calls to 999, which it
	// answers.
	h.pbx.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		cancelled := make(chan struct{})
		tx.OnCancel(func(*sip.Request) { close(cancelled) })
		respond(t, tx, req, 180, "Ringing", "pbx", nil)
		if req.Recipient.User == "999" {
			respond(t, tx, req, 200, "OK", "pbx", sdpOf(pbxIP, 20000))
			return
		}
		select {
		case <-cancelled:
		case <-time.After(wait):
		}
	})
	answered := h.prov.call(h.wan.addr, "999", sdpOf(provIP, 30000))
	if final, _ := answered.final(); final.StatusCode != 200 {
		t.Fatalf("answered call: %d", final.StatusCode)
	}
	answered.ack()
	// Its INVITE handler lets go of it once the answer has gone out.
	for deadline := time.Now().Add(wait); h.b.ringing.ringingOn("provider") != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the answered call still counts as ringing")
		}
	}
	var ringingCalls []*uac
	for i := range 2 {
		u := h.prov.call(h.wan.addr, "4930123", sdpOf(provIP, 30002+2*i))
		u.ringing() // admitted: the answered call does not count
		ringingCalls = append(ringingCalls, u)
	}
	invites := len(h.pbx.received(sip.INVITE))
	opened := h.media.open()
	refused := h.prov.call(h.wan.addr, "4930123", sdpOf(provIP, 30010))
	if final, _ := refused.final(); final.StatusCode != 503 || final.GetHeader("Retry-After") == nil {
		t.Fatalf("third unanswered call on the trunk got %d, want 503 with Retry-After", final.StatusCode)
	}
	if n := len(h.pbx.received(sip.INVITE)); n != invites || h.media.open() != opened {
		t.Fatalf("the refused call reached the PBX (%d INVITEs, was %d) or took a pair (%d open, was %d)", n, invites, h.media.open(), opened)
	}

	// The PBX's own calls go out whatever rings inbound.
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30020))
	})
	out := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20010))
	if final, _ := out.final(); final.StatusCode != 200 {
		t.Fatalf("PBX call while the inbound bound is reached: %d, want 200", final.StatusCode)
	}
	out.ack()

	// A ringing call that is cancelled frees its place.
	if res := doRequest(t, h.prov, cancelOf(ringingCalls[0].inv)); res.StatusCode != 200 {
		t.Fatalf("CANCEL answered %d", res.StatusCode)
	}
	if final, _ := ringingCalls[0].final(); final.StatusCode != 487 {
		t.Fatalf("cancelled call got %d, want 487", final.StatusCode)
	}
	h.awaitEnded()
	h.prov.call(h.wan.addr, "4930123", sdpOf(provIP, 30030)).ringing()
}

// The total bound holds across trunks; each trunk's holds for it alone.
func TestRingingAdmit(t *testing.T) {
	r := newRinging(2, 3)
	for _, step := range []struct {
		trunk string
		want  bool
	}{{"a", true}, {"a", true}, {"a", false}, {"b", true}, {"b", false}} {
		if got := r.admit(step.trunk); got != step.want {
			t.Fatalf("admit(%s) = %v, want %v (state %d %v)", step.trunk, got, step.want, r.count.total, r.count.byTrunk)
		}
	}
	r.release("a")
	if !r.admit("b") || r.admit("a") {
		t.Fatalf("after a release on a: b admitted once more up to the total, a not (state %d %v)", r.count.total, r.count.byTrunk)
	}
	for _, tr := range []string{"a", "b", "b"} {
		r.release(tr)
	}
	if r.count.total != 0 || len(r.count.byTrunk) != 0 {
		t.Fatalf("released all: %d %v", r.count.total, r.count.byTrunk)
	}
	if u := newRinging(0, 0); !u.admit("x") || !u.admit("x") {
		t.Fatal("no bound refused a call")
	}
}
