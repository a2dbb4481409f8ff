package b2bua

import (
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
)

// directions runs a test once per direction of a call: from the PBX to
// the provider and back.
func directions(t *testing.T, f func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort)) {
	t.Run("outbound", func(t *testing.T) {
		h := newHarness(t)
		f(t, h, h.pbx, h.prov, h.lan.addr)
	})
	t.Run("inbound", func(t *testing.T) {
		h := newHarness(t)
		f(t, h, h.prov, h.pbx, h.wan.addr)
	})
}

// Item 0: every response of a dialog carries the one To tag, and our own
// later requests on it (a relayed re-INVITE, a BYE) use that tag as their
// From tag. Real user agents answer anything else with 481.
func TestOneToTagPerDialog(t *testing.T) {
	directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
		gate := make(chan struct{})
		callee.on(sip.INVITE, answer(t, callee, "callee", gate))
		u := caller.call(dst, "4930123456", sdpOf(caller.addr.Addr().String(), 20000))
		ring := u.ringing()
		close(gate)
		ok, _ := u.final()
		if ok.StatusCode != 200 {
			t.Fatalf("call answered %d", ok.StatusCode)
		}
		tag := sipmsg.Tag(ok.To())
		if rt := sipmsg.Tag(ring.To()); rt == "" || rt != tag {
			t.Errorf("180 To tag %q, 200 To tag %q: one dialog, one tag", rt, tag)
		}
		u.ack()
		in := &inDialog{a: callee, inv: callee.next(sip.INVITE), tag: "callee", cseq: 100,
			remote: map[bool]netip.AddrPort{true: h.lan.addr, false: h.wan.addr}[callee == h.pbx]}
		callee.next(sip.ACK)
		callerTag := sipmsg.Tag(u.inv.From())

		// The callee puts the call on hold: the caller gets the re-INVITE.
		if res := in.do(sip.INVITE, sdpOf(callee.addr.Addr().String(), 30000)); res.StatusCode != 200 {
			t.Errorf("re-INVITE answered %d", res.StatusCode)
		}
		onDialog(t, caller.next(sip.INVITE), tag, callerTag)
		// The callee hangs up: the caller gets the BYE on the same dialog.
		if res := in.do(sip.BYE, nil); res.StatusCode != 200 {
			t.Errorf("BYE answered %d", res.StatusCode)
		}
		onDialog(t, caller.next(sip.BYE), tag, callerTag)
		h.awaitEnded()
	})
}

// onDialog checks that a request we sent is on the dialog the caller
// knows: our tag (the one in our responses) in From, the caller's in To.
func onDialog(t *testing.T, req *sip.Request, ours, theirs string) {
	t.Helper()
	if got := sipmsg.Tag(req.From()); got != ours {
		t.Errorf("%s has From tag %q; the caller knows us as %q", req.Method, got, ours)
	}
	if got := sipmsg.Tag(req.To()); got != theirs {
		t.Errorf("%s has To tag %q, want the caller's %q", req.Method, got, theirs)
	}
}
