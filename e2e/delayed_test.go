package e2e

import (
	"testing"
	"time"
)

// Delayed offer (issue 8, item 2): the caller's INVITE has no SDP, as 3CX
// and some Asterisk set-ups send it. The callee gets an INVITE without SDP
// too, its 200 carries the offer, the caller's ACK the answer, which the
// callee gets in the daemon's ACK; the pcap plays both ways through the
// relay, in both directions of call.
//
// Inbound, the daemon makes the offer towards the phone and learns the
// phone's media address only from the ACK, which the phone sends together
// with its first RTP: that RTP reaches the NAT router before our pinhole
// can, every time (nat-findings 4). So the inbound call runs with the
// README's port forward of the RTP pool, as TestRealUACallOutbound does;
// without it the daemon repairs the leg with a new port and a re-INVITE
// (TestNoInboundRepairsDelayedOfferFromProvider), which this sipp phone
// does not take. Outbound, the provider's offer names its address in the
// 200, so our pinhole leaves first and no forward is needed.
func TestDialogDelayedOffer(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			if dir == inbound {
				if err := l.ForwardRTPPool(); err != nil {
					t.Fatal(err)
				}
			}
			r := placeCall(t, l, dir, "uac-delayed.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			inv, ok := FirstSIP(r.SIPTo(dir.callee), isRequest("INVITE"))
			switch {
			case !ok:
				t.Fatal("no INVITE reached the callee")
			case inv.Body() != "":
				t.Errorf("the callee's INVITE carries a body the caller never sent:\n%s", inv.Text)
			}
			ack, ok := FirstSIP(r.SIPTo(dir.callee), isRequest("ACK"))
			if _, sdp := ParseSDPAudio(ack.Body()); !ok || !sdp {
				t.Errorf("the callee's ACK carries no answer:\n%s", ack.Text)
			}
			checkTwoWay(t, r, dir, 1)
			checkLegs(t, r)
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}
