package rtpbridge

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// udpAt is a socket on another loopback address: another host, as far as
// the relay can tell.
func udpAt(t testing.TB, ip [4]byte) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(ip[0], ip[1], ip[2], ip[3])})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var (
	attackerIP = [4]byte{127, 0, 0, 66}
	otherIP    = [4]byte{127, 0, 0, 77}
)

// genuine is one end of a call: it sends to its leg's relay port and
// receives what the other end sends, on the same socket (it sends from its
// SDP address).
type genuine struct {
	conn       *net.UDPConn
	rtp, rtcp  netip.AddrPort // the relay's sockets on its leg
	ssrc       uint32
	seq        uint16
	arrivedDir func() Direction // counters of what it sends
}

func (g *genuine) send(t *testing.T) {
	t.Helper()
	g.seq++
	send(t, g.conn, rtpPkt(g.seq, uint32(g.seq)*160, g.ssrc, 'g'), g.rtp)
}

// ends returns the PBX (leg A) and the provider (leg B, sending from its
// SDP address) of h.
func ends(h *harness) [2]*genuine {
	return [2]*genuine{
		{conn: h.pbx, rtp: h.aRTP, rtcp: h.aRTCP, ssrc: 0xa, arrivedDir: func() Direction { return h.s.direction(LegA) }},
		{conn: h.sdp, rtp: h.bRTP, rtcp: h.bRTCP, ssrc: 0xb, arrivedDir: func() Direction { return h.s.direction(LegB) }},
	}
}

// recvGenuine asserts the next packet at g is a genuine one.
func recvGenuine(t *testing.T, g *genuine) {
	t.Helper()
	if b, _ := recv(t, g.conn); len(b) < 13 || b[12] != 'g' {
		t.Fatalf("the far end got %x…, not the genuine packet", b[:min(len(b), 13)])
	}
}

// TestAttackerCannotTakeOver is the RTP-bleed attack of issue 9 on both
// pools: an attacker sprays the relay ports before and while the call is
// set up, or sends 3-packet bursts with a new SSRC while both ends talk.
// No attacker packet may reach the other end, every genuine one must, and
// the attacker must receive nothing.
func TestAttackerCannotTakeOver(t *testing.T) {
	for _, leg := range []Leg{LegA, LegB} {
		for _, attack := range []string{"spray", "bursts"} {
			t.Run(leg.String()+"/"+attack, func(t *testing.T) {
				h := newHarness(t, nil)
				e := ends(h)
				victim, far := e[leg], e[1-leg]
				attackers := []*net.UDPConn{udpAt(t, attackerIP)}
				if leg == LegA {
					// On the LAN, a process on the PBX's own host too.
					attackers = append(attackers, udp(t))
				}
				var sent uint64
				spray := func(n int, ssrc uint32) {
					for _, a := range attackers {
						for i := range n {
							send(t, a, rtpPkt(uint16(9000+i), 0, ssrc, 'X'), victim.rtp)
							send(t, a, []byte{0x80, 201, 0, 1, 0, 0, 0xba, 0xd0}, victim.rtcp)
							sent += 2
						}
					}
				}
				if attack == "spray" {
					spray(20, 0xbad) // before any SDP
					waitFor(t, "early spray refused", func() bool { return victim.arrivedDir().Foreign == sent })
				}
				h.connect()
				if attack == "spray" {
					spray(20, 0xbad) // SDP known, no genuine packet yet
					waitFor(t, "spray refused", func() bool { return victim.arrivedDir().Foreign == sent })
				}
				const rounds = 50
				for i := range rounds {
					h.clk.Advance(20 * time.Millisecond)
					victim.send(t)
					recvGenuine(t, far)
					switch attack {
					case "spray":
						spray(1, 0xbad)
					case "bursts":
						spray(3, uint32(0xb00+i)) // a new SSRC each burst
					}
					far.send(t)
					recvGenuine(t, victim)
				}
				waitFor(t, "attack refused", func() bool { return victim.arrivedDir().Foreign == sent })
				for _, g := range e {
					noPacket(t, g.conn)
				}
				for _, a := range attackers {
					noPacket(t, a)
				}
				st := h.s.Stats()
				v, f := victim.arrivedDir(), far.arrivedDir()
				if v.Packets != rounds || f.Packets != rounds || v.Relatched != 0 || v.Source != addrOf(victim.conn) {
					t.Fatalf("victim %+v, far %+v", v, f)
				}
				if v.Refused != sent {
					t.Fatalf("refused %d of %d attack packets: the latching rule alone must refuse them", v.Refused, sent)
				}
				if st.OneWay() {
					t.Fatal("a two-way call flagged one-way")
				}
			})
		}
	}
}

// TestLatchingModes checks each rule against the sources a leg may see:
// the exact SDP address, the SDP's IP from another port (a NAT that
// rewrites the port, nat-findings 12) and another host.
func TestLatchingModes(t *testing.T) {
	for _, tc := range []struct {
		mode                   Latching
		exact, otherPort, host bool
	}{
		{LatchStrict, true, false, false},
		{LatchIP, true, true, false},
		{LatchAny, true, true, true},
	} {
		for _, src := range []string{"exact", "other port", "other host"} {
			t.Run(tc.mode.String()+"/"+src, func(t *testing.T) {
				h := newHarness(t, func(c *Config) { c.Latching[LegB] = tc.mode })
				h.connect()
				from, want := h.sdp, tc.exact
				switch src {
				case "other port":
					from, want = h.nat, tc.otherPort
				case "other host":
					from, want = udpAt(t, otherIP), tc.host
				}
				send(t, from, rtpPkt(1, 160, 5, 'g'), h.bRTP)
				if !want {
					waitFor(t, "refusal", func() bool { return h.s.Stats().BtoA.Refused == 1 })
					noPacket(t, h.pbx)
					return
				}
				recvGenuine(t, &genuine{conn: h.pbx})
				// A→B answers where it came from (symmetric RTP).
				send(t, h.pbx, rtpPkt(1, 160, 6, 'g'), h.aRTP)
				recvGenuine(t, &genuine{conn: from})
				if st := h.s.Stats().BtoA; st.Source != addrOf(from) || st.Refused != 0 {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

// The LAN default is strict (the PBX's SDP is exact) and the Internet
// default is ip (NAT may rewrite the port, not the provider's IP).
func TestLatchingDefaults(t *testing.T) {
	h := newHarness(t, nil)
	if a, b := h.s.socks[LegA][kindRTP].mode, h.s.socks[LegB][kindRTCP].mode; a != LatchStrict || b != LatchIP {
		t.Fatalf("defaults A %v, B %v", a, b)
	}
	s, err := h.br.NewSessionWith("c2", SessionOptions{Latching: [2]Latching{LegB: LatchAny}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if a, b := s.socks[LegA][kindRTCP].mode, s.socks[LegB][kindRTP].mode; a != LatchStrict || b != LatchAny {
		t.Fatalf("override A %v, B %v", a, b)
	}
	if _, err := h.br.NewSessionWith("bad", SessionOptions{Latching: [2]Latching{9, 0}}); err == nil {
		t.Fatal("invalid latching accepted")
	}
	for in, want := range map[string]Latching{"": LatchDefault, "strict": LatchStrict, "ip": LatchIP, "any": LatchAny} {
		if got, err := ParseLatching(in); err != nil || got != want || (in != "" && got.String() != in) {
			t.Errorf("ParseLatching(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseLatching("loose"); err == nil {
		t.Error("ParseLatching accepted loose")
	}
}

// TestRelatchOnlyAfterSilence: a genuine move (the remote's NAT mapping
// changed: same IP, new port, same SSRC) takes over once the old source has
// been silent for RelatchAfter, and not before, however many packets it
// sends; a host the rule refuses never does.
func TestRelatchOnlyAfterSilence(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	old, moved := h.nat, udp(t)
	pbx := &genuine{conn: h.pbx}
	send(t, old, rtpPkt(1, 160, 0x1111, 'g'), h.bRTP)
	recvGenuine(t, pbx)
	foreign := func(want uint64) {
		t.Helper()
		waitFor(t, "foreign drops", func() bool { return h.s.Stats().BtoA.Foreign == want })
	}

	// The old source is alive: a burst from the new one, with or without a
	// new SSRC, is dropped.
	h.clk.Advance(20 * time.Millisecond)
	for i := range 5 {
		send(t, moved, rtpPkt(uint16(100+i), 0, 0x1111+uint32(i%2), 'X'), h.bRTP)
	}
	send(t, old, rtpPkt(2, 320, 0x1111, 'g'), h.bRTP)
	recvGenuine(t, pbx)
	foreign(5)

	// Silent for just under the interval: still the old source's.
	h.clk.Advance(DefaultRelatchAfter - time.Millisecond)
	send(t, moved, rtpPkt(200, 0, 0x1111, 'X'), h.bRTP)
	foreign(6)
	noPacket(t, h.pbx)

	// A host the ip rule refuses gets nothing even after the interval.
	h.clk.Advance(time.Millisecond)
	send(t, udpAt(t, attackerIP), rtpPkt(1, 0, 0x6666, 'X'), h.bRTP)
	waitFor(t, "attacker refused", func() bool { return h.s.Stats().BtoA.Refused == 1 })
	noPacket(t, h.pbx)

	// The interval has passed: the moved source takes over.
	send(t, moved, rtpPkt(201, 0, 0x1111, 'g'), h.bRTP)
	recvGenuine(t, pbx)
	st := h.s.Stats().BtoA
	if st.Relatched != 1 || st.Source != addrOf(moved) {
		t.Fatalf("after the silence: %+v", st)
	}
	send(t, h.pbx, rtpPkt(1, 160, 9, 'g'), h.aRTP)
	recvGenuine(t, &genuine{conn: moved})
	send(t, old, rtpPkt(3, 480, 0x1111, 'X'), h.bRTP)
	foreign(8)
	noPacket(t, h.pbx)

	// RTCP moves too, but only after a report interval and a half.
	rtcpOld, rtcpMoved := h.natRTCP, udp(t)
	rr := []byte{0x80, 201, 0, 1, 0, 0, 0x11, 0x11}
	send(t, rtcpOld, rr, h.bRTCP)
	recv(t, h.pbxRTCP)
	h.clk.Advance(5 * time.Second)
	send(t, rtcpMoved, rr, h.bRTCP)
	foreign(9)
	h.clk.Advance(rtcpRelatchAfter - 5*time.Second)
	send(t, rtcpMoved, rr, h.bRTCP)
	recv(t, h.pbxRTCP)
	if st := h.s.Stats().BtoA; st.Relatched != 2 {
		t.Fatalf("RTCP did not move: %+v", st)
	}
}

// TestLatchAnyFollowsUnknownSource: 'any' is for peers whose SDP address
// is useless (a private address behind their NAT). It still refuses
// everything before the SDP is known, and a live peer cannot be displaced.
func TestLatchAnyFollowsUnknownSource(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Latching[LegB] = LatchAny })
	attacker := udpAt(t, attackerIP)
	send(t, attacker, rtpPkt(1, 0, 0xbad, 'X'), h.bRTP)
	waitFor(t, "refused before the SDP", func() bool { return h.s.Stats().BtoA.Refused == 1 })
	h.connect()
	peer := udpAt(t, otherIP) // not the SDP's host at all
	pbx := &genuine{conn: h.pbx}
	send(t, peer, rtpPkt(1, 160, 7, 'g'), h.bRTP)
	recvGenuine(t, pbx)
	for i := range 10 {
		h.clk.Advance(20 * time.Millisecond)
		for j := range 3 {
			send(t, attacker, rtpPkt(uint16(10*i+j), 0, uint32(0xb00+i), 'X'), h.bRTP)
		}
		send(t, peer, rtpPkt(uint16(2+i), 0, 7, 'g'), h.bRTP)
		recvGenuine(t, pbx)
	}
	noPacket(t, h.pbx)
	noPacket(t, attacker)
	if st := h.s.Stats().BtoA; st.Foreign != 31 || st.Refused != 1 || st.Relatched != 0 || st.Source != addrOf(peer) {
		t.Fatalf("stats %+v", st)
	}
}

// TestRefusedOnlyIsOneWay: the provider side is silent (its audio is lost
// upstream) while an attacker sprays it and the PBX talks. Nothing of the
// attacker's is relayed, and the call must not look two-way.
func TestRefusedOnlyIsOneWay(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	attacker := udpAt(t, attackerIP)
	for i := range 10 {
		send(t, h.pbx, rtpPkt(uint16(i), 0, 1, 'g'), h.aRTP)
		recvGenuine(t, &genuine{conn: h.sdp})
		send(t, attacker, rtpPkt(uint16(i), 0, 0xbad, 'X'), h.bRTP)
	}
	waitFor(t, "spray refused", func() bool { return h.s.Stats().BtoA.Refused == 10 })
	noPacket(t, h.pbx)
	if st := h.s.Stats(); !st.OneWay() || st.BtoA.Packets != 0 {
		t.Fatalf("one_way %v, stats %+v", st.OneWay(), st)
	}
}

// TestLatchLogsPerSession: refusals are logged rate-limited per session and
// socket, so one call's flood neither silences another call's first
// refusal nor the takeover that follows it in the same call.
func TestLatchLogsPerSession(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	h := newHarness(t, func(c *Config) { c.Logger = zap.New(core) })
	h.connect()
	s2, err := h.br.NewSession("call-2")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.SetRemote(LegB, addrOf(h.sdp), netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	recv(t, h.sdp) // its pinhole

	attacker := udpAt(t, attackerIP)
	for i := range 50 {
		send(t, attacker, rtpPkt(uint16(i), 0, 0xbad, 'X'), h.bRTP)
	}
	waitFor(t, "flood refused", func() bool { return h.s.Stats().BtoA.Refused == 50 })
	send(t, attacker, rtpPkt(1, 0, 0xbad, 'X'), loopback(s2.LocalPort(LegB)))
	waitFor(t, "call-2 refusal", func() bool { return s2.Stats().BtoA.Refused == 1 })

	refusals := func(call string) []observer.LoggedEntry {
		return logs.FilterMessage("refused media source").FilterField(zap.String("call_id", call)).All()
	}
	if n1, n2 := len(refusals("call-1")), len(refusals("call-2")); n1 != 1 || n2 != 1 {
		t.Fatalf("refusal lines: call-1 %d, call-2 %d; want 1 each", n1, n2)
	}

	// A takeover in the flooded call is still logged.
	send(t, h.nat, rtpPkt(1, 0, 1, 'g'), h.bRTP)
	recv(t, h.pbx)
	h.clk.Advance(DefaultRelatchAfter)
	moved := udp(t)
	send(t, moved, rtpPkt(2, 0, 1, 'g'), h.bRTP)
	recv(t, h.pbx)
	if n := logs.FilterMessage("media source taken over").FilterField(zap.String("call_id", "call-1")).Len(); n != 1 {
		t.Fatalf("%d takeover lines, want 1", n)
	}

	// The next refusal after the interval says how many were not logged.
	h.clk.Advance(logEvery)
	send(t, attacker, rtpPkt(99, 0, 0xbad, 'X'), h.bRTP)
	waitFor(t, "refusal", func() bool { return h.s.Stats().BtoA.Refused == 51 })
	got := refusals("call-1")
	if len(got) != 2 || got[1].ContextMap()["suppressed"] != int64(49) {
		t.Fatalf("second refusal line %+v", got)
	}
}
