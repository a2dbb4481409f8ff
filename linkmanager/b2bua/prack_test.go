package b2bua

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
)

// acceptPRACKs makes agent a answer every PRACK 200 and puts it on the
// channel it returns.
func acceptPRACKs(t *testing.T, a *agent) chan *sip.Request {
	prack := make(chan *sip.Request, 4)
	a.on(sip.PRACK, func(req *sip.Request, tx sip.ServerTransaction) {
		prack <- req
		respond(t, tx, req, 200, "OK", "", nil)
	})
	return prack
}

// TestReliableProvisionalIsPRACKed (issue 8 item 5): a provider that sends
// its 183 with Require: 100rel gets a PRACK for it, on the early dialog,
// once per RSeq (a retransmission is not PRACKed again); the PBX gets the
// 183 with its early media, as an unreliable provisional.
func TestReliableProvisionalIsPRACKed(t *testing.T) {
	h := newHarness(t)
	prack := acceptPRACKs(t, h.prov)
	gate := make(chan struct{})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		rel := func(rseq string) []sip.Header {
			return []sip.Header{sip.NewHeader("Require", "100rel"), sip.NewHeader("RSeq", rseq),
				&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: provIP, Port: int(h.prov.addr.Port())}}}
		}
		respond(t, tx, req, 183, "Session Progress", "prov", sdpOf(provIP, 30000), rel("1")...)
		respond(t, tx, req, 183, "Session Progress", "prov", sdpOf(provIP, 30000), rel("1")...) // a retransmission
		select {
		case <-gate:
		case <-time.After(wait):
			return
		}
		respond(t, tx, req, 180, "Ringing", "prov", nil, rel("2")...)
		select {
		case <-gate:
		case <-time.After(wait):
			return
		}
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	early := u.next()
	for early.StatusCode == 100 {
		early = u.next()
	}
	if early.StatusCode != 183 || early.GetHeader("Require") != nil || early.GetHeader("RSeq") != nil || len(early.Body()) == 0 {
		t.Fatalf("PBX got %d (Require %v, RSeq %v, %d bytes of SDP), want an unreliable 183 with the early media",
			early.StatusCode, early.GetHeader("Require"), early.GetHeader("RSeq"), len(early.Body()))
	}
	inv := h.prov.next(sip.INVITE)
	p1 := recvPRACK(t, prack)
	if ra := p1.GetHeader("RAck"); ra == nil || ra.Value() != "1 "+strconv.FormatUint(uint64(inv.CSeq().SeqNo), 10)+" INVITE" {
		t.Fatalf("PRACK RAck %v, want \"1 %d INVITE\"", p1.GetHeader("RAck"), inv.CSeq().SeqNo)
	}
	if sipmsg.Tag(p1.To()) != "prov" || p1.CSeq().SeqNo <= inv.CSeq().SeqNo || p1.CallID().Value() != inv.CallID().Value() ||
		p1.Recipient.User != "callee" {
		t.Fatalf("PRACK not on the early dialog: To tag %q, CSeq %d (INVITE %d), R-URI %s", sipmsg.Tag(p1.To()), p1.CSeq().SeqNo,
			inv.CSeq().SeqNo, p1.Recipient.String())
	}
	gate <- struct{}{}
	p2 := recvPRACK(t, prack)
	if ra := p2.GetHeader("RAck"); ra == nil || !strings.HasPrefix(ra.Value(), "2 ") || p2.CSeq().SeqNo <= p1.CSeq().SeqNo {
		t.Fatalf("second PRACK RAck %v CSeq %d, want RSeq 2 and a higher CSeq", p2.GetHeader("RAck"), p2.CSeq().SeqNo)
	}
	select {
	case extra := <-prack:
		t.Fatalf("a third PRACK (RAck %v): the retransmitted 183 was PRACKed again", extra.GetHeader("RAck"))
	default:
	}
	close(gate)
	if final, _ := u.final(); final.StatusCode != 200 {
		t.Fatalf("call: %d", final.StatusCode)
	}
	u.ack()
}

func recvPRACK(t *testing.T, ch <-chan *sip.Request) *sip.Request {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(wait):
		t.Fatal("no PRACK")
		return nil
	}
}

// An INVITE that Requires what we do not support gets 420 naming it, and
// goes no further (RFC 3261 §8.2.2.3); Require: timer and 100rel are
// supported.
func TestUnsupportedRequireGets420(t *testing.T) {
	h := newHarness(t)
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("Require", "100rel, X-Foo"), sip.NewHeader("Require", "timer"))
	final, _ := u.final()
	if final.StatusCode != 420 || final.GetHeader("Unsupported") == nil || final.GetHeader("Unsupported").Value() != "x-foo" {
		t.Fatalf("INVITE requiring 100rel and X-Foo got %d (Unsupported %v), want 420 naming X-Foo, not 100rel or timer", final.StatusCode, final.GetHeader("Unsupported"))
	}
	if n := len(h.prov.received(sip.INVITE)); n != 0 {
		t.Fatalf("the provider got %d INVITEs", n)
	}
	ok := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20002), sip.NewHeader("Require", "timer"))
	if final, _ := ok.final(); final.StatusCode != 200 {
		t.Fatalf("INVITE requiring only timer: %d, want 200", final.StatusCode)
	}
	ok.ack()
}

// TestDelayedOfferDoesNotOffer100rel (review of issue 8): an INVITE
// without SDP goes on without Supported: 100rel, since the answer to a
// reliable 1xx's offer would belong in our PRACK, which we do not build;
// a provider that sends its 183 reliably all the same still gets its
// PRACK, so it does not resend it for 32 s and fail the call. Before, the
// INVITE offered 100rel and such a 183 was never PRACKed.
func TestDelayedOfferDoesNotOffer100rel(t *testing.T) {
	h := newHarness(t)
	prack := acceptPRACKs(t, h.prov)
	gate := make(chan struct{})
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 183, "Session Progress", "prov", nil, sip.NewHeader("Require", "100rel"), sip.NewHeader("RSeq", "1"),
			&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: provIP, Port: int(h.prov.addr.Port())}})
		select {
		case <-gate:
		case <-time.After(wait):
			return
		}
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	u := h.pbx.call(h.lan.addr, "0301234567", nil)
	inv := h.prov.next(sip.INVITE)
	for _, v := range inv.GetHeaders("Supported") {
		if strings.Contains(strings.ToLower(v.Value()), "100rel") {
			t.Errorf("a delayed-offer INVITE offers 100rel: Supported: %s", v.Value())
		}
	}
	p := recvPRACK(t, prack)
	if ra := p.GetHeader("RAck"); ra == nil || ra.Value() != "1 "+strconv.FormatUint(uint64(inv.CSeq().SeqNo), 10)+" INVITE" {
		t.Errorf("PRACK RAck %v, want \"1 %d INVITE\"", p.GetHeader("RAck"), inv.CSeq().SeqNo)
	}
	close(gate)
	if final, _ := u.final(); final.StatusCode != 200 {
		t.Fatalf("call: %d", final.StatusCode)
	}
}
