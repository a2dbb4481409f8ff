package b2bua

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
)

// TestReaddressAfterRedial (issue 9 item 9): after the public address
// changes, the provider leg of a live call gets a re-INVITE whose Contact
// and SDP carry the new address with the same relay port and the next o=
// version; a call still ringing gets none, and neither does the PBX leg.
func TestReaddressAfterRedial(t *testing.T) {
	var public atomic.Pointer[netip.AddrPort]
	h := newHarness(t, func(c *Config) {
		c.WAN.Contact = func() netip.AddrPort { return *public.Load() }
	})
	old := h.wan.addr
	public.Store(&old)
	// The first call is answered; later ones only ring.
	var answered atomic.Bool
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		if sipmsg.Tag(req.To()) != "" {
			respond(t, tx, req, 200, "OK", "", sdpOf(provIP, 30000))
			return
		}
		if answered.CompareAndSwap(false, true) {
			respond(t, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
			return
		}
		cancelled := make(chan struct{})
		tx.OnCancel(func(*sip.Request) { close(cancelled) })
		respond(t, tx, req, 180, "Ringing", "ring", nil)
		select {
		case <-cancelled:
		case <-time.After(wait):
		}
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	if final, _ := u.final(); final.StatusCode != 200 {
		t.Fatalf("call: %d", final.StatusCode)
	}
	u.ack()
	first := h.prov.next(sip.INVITE)
	h.prov.next(sip.ACK)
	ringer := h.pbx.call(h.lan.addr, "0301234568", sdpOf(pbxIP, 20002))
	ringer.ringing()
	h.prov.next(sip.INVITE)

	moved := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.9"), old.Port())
	public.Store(&moved)
	if n := h.b.Readdress(""); n != 1 {
		t.Fatalf("Readdress started %d re-INVITEs, want 1 (the answered call's provider leg)", n)
	}
	re := h.prov.take(func(r *sip.Request) bool { return r.Method == sip.INVITE && sipmsg.Tag(r.To()) == "prov" }, "re-INVITE")
	h.prov.take(func(r *sip.Request) bool { return r.Method == sip.ACK && sipmsg.Tag(r.To()) == "prov" }, "ACK of the re-INVITE")
	body := string(re.Body())
	if ct := re.Contact(); ct == nil || ct.Address.Host != "127.0.0.9" {
		t.Errorf("re-INVITE Contact %v, want the new address 127.0.0.9", re.Contact())
	}
	if !strings.Contains(body, "c=IN IP4 127.0.0.9") || !strings.Contains(body, "m=audio 50000 ") {
		t.Errorf("re-INVITE SDP lacks the new address or the same relay port:\n%s", body)
	}
	v1, v2 := version(t, first.Body()), version(t, re.Body())
	if v2 != v1+1 {
		t.Errorf("o= version %d after %d, want the next", v2, v1)
	}
	if n := len(h.pbx.received(sip.INVITE)); n != 0 {
		t.Errorf("the PBX got %d INVITEs: its leg did not move", n)
	}
}
