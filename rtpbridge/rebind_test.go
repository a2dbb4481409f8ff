package rtpbridge

import (
	"testing"
	"time"

	"github.com/pion/rtp"
)

// noInboundHarness is a harness whose OnNoInbound reports into a channel.
func noInboundHarness(t *testing.T) (*harness, chan Leg) {
	t.Helper()
	got := make(chan Leg, 4)
	h := newHarness(t, func(c *Config) {
		c.OnNoInbound = func(s *Session, l Leg) { got <- l }
	})
	return h, got
}

// talkAtoB sends n packets from the PBX and receives each at the
// provider's SDP address, so they are counted as forwarded out of leg B.
func (h *harness) talkAtoB(seq0 uint16, n int) {
	h.t.Helper()
	for i := range n {
		seq := seq0 + uint16(i)
		send(h.t, h.pbx, rtpPkt(seq, uint32(seq)*160, 0xaaaa, 'a'), h.aRTP)
		recv(h.t, h.sdp)
	}
}

func assertNoReport(t *testing.T, got chan Leg) {
	t.Helper()
	select {
	case l := <-got:
		t.Fatalf("OnNoInbound fired for leg %s", l)
	default:
	}
}

func TestNoInboundReportedOncePerPair(t *testing.T) {
	h, got := noInboundHarness(t)
	h.connect()
	h.s.Established()
	h.talkAtoB(1, noInboundMinSent)
	h.clk.Advance(DefaultNoInboundAfter - time.Millisecond)
	assertNoReport(t, got)
	h.clk.Advance(time.Millisecond)
	select {
	case l := <-got:
		if l != LegB {
			t.Fatalf("reported leg %s, want B", l)
		}
	default:
		t.Fatal("no OnNoInbound after a second of silence on leg B while we sent")
	}
	h.talkAtoB(100, noInboundMinSent)
	h.clk.Advance(10 * DefaultNoInboundAfter)
	assertNoReport(t, got)
}

func TestNoInboundNotForHealthyCalls(t *testing.T) {
	cases := map[string]func(h *harness){
		"remote sends": func(h *harness) {
			send(h.t, h.sdp, rtpPkt(1, 160, 0xbbbb, 'b'), h.bRTP)
			recv(h.t, h.pbx)
		},
		"on hold":        func(h *harness) { h.s.SetHold(true) },
		"t38":            func(h *harness) { h.s.SetRaw(true) },
		"too few sent":   func(h *harness) {},
		"not answered":   func(h *harness) {},
		"remote 0.0.0.0": func(h *harness) {},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			h, got := noInboundHarness(t)
			h.connect()
			if name != "not answered" {
				h.s.Established()
			}
			setup(h)
			switch name {
			case "too few sent":
				h.talkAtoB(1, noInboundMinSent-1)
			case "remote 0.0.0.0":
				h.talkAtoB(1, noInboundMinSent)
				if err := h.s.SetRemote(LegB, loopback(0), loopback(0)); err != nil {
					t.Fatal(err)
				}
			case "t38":
				for i := range noInboundMinSent {
					send(t, h.pbx, []byte{byte(i)}, h.aRTP)
					recv(t, h.sdp)
				}
			default:
				h.talkAtoB(1, noInboundMinSent)
			}
			h.clk.Advance(5 * DefaultNoInboundAfter)
			assertNoReport(t, got)
		})
	}
}

func TestRebindPinholeFirstAndOldPortCut(t *testing.T) {
	h, got := noInboundHarness(t)
	h.connect()
	h.s.Established()
	h.talkAtoB(1, noInboundMinSent)
	oldPort := h.s.LocalPort(LegB)

	newPort, err := h.s.Rebind(LegB)
	if err != nil {
		t.Fatal(err)
	}
	if newPort == oldPort || newPort%2 != 0 || h.s.LocalPort(LegB) != newPort {
		t.Fatalf("Rebind gave port %d (old %d, LocalPort %d)", newPort, oldPort, h.s.LocalPort(LegB))
	}
	// The first packet from the new pair is the pinhole, on RTP and RTCP.
	b, from := recv(t, h.sdp)
	var hdr rtp.Header
	if _, err := hdr.Unmarshal(b); err != nil || hdr.PayloadType != keepalivePT || from != loopback(newPort) {
		t.Fatalf("first packet after Rebind: PT %d from %s (%v), want pinhole from :%d", hdr.PayloadType, from, err, newPort)
	}
	if b, from = recv(t, h.sdpRTCP); from != loopback(newPort+1) || b[1] != 201 {
		t.Fatalf("RTCP pinhole from %s type %d, want :%d RR", from, b[1], newPort+1)
	}
	// Media now leaves and enters through the new pair.
	send(t, h.pbx, rtpPkt(50, 8000, 0xaaaa, 'a'), h.aRTP)
	if _, from = recv(t, h.sdp); from != loopback(newPort) {
		t.Fatalf("A→B after Rebind from %s, want :%d", from, newPort)
	}
	send(t, h.sdp, rtpPkt(1, 160, 0xbbbb, 'b'), loopback(newPort))
	if b, _ := recv(t, h.pbx); b[12] != 'b' {
		t.Fatal("B→A through the new port did not arrive")
	}
	// The old port is quarantined: still bound, and what reaches it is
	// drained, never relayed.
	if !bound(t, oldPort) {
		t.Fatalf("old port %d unbound at once, want quarantine", oldPort)
	}
	drops := h.br.NoSessionDrops()
	send(t, h.sdp, rtpPkt(2, 320, 0xbbbb, 'x'), loopback(oldPort))
	waitFor(t, "drain of the old port", func() bool { return h.br.NoSessionDrops() == drops+1 })
	noPacket(t, h.pbx)

	// Counters continue across the move.
	st := h.s.Stats()
	if st.AtoB.Packets != noInboundMinSent+1 || st.AtoB.Forwarded != noInboundMinSent+1 || st.BtoA.Packets != 1 ||
		st.BtoA.Source != addrOf(h.sdp) || st.BtoA.SSRC != 0xbbbb {
		t.Fatalf("stats after Rebind %+v", st)
	}
	if h.s.Rebinds() != 1 {
		t.Fatalf("Rebinds %d, want 1", h.s.Rebinds())
	}
	// The new pair heard the remote: no report for it.
	h.clk.Advance(5 * DefaultNoInboundAfter)
	assertNoReport(t, got)
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Rebind(LegB); err == nil {
		t.Fatal("Rebind after Close succeeded")
	}
}

// TestRebindRearmsReport: the new pair is watched afresh, so a remote that
// stays silent after the move is reported once more (the SIP layer decides
// whether to try again).
func TestRebindRearmsReport(t *testing.T) {
	h, got := noInboundHarness(t)
	h.connect()
	h.s.Established()
	h.talkAtoB(1, noInboundMinSent)
	h.clk.Advance(DefaultNoInboundAfter)
	if l := <-got; l != LegB {
		t.Fatal(l)
	}
	if _, err := h.s.Rebind(LegB); err != nil {
		t.Fatal(err)
	}
	recv(t, h.sdp) // pinhole
	recv(t, h.sdpRTCP)
	h.talkAtoB(100, noInboundMinSent)
	h.clk.Advance(DefaultNoInboundAfter)
	select {
	case <-got:
	default:
		t.Fatal("new pair not watched")
	}
}

// TestRebindKeepsTheLatch (review): right after a Rebind the latched peer
// still owns the stream on the new port; another source the latching
// rule admits (here the same IP, another port) is refused until the peer
// has been silent for the relatch interval. Before, the new socket's
// "last heard from the peer" started at zero, so the latch looked long
// silent and the first such packet took it over.
func TestRebindKeepsTheLatch(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	h.clk.Advance(time.Hour) // so that "never heard" is far in the past
	send(t, h.nat, rtpPkt(1, 160, 0x1111, 'g'), h.bRTP)
	recvGenuine(t, &genuine{conn: h.pbx})
	port, err := h.s.Rebind(LegB)
	if err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(20 * time.Millisecond)
	send(t, udp(t), rtpPkt(100, 0, 0x1111, 'X'), loopback(port))
	waitFor(t, "the other source refused", func() bool { return h.s.Stats().BtoA.Foreign == 1 })
	noPacket(t, h.pbx)
	if st := h.s.Stats().BtoA; st.Relatched != 0 {
		t.Fatalf("the latch moved on the new port: %+v", st)
	}
}
