package rtpbridge

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// drainPool is a validated pool of one pair (unless mod widens it) on a
// fake clock, closed when the test ends.
func drainPool(t *testing.T, port uint16, mod func(*Pool)) (*Pool, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	p := &Pool{Address: "127.0.0.1", MinPort: port, MaxPort: port + 1, Clock: clk}
	if mod != nil {
		mod(p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	withTestIO(t, p)
	closeAtEnd(t, p)
	return p, clk
}

// releasedPair allocates p's pair and releases it into quarantine.
func releasedPair(t *testing.T, p *Pool) uint16 {
	t.Helper()
	pp, err := p.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	if err := pp.Release(); err != nil {
		t.Fatal(err)
	}
	return pp.Port()
}

// waitDrops awaits the count of no_session drops. The drain reader records
// the packet's time before counting it, so once the count is seen the fake
// clock may move on.
func waitDrops(t *testing.T, drops func() uint64, want uint64) {
	t.Helper()
	waitFor(t, "no_session drops", func() bool { return drops() == want })
	if got := drops(); got != want {
		t.Fatalf("%d no_session drops, want %d", got, want)
	}
}

func wantCounts(t *testing.T, p *Pool, want PoolCounts) {
	t.Helper()
	c := p.Counts()
	if c.InUse != want.InUse || c.Quarantined != want.Quarantined || c.Free != want.Free ||
		c.Pairs != c.InUse+c.Quarantined+c.Free || c.MinPort != p.MinPort || c.MaxPort != p.MaxPort {
		t.Fatalf("counts %+v, want %+v", c, want)
	}
}

func wantBound(t *testing.T, ports []uint16, want bool) {
	t.Helper()
	for _, port := range ports {
		if got := bound(t, port); got != want {
			t.Fatalf("port %d bound %v, want %v", port, got, want)
		}
	}
}

func dial(t *testing.T, port uint16) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(loopback(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// A connected UDP socket learns of an ICMP port unreachable for one datagram
// as ECONNREFUSED from its next send.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func TestQuarantineKeepsPortsBoundAndAbsorbsLatePackets(t *testing.T) {
	checkRoutines(t)
	p, _ := drainPool(t, 44700, nil)
	port := releasedPair(t, p)
	wantBound(t, []uint16{port, port + 1}, true)
	wantCounts(t, p, PoolCounts{Quarantined: 1})

	var drops uint64
	for _, to := range []uint16{port, port + 1} {
		c := dial(t, to)
		for i := range 3 {
			if _, err := c.Write(rtpPkt(uint16(i), 0, 1, 'l')); err != nil {
				t.Fatalf("late packet %d to %d: %v", i, to, err)
			}
			drops++
			waitDrops(t, p.NoSessionDrops, drops)
		}
		// Each packet was read, so none drew an ICMP error: this send
		// would fail otherwise.
		if _, err := c.Write(rtpPkt(9, 0, 1, 'l')); err != nil {
			t.Fatalf("send to drained port %d: %v", to, err)
		}
		drops++
		waitDrops(t, p.NoSessionDrops, drops)
	}
	wantCounts(t, p, PoolCounts{Quarantined: 1})

	// Control: once Close unbinds the ports, the same check sees the
	// refusal, so the one above is meaningful.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	wantBound(t, []uint16{port, port + 1}, false)
	wantCounts(t, p, PoolCounts{Free: 1})
	c := dial(t, port)
	waitFor(t, "ICMP port unreachable", func() bool {
		_, err := c.Write(rtpPkt(1, 0, 1, 'x'))
		return refused(err)
	})
	if got := p.NoSessionDrops(); got != drops {
		t.Fatalf("%d drops after Close, want %d", got, drops)
	}
}

func TestQuarantineEndsAfterSilence(t *testing.T) {
	checkRoutines(t)
	p, clk := drainPool(t, 44702, nil)
	port := releasedPair(t, p)
	// (Allocate would take the pair over here; see
	// TestPoolReusesQuarantinedPairOnlyWhenNoneFree.)
	clk.Advance(DefaultQuarantine - time.Millisecond)
	wantCounts(t, p, PoolCounts{Quarantined: 1})
	wantBound(t, []uint16{port, port + 1}, true)

	clk.Advance(time.Millisecond)
	wantCounts(t, p, PoolCounts{Free: 1})
	wantBound(t, []uint16{port, port + 1}, false)
	pp, err := p.Allocate()
	if err != nil {
		t.Fatalf("Allocate after quarantine: %v", err)
	}
	if pp.Port() != port {
		t.Fatalf("port %d, want %d", pp.Port(), port)
	}
	if err := pp.Release(); err != nil {
		t.Fatal(err)
	}
	if p.NoSessionDrops() != 0 {
		t.Fatalf("%d drops with no packet sent", p.NoSessionDrops())
	}
}

func TestQuarantineLatePacketRestartsIdleWait(t *testing.T) {
	checkRoutines(t)
	p, clk := drainPool(t, 44704, nil)
	port := releasedPair(t, p)
	rtcp := udp(t)

	clk.Advance(20 * time.Second)
	send(t, rtcp, []byte{0x80, 201, 0, 1, 0, 0, 0, 1}, loopback(port+1)) // late RTCP counts too
	waitDrops(t, p.NoSessionDrops, 1)
	clk.Advance(10 * time.Second) // 30 s after the release, 10 s after the packet
	wantCounts(t, p, PoolCounts{Quarantined: 1})
	clk.Advance(20*time.Second - time.Millisecond)
	wantCounts(t, p, PoolCounts{Quarantined: 1})
	wantBound(t, []uint16{port, port + 1}, true)
	clk.Advance(time.Millisecond) // 30 s after the packet
	wantCounts(t, p, PoolCounts{Free: 1})
	wantBound(t, []uint16{port, port + 1}, false)
}

func TestQuarantineCappedByMaxQuarantine(t *testing.T) {
	checkRoutines(t)
	p, clk := drainPool(t, 44706, nil)
	if p.MaxQuarantine != DefaultMaxQuarantine {
		t.Fatalf("MaxQuarantine %v", p.MaxQuarantine)
	}
	port := releasedPair(t, p)
	peer := udp(t)

	// A packet every 20 s, on RTP and RTCP in turn, keeps the pair
	// quarantined...
	const every = 20 * time.Second
	var sent uint64
	for at := every; at < DefaultMaxQuarantine; at += every {
		clk.Advance(every)
		wantCounts(t, p, PoolCounts{Quarantined: 1})
		send(t, peer, rtpPkt(uint16(sent), 0, 1, 't'), loopback(port+uint16(sent%2)))
		sent++
		waitDrops(t, p.NoSessionDrops, sent)
	}
	// ...but not past MaxQuarantine, although the last packet was only
	// 20 s ago.
	clk.Advance(every - time.Millisecond)
	wantCounts(t, p, PoolCounts{Quarantined: 1})
	clk.Advance(time.Millisecond)
	wantCounts(t, p, PoolCounts{Free: 1})
	wantBound(t, []uint16{port, port + 1}, false)
	if sent != uint64(DefaultMaxQuarantine/every)-1 {
		t.Fatalf("sent %d", sent)
	}
}

func TestQuarantineDisabledClosesAtOnce(t *testing.T) {
	checkRoutines(t)
	p, _ := drainPool(t, 44708, func(p *Pool) { p.Quarantine = -1 })
	port := releasedPair(t, p)
	wantCounts(t, p, PoolCounts{Free: 1})
	wantBound(t, []uint16{port, port + 1}, false)
}

func TestPoolCloseStopsDrainers(t *testing.T) {
	checkRoutines(t)
	clk := newFakeClock()
	p := &Pool{Address: "127.0.0.1", MinPort: 44710, MaxPort: 44719, Clock: clk}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	withTestIO(t, p)
	var ports []uint16
	var pairs []*PortPair
	for range 4 {
		pp, err := p.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, pp)
		ports = append(ports, pp.Port(), pp.Port()+1)
	}
	for _, pp := range pairs[:3] {
		if err := pp.Release(); err != nil {
			t.Fatal(err)
		}
	}
	wantCounts(t, p, PoolCounts{InUse: 1, Quarantined: 3, Free: 1})
	wantBound(t, ports, true)

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, p, PoolCounts{InUse: 1, Free: 4})
	wantBound(t, ports[:6], false)
	wantBound(t, ports[6:], true) // still in use
	if _, err := p.Allocate(); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("Allocate after Close: %v, want ErrPoolClosed", err)
	}
	// A pair released after Close is closed at once, not drained.
	if err := pairs[3].Release(); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, p, PoolCounts{Free: 5})
	wantBound(t, ports, false)
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	clk.Advance(DefaultMaxQuarantine) // the stopped timers do nothing
	wantCounts(t, p, PoolCounts{Free: 5})
	// checkRoutines verifies the drain readers are gone.
}

func TestSessionCloseDrainsLateMedia(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	send(t, h.pbx, rtpPkt(1, 160, 1, 'a'), h.aRTP)
	recv(t, h.sdp)
	send(t, h.nat, rtpPkt(1, 160, 2, 'b'), h.bRTP)
	recv(t, h.pbx)
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
	if c := h.br.Counts(); c.LAN.Quarantined != 1 || c.WAN.Quarantined != 1 || c.LAN.InUse+c.WAN.InUse != 0 {
		t.Fatalf("counts %+v", c)
	}
	ports := []uint16{h.aRTP.Port(), h.aRTCP.Port(), h.bRTP.Port(), h.bRTCP.Port()}
	wantBound(t, ports, true)

	rr := []byte{0x80, 201, 0, 1, 0, 0, 0, 1}
	send(t, h.pbx, rtpPkt(2, 320, 1, 'l'), h.aRTP)
	send(t, h.pbxRTCP, rr, h.aRTCP)
	send(t, h.nat, rtpPkt(2, 320, 2, 'l'), h.bRTP)
	send(t, h.natRTCP, rr, h.bRTCP)
	waitDrops(t, h.br.NoSessionDrops, 4)
	if n := h.br.cfg.LAN.NoSessionDrops(); n != 2 {
		t.Fatalf("LAN pool counted %d drops, want 2", n)
	}
	noPacket(t, h.sdp)
	noPacket(t, h.pbx)
	noPacket(t, h.nat)
	if st := h.s.Stats(); st.AtoB.Packets != 1 || st.BtoA.Packets != 1 || st.AtoB.RTCPPackets+st.BtoA.RTCPPackets != 0 {
		t.Fatalf("late packets reached the closed session's stats: %+v", st)
	}

	// Bridge.Close ends the quarantines; the counter survives it.
	if err := h.br.Close(); err != nil {
		t.Fatal(err)
	}
	if c := h.br.Counts(); c.LAN.Quarantined+c.WAN.Quarantined != 0 {
		t.Fatalf("counts after Bridge.Close %+v", c)
	}
	wantBound(t, ports, false)
	if n := h.br.NoSessionDrops(); n != 4 {
		t.Fatalf("%d drops after Close, want 4", n)
	}
}

// TestReusedPairRefusesOldRemote is issue 10 item 2's safety check: the
// pool's only Internet pair is reused at once while the old call's remote
// keeps sending into it, and none of its packets reaches the new call. The
// old remote has the new one's IP (one provider media server, another
// port), so the ip rule alone would accept it: the pair's taint refuses it.
func TestReusedPairRefusesOldRemote(t *testing.T) {
	checkRoutines(t)
	br, _, _ := oneWANPairBridge(t, 44720)
	pbx1, old, oldRTCP := udp(t), udp(t), udp(t)
	s1, err := br.NewSession("old")
	if err != nil {
		t.Fatal(err)
	}
	wanRTP, wanRTCP := loopback(s1.LocalPort(LegB)), loopback(s1.LocalPort(LegB)+1)
	_ = s1.SetRemote(LegA, addrOf(pbx1), netip.AddrPort{})
	_ = s1.SetRemote(LegB, addrOf(old), addrOf(oldRTCP))
	recv(t, old)
	recv(t, oldRTCP)
	send(t, old, rtpPkt(1, 160, 0x01d, 'o'), wanRTP)
	recv(t, pbx1)
	send(t, oldRTCP, []byte{0x80, 201, 0, 1, 0, 0, 0x01, 0x1d}, wanRTCP)
	waitFor(t, "RTCP latched", func() bool { return s1.Stats().BtoA.RTCPPackets == 1 })
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	late := func(i int) {
		send(t, old, rtpPkt(uint16(2+i), 0, 0x01d, 'X'), wanRTP)
		send(t, oldRTCP, []byte{0x80, 201, 0, 1, 0, 0, 0x01, 0x1d}, wanRTCP)
	}
	late(0)
	waitDrops(t, br.NoSessionDrops, 2)

	// No time passes: the quarantined pair is taken over.
	s2, err := br.NewSession("new")
	if err != nil {
		t.Fatalf("NewSession with the only pair quarantined: %v", err)
	}
	if s2.LocalPort(LegB) != wanRTP.Port() {
		t.Fatalf("WAN port %d, want the reused %d", s2.LocalPort(LegB), wanRTP.Port())
	}
	late(1) // before the new call's SDP is known
	refused := func(want uint64) {
		t.Helper()
		waitFor(t, "late packets refused", func() bool { return s2.Stats().BtoA.Refused == want })
	}
	refused(2)
	pbx2, prov, provRTCP := udp(t), udp(t), udp(t)
	_ = s2.SetRemote(LegA, addrOf(pbx2), netip.AddrPort{})
	_ = s2.SetRemote(LegB, addrOf(prov), addrOf(provRTCP))
	recv(t, prov)
	recv(t, provRTCP)
	const rounds = 20
	for i := range rounds {
		late(2 + i)
		send(t, prov, rtpPkt(uint16(i), 0, 0x2e3, 'g'), wanRTP)
		recvGenuine(t, &genuine{conn: pbx2})
	}
	refused(2 + 2*rounds)
	for _, c := range []*net.UDPConn{pbx1, pbx2, old, oldRTCP} {
		noPacket(t, c)
	}
	if st := s2.Stats().BtoA; st.Packets != rounds || st.Source != addrOf(prov) || st.Relatched != 0 {
		t.Fatalf("new call %+v", st)
	}
	_ = s2.Close()
}

// TestReuseTakesQuietestPair: of two quarantined pairs, the one whose old
// peer still sends is reused last.
func TestReuseTakesQuietestPair(t *testing.T) {
	checkRoutines(t)
	p, clk := drainPool(t, 44730, func(p *Pool) { p.MaxPort = 44733 })
	a, err := p.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	_ = a.Release()
	_ = b.Release()
	clk.Advance(time.Second)
	send(t, udp(t), rtpPkt(1, 0, 1, 'l'), loopback(a.Port()))
	waitDrops(t, p.NoSessionDrops, 1)
	for _, want := range []uint16{b.Port(), a.Port()} {
		pp, err := p.Allocate()
		if err != nil || pp.Port() != want {
			t.Fatalf("Allocate: %v, %v; want port %d", pp, err, want)
		}
		defer pp.Release()
	}
}

// TestPoolTurnover sets calls up and down much faster than the quarantine
// ends (the fake clock never moves) through two 500-pair pools, with 100
// calls up at a time: the pools never run out.
func TestPoolTurnover(t *testing.T) {
	checkRoutines(t)
	clk := newFakeClock()
	br, err := New(Config{IO: testIO, LAN: testPool(lanRange, clk), WAN: testPool(wanRange, clk), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	const calls, up = 2000, 100
	var open []*Session
	for i := range calls {
		s, err := br.NewSession("c")
		if err != nil {
			t.Fatalf("call %d: %v (counts %+v)", i, err, br.Counts())
		}
		open = append(open, s)
		if len(open) > up {
			_ = open[0].Close()
			open = open[1:]
		}
	}
	// A pair whose port another process held when its turn came stays
	// free (the pool skips it), so count quarantined and free together.
	for _, c := range []PoolCounts{br.Counts().LAN, br.Counts().WAN} {
		if c.InUse != up || c.Quarantined+c.Free != 500-up {
			t.Fatalf("counts %+v, want %d in use and %d quarantined or free", br.Counts(), up, 500-up)
		}
	}
	if c := br.Counts(); c.Sessions != up || c.MaxSessions() != 500 || c.Shared {
		t.Fatalf("counts %+v: %d of %d sessions, want %d of 500", c, c.Sessions, c.MaxSessions(), up)
	}
}

// TestMaxSessions: a call takes a pair of each pool, two of a shared one,
// and the smaller pool is the limit.
func TestMaxSessions(t *testing.T) {
	for _, tc := range []struct {
		c       BridgeCounts
		max     int
		limitLA bool
	}{
		{BridgeCounts{LAN: PoolCounts{Pairs: 500}, WAN: PoolCounts{Pairs: 500}}, 500, false},
		{BridgeCounts{LAN: PoolCounts{Pairs: 200}, WAN: PoolCounts{Pairs: 500}}, 200, true},
		{BridgeCounts{LAN: PoolCounts{Pairs: 900}, WAN: PoolCounts{Pairs: 500}}, 500, false},
		{BridgeCounts{LAN: PoolCounts{Pairs: 501}, WAN: PoolCounts{Pairs: 501}, Shared: true}, 250, false},
	} {
		lan, _ := tc.c.Limit()
		if got := tc.c.MaxSessions(); got != tc.max || lan != tc.limitLA {
			t.Errorf("%+v: MaxSessions %d, limit LAN %v; want %d, %v", tc.c, got, lan, tc.max, tc.limitLA)
		}
	}
	clk := newFakeClock()
	shared := testPool(lanRange, clk)
	br, err := New(Config{IO: testIO, LAN: shared, WAN: shared, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	s, err := br.NewSession("c")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c := br.Counts(); !c.Shared || c.Sessions != 1 || c.WAN.InUse != 2 || c.MaxSessions() != c.WAN.Pairs/2 {
		t.Fatalf("shared pool: %+v (max %d)", c, c.MaxSessions())
	}
}

func TestDrainZeroAllocsPerPacket(t *testing.T) {
	checkRoutines(t)
	p, _ := drainPool(t, 44722, nil)
	port := releasedPair(t, p)
	c := udp(t)
	dst := loopback(port)
	b := rtpPkt(1, 160, 7, 'x')
	var n uint64
	failed := false
	drain := func() {
		n++
		if _, err := c.WriteToUDPAddrPort(b, dst); err != nil {
			failed = true
			return
		}
		deadline := time.Now().Add(waitTimeout)
		for p.NoSessionDrops() != n {
			if time.Now().After(deadline) {
				failed = true
				return
			}
			// Not runtime.Gosched: AllocsPerRun runs on one P, and a
			// goroutine that stays runnable keeps the scheduler from
			// polling the network, so the reader would only wake on
			// sysmon's 10 ms poll. A short sleep idles the P.
			time.Sleep(20 * time.Microsecond)
		}
	}
	drain() // warm up
	allocs := testing.AllocsPerRun(200, drain)
	if failed {
		t.Fatalf("packet %d not drained", n)
	}
	if allocs != 0 {
		t.Fatalf("%.2f allocs per drained packet", allocs)
	}
}

// TestPoolCloseRacesExpiry closes pools on the system clock while their
// 1 ms quarantines are ending, for the race detector and the counts.
func TestPoolCloseRacesExpiry(t *testing.T) {
	checkRoutines(t)
	for i := range 30 {
		p := &Pool{Address: "127.0.0.1", MinPort: 44740, MaxPort: 44759,
			Quarantine: time.Millisecond, MaxQuarantine: time.Millisecond}
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		withTestIO(t, p)
		var pairs []*PortPair
		for range 10 {
			pp, err := p.Allocate()
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			pairs = append(pairs, pp)
		}
		for _, pp := range pairs {
			if err := pp.Release(); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 1 {
			waitFor(t, "some quarantine to end", func() bool { return p.Counts().Free > 0 })
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		wantCounts(t, p, PoolCounts{Free: 10})
		for _, pp := range pairs {
			wantBound(t, []uint16{pp.Port(), pp.Port() + 1}, false)
		}
	}
}
