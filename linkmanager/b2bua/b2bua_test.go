package b2bua

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func TestOnlyThePBXMayCallOut(t *testing.T) {
	h := newHarness(t)
	stranger := newAgent(t, strangerIP)
	stranger.serve(t)
	u := stranger.call(h.lan.addr, "00900123456", sdpOf(strangerIP, 20000))
	if res, _ := u.final(); res.StatusCode != 403 {
		t.Errorf("stranger's INVITE answered %d, want 403", res.StatusCode)
	}
	// The 403 comes before any routing: nothing can follow it.
	if got := h.prov.received(sip.INVITE); len(got) != 0 {
		t.Errorf("the provider received %d INVITEs from a stranger's call", len(got))
	}
}

func TestOutboundCallKeepsTheLegsApart(t *testing.T) {
	h := newHarness(t)
	gate := make(chan struct{})
	route := sip.NewHeader("Record-Route", "<sip:"+h.prov.addr.String()+";lr;secret-provider-route>")
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		if req.GetHeader("Proxy-Authorization") == nil {
			respond(t, tx, req, 407, "Proxy Authentication Required", "", nil,
				sip.NewHeader("Proxy-Authenticate", `Digest realm="test", nonce="xyz"`))
			return
		}
		contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: provIP, Port: int(h.prov.addr.Port())}}
		respond(t, tx, req, 180, "Ringing", "prov", nil, route)
		select {
		case <-gate:
		case <-time.After(wait):
			return
		}
		respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000), route, contact)
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), sip.NewHeader("X-Pbx-Internal", "secret-lan-header"))
	if ring := u.ringing(); strings.Contains(ring.String(), "secret-provider-route") {
		t.Errorf("PBX-bound 180 carries the provider's route set:\n%s", ring)
	}
	close(gate)
	final, _ := u.final()
	if final.StatusCode != 200 {
		t.Fatalf("PBX got %d, want 200", final.StatusCode)
	}
	invites := h.prov.received(sip.INVITE)
	if len(invites) != 2 || !strings.Contains(invites[1], "Proxy-Authorization: Digest") {
		t.Fatalf("provider got %d INVITEs; want the 407 answered with credentials", len(invites))
	}
	// Nothing of the LAN reaches the provider: no LAN address, no PBX
	// header, no PBX display name.
	for _, m := range invites {
		for _, leak := range []string{lanIP, pbxIP, "secret-lan-header", "Reception"} {
			if strings.Contains(m, leak) {
				t.Errorf("provider-bound INVITE contains %q:\n%s", leak, m)
			}
		}
		if !strings.HasPrefix(m, "INVITE sip:0301234567@sip.provider.test SIP/2.0") {
			t.Errorf("Request-URI not the dialled number at the provider's domain:\n%s", m)
		}
	}
	body := invites[1][strings.Index(invites[1], "\r\n\r\n")+4:]
	if !strings.Contains(body, "c=IN IP4 "+wanIP) || !strings.Contains(body, "a=fmtp:101 0-16") ||
		!strings.Contains(body, "m=audio 50000 ") {
		t.Errorf("provider SDP should carry our Internet address and relay port and keep the codecs:\n%s", body)
	}
	// Nothing of the provider reaches the PBX.
	text := final.String()
	for _, leak := range []string{provIP, wanIP, "secret-provider-route", "Record-Route"} {
		if strings.Contains(text, leak) {
			t.Errorf("PBX-bound 200 contains %q:\n%s", leak, text)
		}
	}
	if !strings.Contains(string(final.Body()), "c=IN IP4 "+lanIP) || !strings.Contains(string(final.Body()), "m=audio 40000 ") {
		t.Errorf("PBX SDP should carry our LAN address and relay port:\n%s", final.Body())
	}
	u.ack()
	// sipgo's transaction absorbs its own ACK for the 407; this is ours.
	ack := h.prov.next(sip.ACK)
	if !strings.HasPrefix(ack.String(), "ACK sip:callee@"+h.prov.addr.String()) || !strings.Contains(ack.String(), "secret-provider-route") {
		t.Errorf("ACK must go to the callee's Contact via the provider's route set:\n%s", ack)
	}

	// The PBX hangs up: the provider gets a BYE, the relay is closed.
	if res := u.do(sip.BYE, 2, nil); res.StatusCode != 200 {
		t.Errorf("BYE answered %d", res.StatusCode)
	}
	h.prov.next(sip.BYE)
	if e := h.awaitEnded(); !e.Answered || e.Direction != "outbound" || e.Trunk != "provider" || e.Reason != "bye from pbx" {
		t.Errorf("call ended %+v", e)
	}
	if n := h.media.open(); n != 0 || h.b.Active() != 0 {
		t.Errorf("after the call: %d media sessions open, %d calls active", n, h.b.Active())
	}
}

// An RFC 4028 refresh as an offerless re-INVITE from the provider is
// answered with the SDP the provider leg already has, unchanged, and the
// PBX is not bothered.
func TestOfferlessReinviteAnsweredLocally(t *testing.T) {
	h := newHarness(t)
	_, callee := h.established(h.pbx, h.prov, h.lan.addr, "0301234567", "prov")
	offered := string(callee.inv.Body())
	res := callee.do(sip.INVITE, nil)
	if res.StatusCode != 200 {
		t.Fatalf("refresh answered %d", res.StatusCode)
	}
	if string(res.Body()) != offered {
		t.Errorf("refresh answered with different SDP (a change the far end would act on):\n%s\nwant what we offered:\n%s", res.Body(), offered)
	}
	// The provider hangs up: the BYE is the first request the PBX sees.
	if res := callee.do(sip.BYE, nil); res.StatusCode != 200 {
		t.Errorf("BYE answered %d", res.StatusCode)
	}
	h.pbx.next(sip.BYE)
	if req, ok := h.pbx.any(); ok {
		t.Errorf("the PBX got a %s besides the BYE: the refresh was relayed", req.Method)
	}
}
