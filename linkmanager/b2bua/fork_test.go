package b2bua

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
)

// forkingProvider answers an INVITE the way a forking proxy in front of
// two phones does: a 180 from each (tags forkA and forkB, each with its own
// Contact and Record-Route), then a 200 from forkB, then, once that is
// ACKed, a 200 from forkA, retransmitted until it is ACKed too (RFC 3261
// §13.3.1.4: a UAS does that over UDP).
type forkingProvider struct {
	t       *testing.T
	a       *agent
	ringing chan struct{} // closed by the test: the PBX saw both 180s
	ackedB  chan struct{} // closed by the test: the provider got forkB's ACK
	ackedA  chan struct{} // closed by the test: the provider got forkA's ACK
	wg      sync.WaitGroup

	mu  sync.Mutex
	inv *sip.Request // guarded by mu; the INVITE as it arrived
}

func (f *forkingProvider) invite0() *sip.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inv
}

func newForkingProvider(t *testing.T, a *agent) *forkingProvider {
	f := &forkingProvider{t: t, a: a, ringing: make(chan struct{}), ackedB: make(chan struct{}), ackedA: make(chan struct{})}
	a.on(sip.INVITE, f.invite)
	t.Cleanup(f.wg.Wait)
	return f
}

func (f *forkingProvider) headers(fork string) []sip.Header {
	return []sip.Header{
		&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: fork, Host: provIP, Port: int(f.a.addr.Port())}},
		sip.NewHeader("Record-Route", "<sip:"+f.a.addr.String()+";lr;route-"+fork+">"),
	}
}

func (f *forkingProvider) gate(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(wait):
		f.t.Error("the forking provider waited in vain")
		return false
	}
}

func (f *forkingProvider) invite(req *sip.Request, tx sip.ServerTransaction) {
	if sipmsg.Tag(req.To()) != "" {
		respond(f.t, tx, req, 200, "OK", "", sdpOf(provIP, 30000))
		return
	}
	f.mu.Lock()
	f.inv = req
	f.mu.Unlock()
	respond(f.t, tx, req, 180, "Ringing", "forkA", nil, f.headers("forkA")...)
	respond(f.t, tx, req, 180, "Ringing", "forkB", nil, f.headers("forkB")...)
	if !f.gate(f.ringing) {
		return
	}
	respond(f.t, tx, req, 200, "OK", "forkB", sdpOf(provIP, 30000), f.headers("forkB")...)
	if !f.gate(f.ackedB) {
		return
	}
	second := sip.NewResponseFromRequest(req, 200, "OK", nil)
	second.To().Params.Add("tag", "forkA")
	for _, h := range f.headers("forkA") {
		second.AppendHeader(h)
	}
	second.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	second.SetBody(sdpOf(provIP, 30010))
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(wait)
		for {
			if err := f.a.srv.WriteResponse(second); err != nil {
				f.t.Logf("second 200: %v", err)
			}
			select {
			case <-f.ackedA:
				return
			case <-deadline:
				f.t.Error("forkA's 200 never ACKed")
				return
			case <-tick.C:
			}
		}
	}()
}

// nextWithTag takes the next request of method whose To tag is tag.
func nextWithTag(a *agent, method sip.RequestMethod, tag string) *sip.Request {
	a.t.Helper()
	return a.take(func(r *sip.Request) bool { return r.Method == method && sipmsg.Tag(r.To()) == tag },
		string(method)+" to "+tag)
}

// forkedCall runs an outbound call to the forking provider up to the
// point where forkB holds the call and forkA has been ACKed and BYEd.
func forkedCall(t *testing.T, h *harness) (*uac, *forkingProvider) {
	t.Helper()
	f := newForkingProvider(t, h.prov)
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	r1, r2 := u.ringing(), u.ringing()
	close(f.ringing)
	ok, _ := u.final()
	if ok.StatusCode != 200 {
		t.Fatalf("call answered %d", ok.StatusCode)
	}
	// The PBX sees one dialog: a fork is ours to handle, not the PBX's.
	tag := sipmsg.Tag(ok.To())
	if sipmsg.Tag(r1.To()) != tag || sipmsg.Tag(r2.To()) != tag {
		t.Errorf("the PBX got 180s tagged %q and %q, 200 tagged %q: want one dialog", sipmsg.Tag(r1.To()), sipmsg.Tag(r2.To()), tag)
	}
	u.ack()

	ackB := nextWithTag(h.prov, sip.ACK, "forkB")
	close(f.ackedB)
	if ackB.Recipient.User != "forkB" || !hasRoute(ackB, "route-forkB") {
		t.Errorf("forkB's ACK must go to forkB's Contact via its route set:\n%s", ackB)
	}
	ackA := nextWithTag(h.prov, sip.ACK, "forkA")
	close(f.ackedA)
	if ackA.Recipient.User != "forkA" || !hasRoute(ackA, "route-forkA") {
		t.Errorf("forkA's ACK must go to forkA's Contact via its route set:\n%s", ackA)
	}
	byeA := nextWithTag(h.prov, sip.BYE, "forkA")
	if byeA.Recipient.User != "forkA" || !hasRoute(byeA, "route-forkA") || byeA.CSeq().SeqNo <= ackA.CSeq().SeqNo {
		t.Errorf("forkA's BYE must follow its dialog (Contact, route set, next CSeq after %d):\n%s", ackA.CSeq().SeqNo, byeA)
	}
	return u, f
}

func hasRoute(req *sip.Request, part string) bool {
	for _, h := range req.GetHeaders("Route") {
		if strings.Contains(h.Value(), part) {
			return true
		}
	}
	return false
}

// Item 1: two early dialogs of one INVITE are tracked apart; the second
// 2xx is ACKed and BYEd on its own dialog; the call stays with the first,
// and the PBX's hang-up reaches that one.
func TestForkedSecond2xxIsAckedAndHungUp(t *testing.T) {
	h := newHarness(t)
	u, _ := forkedCall(t, h)
	if n := h.b.Active(); n != 1 {
		t.Fatalf("%d calls active after the extra fork was hung up, want 1", n)
	}
	if res := u.do(sip.BYE, 2, nil); res.StatusCode != 200 {
		t.Errorf("PBX's BYE answered %d", res.StatusCode)
	}
	if bye := nextWithTag(h.prov, sip.BYE, "forkB"); bye.Recipient.User != "forkB" || !hasRoute(bye, "route-forkB") {
		t.Errorf("the hang-up must reach forkB on its dialog:\n%s", bye)
	}
	if e := h.awaitEnded(); e.Reason != "bye from pbx" {
		t.Errorf("call ended by %q", e.Reason)
	}
}

// Item 1: a BYE on one dialog never tears down another: here one on the
// fork we dropped.
func TestByeOnOtherDialogLeavesCallUp(t *testing.T) {
	h := newHarness(t)
	u, f := forkedCall(t, h)
	byeOnA := &inDialog{a: h.prov, inv: f.invite0(), tag: "forkA", cseq: 500, remote: h.wan.addr}
	if res := byeOnA.do(sip.BYE, nil); res.StatusCode != 481 {
		t.Errorf("BYE on the dropped fork answered %d, want 481", res.StatusCode)
	}
	if n := h.b.Active(); n != 1 {
		t.Fatalf("%d calls active after a BYE on the dropped fork, want 1", n)
	}
	// The call is still whole: a hold from the PBX reaches forkB.
	if res := u.do(sip.INVITE, 4, sdpOf(pbxIP, 20000)); res.StatusCode != 200 {
		t.Errorf("re-INVITE after the stray BYEs answered %d", res.StatusCode)
	}
	if re := nextWithTag(h.prov, sip.INVITE, "forkB"); re.Recipient.User != "forkB" {
		t.Errorf("re-INVITE went to %s, want forkB", re.Recipient.User)
	}
}

func doRequest(t testing.TB, a *agent, req *sip.Request) *sip.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := a.client.Do(ctx, req, sipgo.ClientRequestBuild)
	if err != nil {
		t.Fatalf("%s: %v", req.Method, err)
	}
	return res
}

// Item 1: a BYE with the call's Call-ID but a To tag that is not ours
// belongs to no dialog of ours: 481, and the call stays up.
func TestByeWithWrongTagLeavesCallUp(t *testing.T) {
	directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
		u, _ := h.established(caller, callee, dst, "4930123456", "callee")
		wrong := u.request(sip.BYE, 2, nil)
		wrong.To().Params.Add("tag", "not-ours")
		if res := doRequest(t, caller, wrong); res.StatusCode != 481 {
			t.Errorf("BYE with a wrong To tag answered %d, want 481", res.StatusCode)
		}
		if n := h.b.Active(); n != 1 {
			t.Fatalf("%d calls active after a BYE on no dialog of ours, want 1", n)
		}
		if res := u.do(sip.BYE, 3, nil); res.StatusCode != 200 {
			t.Errorf("the real BYE answered %d", res.StatusCode)
		}
		callee.next(sip.BYE)
		h.awaitEnded()
	})
}

// Item 1: a request on an early dialog (an UPDATE from the ringing
// callee, RFC 3311) finds that fork's dialog and reaches the caller on
// ours.
func TestEarlyUpdateFindsItsFork(t *testing.T) {
	h := newHarness(t)
	gate := make(chan struct{})
	h.prov.on(sip.INVITE, answer(t, h.prov, "early", gate))
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	ring := u.ringing()
	early := &inDialog{a: h.prov, inv: h.prov.next(sip.INVITE), tag: "early", cseq: 100, remote: h.wan.addr}
	if res := early.do(sip.UPDATE, sdpOf(provIP, 30004)); res.StatusCode != 200 {
		t.Errorf("early UPDATE answered %d, want 200", res.StatusCode)
	}
	onDialog(t, h.pbx.next(sip.UPDATE), sipmsg.Tag(ring.To()), sipmsg.Tag(u.inv.From()))
	close(gate)
	if res, _ := u.final(); res.StatusCode != 200 {
		t.Fatalf("call answered %d", res.StatusCode)
	}
	u.ack()
}
