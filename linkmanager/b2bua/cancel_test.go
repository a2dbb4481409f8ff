package b2bua

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// ringsUntilCancel is a callee that rings and never answers; cancelled
// is closed when our CANCEL reaches it (sipgo then sends the 487).
func ringsUntilCancel(t *testing.T, cancelled chan struct{}) sipgo.RequestHandler {
	quit := make(chan struct{})
	t.Cleanup(func() { close(quit) })
	return func(req *sip.Request, tx sip.ServerTransaction) {
		tx.OnCancel(func(*sip.Request) { close(cancelled) })
		respond(t, tx, req, 180, "Ringing", "ringer", nil)
		select {
		case <-cancelled:
		case <-quit:
		}
	}
}

// answersAcrossCancel is a callee whose 200 crosses our CANCEL on the
// wire: the CANCEL is held at its socket until the 200 has left, so the
// callee's transaction is answered when the CANCEL arrives (no 487).
func answersAcrossCancel(t *testing.T, a *agent) sipgo.RequestHandler {
	seen, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hold := func(p []byte) {
		if bytes.HasPrefix(p, []byte("CANCEL ")) {
			once.Do(func() { close(seen) })
			<-release
		}
	}
	a.conn.hold.Store(&hold)
	quit := make(chan struct{})
	t.Cleanup(func() {
		close(quit)
		a.conn.hold.Store(nil)
	})
	return func(req *sip.Request, tx sip.ServerTransaction) {
		defer close(release)
		respond(t, tx, req, 180, "Ringing", "late", nil)
		select {
		case <-seen:
		case <-quit:
			return
		}
		contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "late", Host: provIP, Port: int(a.addr.Port())}}
		respond(t, tx, req, 200, "OK", "late", sdpOf(provIP, 30000), contact)
	}
}

// Item 7: a 200 that crosses our CANCEL is ACKed and BYEd; the caller,
// who cancelled, gets its 487 and nothing else.
func TestAnswerCrossingCancelIsAckedAndHungUp(t *testing.T) {
	h := newHarness(t)
	h.prov.on(sip.INVITE, answersAcrossCancel(t, h.prov))
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	u.ringing()
	if res := doRequest(t, h.pbx, cancelOf(u.inv)); res.StatusCode != 200 {
		t.Fatalf("CANCEL answered %d", res.StatusCode)
	}
	if res, _ := u.final(); res.StatusCode != 487 {
		t.Errorf("cancelled INVITE answered %d, want 487", res.StatusCode)
	}
	ack := nextWithTag(h.prov, sip.ACK, "late")
	bye := nextWithTag(h.prov, sip.BYE, "late")
	if ack.Recipient.User != "late" || bye.Recipient.User != "late" {
		t.Errorf("ACK and BYE must go to the late callee's Contact: %s, %s", ack.Recipient.String(), bye.Recipient.String())
	}
	if e := h.awaitEnded(); e.Answered || e.Reason != "answered after cancel" {
		t.Errorf("call ended %+v", e)
	}
	if n := len(h.pbx.received(sip.BYE)) + len(h.pbx.received(sip.INVITE)); n != 0 {
		t.Errorf("the PBX, which cancelled, got %d requests", n)
	}
}

// Item 7: a call still ringing at shutdown is CANCELled towards the callee
// and answered 503 towards the caller; neither side gets a BYE (RFC 3261
// §15: BYE is for confirmed dialogs).
func TestShutdownWhileRingingCancels(t *testing.T) {
	directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
		cancelled := make(chan struct{})
		callee.on(sip.INVITE, ringsUntilCancel(t, cancelled))
		u := caller.call(dst, "4930123456", sdpOf(caller.addr.Addr().String(), 20000))
		u.ringing()
		h.b.Drain()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.b.HangupAll("shutdown")
		}()
		select {
		case <-cancelled:
		case <-time.After(wait):
			t.Error("the callee was never sent a CANCEL")
		}
		if res, _ := u.final(); res.StatusCode != 503 && res.StatusCode != 487 {
			t.Errorf("the ringing caller got %d, want 503 or 487", res.StatusCode)
		}
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatal("HangupAll did not return")
		}
		if e := h.awaitEnded(); e.Answered || e.Reason != "shutdown" {
			t.Errorf("call ended %+v", e)
		}
		if n, m := len(caller.received(sip.BYE)), len(callee.received(sip.BYE)); n+m != 0 {
			t.Errorf("BYE sent for a call that never was answered: %d to the caller, %d to the callee", n, m)
		}
	})
}

// cancelOf is the CANCEL for inv (RFC 3261 §9.1): same Request-URI,
// Via branch, From, To, Call-ID and CSeq number.
func cancelOf(inv *sip.Request) *sip.Request {
	req := sip.NewRequest(sip.CANCEL, inv.Recipient)
	req.AppendHeader(sip.HeaderClone(inv.Via()))
	req.AppendHeader(sip.HeaderClone(inv.From()))
	req.AppendHeader(sip.HeaderClone(inv.To()))
	req.AppendHeader(sip.HeaderClone(inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	req.SetDestination(inv.Destination())
	return req
}
