package b2bua

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// rseqOf is the RSeq of a reliable provisional, failing the test for one
// that is not reliable (RFC 3262 §3: Require: 100rel and an RSeq).
func rseqOf(t *testing.T, res *sip.Response) uint32 {
	t.Helper()
	n, ok := reliableRSeq(res)
	if !ok {
		t.Fatalf("%d %s is not reliable: Require %v, RSeq %v", res.StatusCode, res.Reason, res.GetHeader("Require"), res.GetHeader("RSeq"))
	}
	return n
}

// nextProvisional reads the INVITE's responses up to the first 1xx
// other than 100.
func (u *uac) nextProvisional() *sip.Response {
	u.a.t.Helper()
	for {
		res := u.next()
		if res.StatusCode >= 200 {
			u.a.t.Fatalf("got %d %s, want a provisional response", res.StatusCode, res.Reason)
		}
		if res.StatusCode > 100 {
			return res
		}
	}
}

// prack sends a PRACK with RAck rack on the early dialog that the
// provisional res opened (its To tag and Contact), CSeq cseq, and returns
// its final response.
func (u *uac) prack(res *sip.Response, cseq uint32, rack string) *sip.Response {
	u.a.t.Helper()
	return u.prackWith(res, cseq, rack, nil)
}

// prackWith is prack with a body (SDP: an offer).
func (u *uac) prackWith(res *sip.Response, cseq uint32, rack string, body []byte) *sip.Response {
	u.a.t.Helper()
	target := u.inv.Recipient
	if c := res.Contact(); c != nil {
		target = c.Address
	}
	req := sip.NewRequest(sip.PRACK, target)
	req.AppendHeader(sipmsg.NewVia(u.a.addr))
	req.AppendHeader(sip.HeaderClone(u.inv.From()))
	req.AppendHeader(sip.HeaderClone(res.To()))
	req.AppendHeader(sip.HeaderClone(u.inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.PRACK})
	req.AppendHeader(sip.NewHeader("RAck", rack))
	if body != nil {
		req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	}
	req.SetBody(body)
	req.SetDestination(u.inv.Destination())
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ans, err := u.a.client.Do(ctx, req, sipgo.ClientRequestBuild)
	if err != nil {
		u.a.t.Fatalf("PRACK: %v", err)
	}
	return ans
}

// rack is the RAck naming the reliable provisional res to u's INVITE.
func (u *uac) rack(t *testing.T, res *sip.Response) string {
	return strconv.FormatUint(uint64(rseqOf(t, res)), 10) + " " + strconv.FormatUint(uint64(u.inv.CSeq().SeqNo), 10) + " INVITE"
}

// answered lets the callee answer (closes gate) and ACKs its 200.
func (u *uac) answered(gate chan struct{}) {
	u.a.t.Helper()
	close(gate)
	if final, _ := u.final(); final.StatusCode != 200 {
		u.a.t.Fatalf("call: %d", final.StatusCode)
	}
	u.ack()
}

// earlyCall is a PBX call that Requires 100rel to a provider that sends
// 183 with SDP and answers once the test closes gate; it returns the
// first provisional the PBX gets.
func earlyCall(t *testing.T, o trunkOptions) (*harness, *uac, chan struct{}, *sip.Response) {
	t.Helper()
	h := newHarnessWith(t, o)
	gate := make(chan struct{})
	h.prov.on(sip.INVITE, earlyThen200(t, h.prov, "prov", 30000, gate))
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("Require", "100rel"))
	return h, u, gate, u.nextProvisional()
}

// earlyThen200 is a callee that sends 183 with SDP, then, once the test
// closes gate, 200 with SDP, both with the To tag tag; each unreliable.
func earlyThen200(t testing.TB, a *agent, tag string, port int, gate <-chan struct{}) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: a.addr.Addr().String(), Port: int(a.addr.Port())}}
		respond(t, tx, req, 183, "Session Progress", tag, sdpOf(a.addr.Addr().String(), port), contact)
		select {
		case <-gate:
		case <-tx.Done():
			return
		case <-time.After(wait):
			t.Error("the test never let the callee answer")
			return
		}
		respond(t, tx, req, 200, "OK", tag, sdpOf(a.addr.Addr().String(), port), contact)
	}
}

// TestReliable183ToCallerRequiring100rel (issue 8 item 5): a PBX whose
// INVITE Requires 100rel gets the provider's early media in a reliable
// 183 (Require: 100rel, an RSeq, the SDP), PRACKs it on the early
// dialog, gets 200 for the PRACK and then the call's 200; the relay
// points at both ends. The old code refused the INVITE with 420.
func TestReliable183ToCallerRequiring100rel(t *testing.T) {
	h, u, gate, early := earlyCall(t, trunkOptions{})
	if early.StatusCode != 183 || len(early.Body()) == 0 || sipmsg.Tag(early.To()) == "" {
		t.Fatalf("PBX got %d with %d bytes of SDP, To tag %q; want 183 with the early media on a dialog", early.StatusCode,
			len(early.Body()), sipmsg.Tag(early.To()))
	}
	rseq := rseqOf(t, early)
	if rseq == 0 || rseq >= 1<<31 {
		t.Fatalf("RSeq %d outside 1..2^31-1", rseq)
	}
	inv := h.prov.next(sip.INVITE)
	if !supports(inv, "100rel") {
		t.Errorf("our INVITE to the provider does not advertise Supported: 100rel: %v", inv.GetHeaders("Supported"))
	}
	if res := u.prack(early, u.inv.CSeq().SeqNo+1, u.rack(t, early)); res.StatusCode != 200 {
		t.Fatalf("PRACK got %d %s, want 200", res.StatusCode, res.Reason)
	}
	close(gate)
	final, _ := u.final()
	if final.StatusCode != 200 || sipmsg.Tag(final.To()) != sipmsg.Tag(early.To()) {
		t.Fatalf("call: %d, To tag %q (183's %q)", final.StatusCode, sipmsg.Tag(final.To()), sipmsg.Tag(early.To()))
	}
	u.ack()
	s := h.media.session(0)
	s.awaitRemote(t, rtpbridge.LegA, netip.MustParseAddrPort(pbxIP+":20000"))
	s.awaitRemote(t, rtpbridge.LegB, netip.MustParseAddrPort(provIP+":30000"))
	if res := u.do(sip.BYE, u.inv.CSeq().SeqNo+2, nil); res.StatusCode != 200 {
		t.Fatalf("BYE: %d", res.StatusCode)
	}
	if e := h.awaitEnded(); !e.Answered {
		t.Fatalf("call ended unanswered: %s", e.Reason)
	}
}

// The other leg: a provider that Requires 100rel on an inbound call gets
// the PBX's 180 reliably (every 1xx is when the caller Requires it), and
// the second one (the PBX's 183 after) only once the first is PRACKed,
// with the next RSeq.
func TestReliableProvisionalsToProviderInOrder(t *testing.T) {
	h := newHarness(t)
	gate := make(chan struct{})
	h.pbx.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 180, "Ringing", "pbx", nil)
		respond(t, tx, req, 183, "Session Progress", "pbx", sdpOf(pbxIP, 20000))
		select {
		case <-gate:
		case <-time.After(wait):
			return
		}
		respond(t, tx, req, 200, "OK", "pbx", sdpOf(pbxIP, 20000))
	})
	u := h.prov.call(h.wan.addr, "4930123456", sdpOf(provIP, 30000), sip.NewHeader("Require", "100rel"))
	first := u.nextProvisional()
	r1 := rseqOf(t, first)
	// Until it is PRACKed nothing but its retransmissions may come.
	cseq := u.inv.CSeq().SeqNo
	if res := u.prack(first, cseq+1, u.rack(t, first)); res.StatusCode != 200 {
		t.Fatalf("PRACK got %d %s, want 200", res.StatusCode, res.Reason)
	}
	second := u.nextProvisional()
	for rseqOf(t, second) == r1 { // a retransmission crossing our PRACK
		second = u.nextProvisional()
	}
	if r2 := rseqOf(t, second); r2 != r1+1 {
		t.Fatalf("second reliable provisional RSeq %d, want %d", r2, r1+1)
	}
	if first.StatusCode == second.StatusCode {
		t.Fatalf("got %d twice, want 180 and 183", first.StatusCode)
	}
	if res := u.prack(second, cseq+2, u.rack(t, second)); res.StatusCode != 200 {
		t.Fatalf("second PRACK got %d %s, want 200", res.StatusCode, res.Reason)
	}
	u.answered(gate)
}

// TestNoPRACKFailsCall: a caller that Requires 100rel and never PRACKs
// gets the 183 again and again (T1 doubling), then, after 64*T1, a 5xx;
// the callee gets a CANCEL (RFC 3262 §3).
func TestNoPRACKFailsCall(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{tune: func(b *B2BUA) { b.reliableT1 = 20 * time.Millisecond }})
	cancelled := make(chan struct{})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		tx.OnCancel(func(*sip.Request) { close(cancelled) })
		respond(t, tx, req, 183, "Session Progress", "prov", sdpOf(provIP, 30000))
		select {
		case <-cancelled:
		case <-time.After(wait):
		}
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("Require", "100rel"))
	final, prov := u.final()
	copies := 0
	for _, p := range prov {
		if p.StatusCode == 183 {
			rseqOf(t, p)
			copies++
		}
	}
	if copies < 2 || final.StatusCode < 500 || final.StatusCode >= 600 {
		t.Fatalf("got %d copies of the 183, then %d; want retransmissions, then a 5xx", copies, final.StatusCode)
	}
	select {
	case <-cancelled:
	case <-time.After(wait):
		t.Fatal("the callee was never sent a CANCEL")
	}
	if e := h.awaitEnded(); e.Answered || e.Reason != "no PRACK" {
		t.Fatalf("call ended: answered %v, reason %q", e.Answered, e.Reason)
	}
}

// TestPRACKNotMatchingGets481: a PRACK whose RAck names another RSeq,
// another CSeq or another method, or that is on another dialog (To tag),
// gets 481 and does not acknowledge the 183; the right one gets 200,
// and the same once more 481 (nothing left to acknowledge).
func TestPRACKNotMatchingGets481(t *testing.T) {
	_, u, gate, early := earlyCall(t, trunkOptions{})
	rseq, cseq := rseqOf(t, early), u.inv.CSeq().SeqNo
	n := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	otherTag := early.Clone()
	otherTag.To().Params.Add("tag", "not-ours")
	for _, c := range []struct {
		what, rack string
		res        *sip.Response
	}{
		{"RSeq+1", n(rseq+1) + " " + n(cseq) + " INVITE", early},
		{"CSeq+1", n(rseq) + " " + n(cseq+1) + " INVITE", early},
		{"method", n(rseq) + " " + n(cseq) + " BYE", early},
		{"garbage", "x", early},
		{"To tag", n(rseq) + " " + n(cseq) + " INVITE", otherTag},
	} {
		cseq++
		if res := u.prack(c.res, cseq, c.rack); res.StatusCode != 481 {
			t.Errorf("PRACK with a wrong %s (RAck %q) got %d, want 481", c.what, c.rack, res.StatusCode)
		}
	}
	cseq++
	if res := u.prack(early, cseq, u.rack(t, early)); res.StatusCode != 200 {
		t.Fatalf("the right PRACK got %d, want 200", res.StatusCode)
	}
	cseq++
	if res := u.prack(early, cseq, u.rack(t, early)); res.StatusCode != 481 {
		t.Fatalf("a second PRACK for the same 183 got %d, want 481", res.StatusCode)
	}
	u.answered(gate)
}

// Test2xxHeldUntilPRACK: the callee answers while our reliable 183 with
// SDP is not PRACKed yet. The 200 must wait (RFC 3262 §3): the caller
// sees the 183 retransmitted after the callee's ACK and no 200, and the
// 200 as soon as it PRACKs.
func Test2xxHeldUntilPRACK(t *testing.T) {
	h, u, gate, early := earlyCall(t, trunkOptions{tune: func(b *B2BUA) { b.reliableT1 = 100 * time.Millisecond }})
	rseq := rseqOf(t, early)
	close(gate)
	// The callee's 200 is in and ACKed: from here on the B2BUA holds
	// its 200 for the caller.
	h.prov.next(sip.ACK)
	for seen := 0; seen < 2; {
		res := u.next()
		if res.StatusCode >= 200 {
			t.Fatalf("got %d before our PRACK", res.StatusCode)
		}
		if res.StatusCode == 183 && rseqOf(t, res) == rseq {
			seen++
		}
	}
	if res := u.prack(early, u.inv.CSeq().SeqNo+1, u.rack(t, early)); res.StatusCode != 200 {
		t.Fatalf("PRACK got %d %s, want 200", res.StatusCode, res.Reason)
	}
	final, _ := u.final()
	if final.StatusCode != 200 {
		t.Fatalf("call: %d", final.StatusCode)
	}
	u.ack()
}

// A caller that only Supports 100rel gets the 183 with SDP reliably
// (early media) and the 180 without SDP as before, unreliably. Its
// PRACK carries a new offer, which we do not take (488), but it
// acknowledges the 183 all the same: the 200 is not held.
func TestSupported100relOnlySDPIsReliable(t *testing.T) {
	h := newHarness(t)
	gate := make(chan struct{})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 180, "Ringing", "prov", nil)
		earlyThen200(t, h.prov, "prov", 30000, gate)(req, tx)
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("Supported", "100rel"))
	var early *sip.Response
	for early == nil {
		res := u.nextProvisional()
		switch res.StatusCode {
		case 180:
			if _, ok := reliableRSeq(res); ok || res.GetHeader("RSeq") != nil {
				t.Fatalf("180 without SDP sent reliably to a caller that only Supports 100rel")
			}
		case 183:
			early = res
		}
	}
	if res := u.prackWith(early, u.inv.CSeq().SeqNo+1, u.rack(t, early), sdpOf(pbxIP, 20010)); res.StatusCode != 488 {
		t.Fatalf("PRACK with an offer got %d %s, want 488", res.StatusCode, res.Reason)
	}
	u.answered(gate)
	if got := h.media.session(0).remoteOf(rtpbridge.LegA); got != netip.MustParseAddrPort(pbxIP+":20000") {
		t.Fatalf("the refused offer in the PRACK moved the PBX leg to %v", got)
	}
}

// TestNoPRACKWhileAnswerHeld: the callee has answered and our 200 waits
// for the caller's PRACK, which never comes: after 64*T1 the callee gets
// a BYE (its dialog is confirmed) and the caller a 5xx.
func TestNoPRACKWhileAnswerHeld(t *testing.T) {
	h, u, gate, early := earlyCall(t, trunkOptions{tune: func(b *B2BUA) { b.reliableT1 = 20 * time.Millisecond }})
	rseqOf(t, early)
	close(gate)
	final, _ := u.final()
	if final.StatusCode < 500 || final.StatusCode >= 600 {
		t.Fatalf("the caller got %d, want a 5xx", final.StatusCode)
	}
	h.prov.next(sip.ACK)
	h.prov.next(sip.BYE)
	if e := h.awaitEnded(); e.Answered || e.Reason != "no PRACK" {
		t.Fatalf("call ended: answered %v, reason %q", e.Answered, e.Reason)
	}
}

// awaitQueued waits until the status codes queued behind the reliable
// provisional outstanding on the call with callID are want. It polls:
// the B2BUA handles each response on a goroutine of its own, and a queued
// one shows on no wire.
func awaitQueued(t *testing.T, b *B2BUA, callID string, want ...int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	var got []int
	for {
		got = got[:0]
		if c, ok := b.callByID(callID); ok && c.rel != nil {
			c.rel.mu.Lock()
			for _, q := range c.rel.queue {
				got = append(got, int(q.StatusCode))
			}
			c.rel.mu.Unlock()
		}
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queued %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// While a reliable provisional awaits its PRACK, later ones queue: a
// newer one supersedes the queued ones without SDP (they only say how far
// the call got), one with SDP supersedes all (its SDP is the current
// early answer). So 181, 182 queue as [182]; a 183 with SDP makes it
// [183]; a 180 after it [183 180]; and these go out in that order, each
// with the next RSeq, each after the PRACK of the one before.
func TestReliableQueueSupersedes(t *testing.T) {
	h := newHarness(t)
	step := make(chan int)
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		for {
			select {
			case code := <-step:
				var body []byte
				if code == 183 || code == 200 {
					body = sdpOf(provIP, 30000)
				}
				respond(t, tx, req, code, "Progress", "prov", body)
				if code == 200 {
					return
				}
			case <-time.After(wait):
				return
			}
		}
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("Require", "100rel"))
	callID := u.inv.CallID().Value()
	step <- 180
	first := u.nextProvisional()
	r1 := rseqOf(t, first)
	for _, s := range []struct {
		code   int
		queued []int
	}{{181, []int{181}}, {182, []int{182}}, {183, []int{183}}, {180, []int{183, 180}}} {
		step <- s.code
		awaitQueued(t, h.b, callID, s.queued...)
	}
	cseq := u.inv.CSeq().SeqNo
	prev := first
	for i, want := range []int{183, 180} {
		cseq++
		if res := u.prack(prev, cseq, u.rack(t, prev)); res.StatusCode != 200 {
			t.Fatalf("PRACK %d got %d", i+1, res.StatusCode)
		}
		next := u.nextProvisional()
		for rseqOf(t, next) == rseqOf(t, prev) { // a retransmission crossing the PRACK
			next = u.nextProvisional()
		}
		if next.StatusCode != want || rseqOf(t, next) != r1+uint32(i)+1 {
			t.Fatalf("after PRACK %d: %d with RSeq %d, want %d with RSeq %d", i+1, next.StatusCode, rseqOf(t, next), want, r1+uint32(i)+1)
		}
		prev = next
	}
	cseq++
	if res := u.prack(prev, cseq, u.rack(t, prev)); res.StatusCode != 200 {
		t.Fatalf("last PRACK got %d", res.StatusCode)
	}
	step <- 200
	if final, _ := u.final(); final.StatusCode != 200 {
		t.Fatalf("call: %d", final.StatusCode)
	}
	u.ack()
}

// TestRetransmittedReliable183NotRelayed (review of issue 8): the
// provider's retransmission of its reliable 183 (the same RSeq) is
// dropped (RFC 3262 §4), not relayed to a 100rel caller as a new reliable
// provisional with an RSeq of its own to PRACK. Before, the PBX got a
// second reliable 183 after its PRACK, and the 200 then waited for that
// one's PRACK.
func TestRetransmittedReliable183NotRelayed(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{tune: func(b *B2BUA) { b.reliableT1 = 20 * time.Millisecond }})
	h.prov.on(sip.PRACK, func(req *sip.Request, tx sip.ServerTransaction) { respond(t, tx, req, 200, "OK", "", nil) })
	gate := make(chan struct{})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		rel := []sip.Header{sip.NewHeader("Require", "100rel"), sip.NewHeader("RSeq", "1"),
			&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: provIP, Port: int(h.prov.addr.Port())}}}
		respond(t, tx, req, 183, "Session Progress", "prov", sdpOf(provIP, 30000), rel...)
		respond(t, tx, req, 183, "Session Progress", "prov", sdpOf(provIP, 30000), rel...) // a retransmission
		select {
		case <-gate:
		case <-time.After(wait):
			return
		}
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("Require", "100rel"))
	early := u.nextProvisional()
	first := rseqOf(t, early)
	if res := u.prack(early, u.inv.CSeq().SeqNo+1, u.rack(t, early)); res.StatusCode != 200 {
		t.Fatalf("PRACK: %d", res.StatusCode)
	}
	close(gate)
	final, prov := u.final()
	for _, p := range prov {
		if n, ok := reliableRSeq(p); ok && n != first {
			t.Errorf("the PBX got another reliable %d (RSeq %d after %d): the provider's retransmission went on as a new provisional", p.StatusCode, n, first)
		}
	}
	if final.StatusCode != 200 {
		t.Fatalf("call: %d %s", final.StatusCode, final.Reason)
	}
	u.ack()
}

// TestCalleeByeWhileAnswerHeld (review of issue 8): the callee answers
// and hangs up while our 200 waits for the caller's PRACK. The caller's
// dialog is still early, so it gets a final answer (480), not a BYE
// (RFC 3261 §15), and not a 200 for a call that is over. Before, the
// caller got a BYE on its early dialog and no final answer until the
// PRACK came (then a 200) or the 64*T1 bound.
func TestCalleeByeWhileAnswerHeld(t *testing.T) {
	h, u, gate, early := earlyCall(t, trunkOptions{})
	rseqOf(t, early)
	close(gate)
	inv := h.prov.next(sip.INVITE)
	h.prov.next(sip.ACK)
	callee := &inDialog{a: h.prov, inv: inv, tag: "prov", cseq: 100, remote: h.wan.addr}
	if res := callee.do(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("the callee's BYE got %d", res.StatusCode)
	}
	final, _ := u.final()
	if final.StatusCode != 480 {
		t.Errorf("the caller got %d %s, want 480", final.StatusCode, final.Reason)
	}
	if e := h.awaitEnded(); e.Answered || e.Reason != "bye from provider" {
		t.Errorf("call ended: answered %v, reason %q; want unanswered, bye from provider", e.Answered, e.Reason)
	}
	if byes := h.pbx.received(sip.BYE); len(byes) > 0 {
		t.Errorf("the caller got a BYE on its early dialog:\n%s", byes[0])
	}
}
