package b2bua

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sdp"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// answerReinvites makes a answer every further INVITE with 200 and SDP
// of the given direction.
func answerReinvites(t *testing.T, a *agent, tag, dir string) {
	a.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: a.addr.Addr().String(), Port: int(a.addr.Port())}}
		respond(t, tx, req, 200, "OK", tag, withDir(sdpOf(a.addr.Addr().String(), 30000), dir), contact)
	})
}

func withDir(body []byte, dir string) []byte {
	if dir == "" {
		return body
	}
	return append(body, []byte("a="+dir+"\r\n")...)
}

func mustParse(t *testing.T, body []byte) *sdp.Session {
	t.Helper()
	s, err := sdp.Parse(body)
	if err != nil {
		t.Fatalf("%v in\n%s", err, body)
	}
	return s
}

// The media reports that the provider leg of an outbound call hears
// nothing: the B2BUA moves the leg to a new port and re-INVITEs the
// provider with it (same SDP, next o= version), and ACKs the 200.
func TestNoInboundMovesPortAndReinvitesProvider(t *testing.T) {
	h := newHarness(t)
	u, callee := h.established(h.pbx, h.prov, h.lan.addr, "0301234567", "prov")
	first := mustParse(t, callee.inv.Body())
	answerReinvites(t, h.prov, "prov", "")
	ms := h.media.session(0)
	oldPort := ms.LocalPort(rtpbridge.LegB)

	h.b.OnNoInbound(u.inv.CallID().Value(), rtpbridge.LegB)
	re := h.prov.next(sip.INVITE)
	if sipmsg := re.To(); !strings.Contains(sipmsg.Params.String(), "tag=prov") {
		t.Fatalf("re-INVITE outside the dialog: To %s", sipmsg)
	}
	if got := ms.rebound(); len(got) != 1 || got[0] != rtpbridge.LegB {
		t.Fatalf("Rebind calls %v, want one for leg B", got)
	}
	newPort := ms.LocalPort(rtpbridge.LegB)
	offer := mustParse(t, re.Body())
	if offer.Media[0].Port != int(newPort) || newPort == oldPort {
		t.Fatalf("re-INVITE offers port %d, want the new port %d (old %d)", offer.Media[0].Port, newPort, oldPort)
	}
	v0, _ := strconv.ParseUint(first.Origin.Version, 10, 64)
	if v1, _ := strconv.ParseUint(offer.Origin.Version, 10, 64); v1 != v0+1 || offer.Origin.SessionID != first.Origin.SessionID {
		t.Fatalf("o= %+v after %+v: want the same session, version+1", offer.Origin, first.Origin)
	}
	if strings.Contains(string(re.Body()), pbxIP) || strings.Contains(string(re.Body()), lanIP) {
		t.Fatalf("re-INVITE leaks a LAN address:\n%s", re.Body())
	}
	ack := h.prov.next(sip.ACK)
	if ack.CSeq().SeqNo != re.CSeq().SeqNo {
		t.Fatalf("ACK CSeq %d for re-INVITE CSeq %d", ack.CSeq().SeqNo, re.CSeq().SeqNo)
	}
	if req, ok := h.pbx.any(); ok {
		t.Fatalf("the PBX was bothered with a %s", req.Method)
	}
	// Once per call.
	c, _ := h.b.callByID(u.inv.CallID().Value())
	h.b.repairNAT(c, rtpbridge.LegB)
	if got := ms.rebound(); len(got) != 1 {
		t.Fatalf("second report rebound again: %v", got)
	}
	if res := callee.do(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE answered %d", res.StatusCode)
	}
	if e := h.awaitEnded(); !e.NATRepaired {
		t.Errorf("CallEnded %+v, want NATRepaired", e)
	}
}

// Calls whose provider-leg silence is legitimate or not a race are left
// alone: a remote whose SDP says it does not send, and a call the provider
// offered (our pinhole left before our answer).
func TestNoInboundLeavesHealthyCallsAlone(t *testing.T) {
	for _, dir := range []string{"recvonly", "inactive"} {
		t.Run(dir, func(t *testing.T) {
			h := newHarness(t)
			gate := make(chan struct{})
			close(gate)
			h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
				contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: provIP, Port: int(h.prov.addr.Port())}}
				respond(t, tx, req, 200, "OK", "prov", withDir(sdpOf(provIP, 30000), dir), contact)
			})
			u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
			if res, _ := u.final(); res.StatusCode != 200 {
				t.Fatalf("answered %d", res.StatusCode)
			}
			u.ack()
			c, ok := h.b.callByID(u.inv.CallID().Value())
			if !ok {
				t.Fatal("no call")
			}
			h.b.repairNAT(c, rtpbridge.LegB)
			if got := h.media.session(0).rebound(); len(got) != 0 {
				t.Fatalf("rebound %v for a %s remote", got, dir)
			}
		})
	}
	t.Run("inbound", func(t *testing.T) {
		h := newHarness(t)
		u, _ := h.established(h.prov, h.pbx, h.wan.addr, "4930123456", "pbx")
		c, ok := h.b.callByID(u.inv.CallID().Value())
		if !ok {
			t.Fatal("no call")
		}
		h.b.repairNAT(c, rtpbridge.LegB)
		if got := h.media.session(0).rebound(); len(got) != 0 {
			t.Fatalf("rebound %v on a call the provider offered", got)
		}
	})
}

// A delayed offer from the provider: we offer in our 200 and the answer
// comes in its ACK, which a real stack sends together with its first RTP,
// so this leg can lose the NAT race too, and is repaired like an
// outbound call's.
func TestNoInboundRepairsDelayedOfferFromProvider(t *testing.T) {
	h := newHarness(t)
	gate := make(chan struct{})
	close(gate)
	h.pbx.on(sip.INVITE, answer(t, h.pbx, "pbx", gate))
	u := h.prov.call(h.wan.addr, "4930123456", nil)
	res, _ := u.final()
	if res.StatusCode != 200 {
		t.Fatalf("answered %d", res.StatusCode)
	}
	ack := u.request(sip.ACK, u.inv.CSeq().SeqNo, sdpOf(provIP, 20000))
	if err := h.prov.client.WriteRequest(ack, sipgo.ClientRequestBuild); err != nil {
		t.Fatal(err)
	}
	h.pbx.next(sip.ACK)
	ms := h.media.session(0)
	ms.awaitRemote(t, rtpbridge.LegB, netip.MustParseAddrPort(provIP+":20000"))
	h.b.OnNoInbound(u.inv.CallID().Value(), rtpbridge.LegB)
	re := h.prov.next(sip.INVITE)
	if got := ms.rebound(); len(got) != 1 || got[0] != rtpbridge.LegB {
		t.Fatalf("Rebind calls %v, want one for leg B", got)
	}
	if p := mustParse(t, re.Body()).Media[0].Port; p != int(ms.LocalPort(rtpbridge.LegB)) {
		t.Errorf("re-INVITE offers port %d, want the new %d", p, ms.LocalPort(rtpbridge.LegB))
	}
	if v, v0 := version(t, re.Body()), version(t, res.Body()); v != v0+1 {
		t.Errorf("re-INVITE o= version %d after our offer's %d", v, v0)
	}
}
