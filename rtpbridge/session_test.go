package rtpbridge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestRelayBothDirectionsSymmetric(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()

	pkt := rtpPkt(1, 160, 0xaaaa, 'a')
	send(t, h.pbx, pkt, h.aRTP)
	got, from := recv(t, h.sdp)
	if !bytes.Equal(got, pkt) {
		t.Fatal("A→B payload changed")
	}
	if from != h.bRTP {
		t.Fatalf("A→B sent from %s, want leg B socket %s", from, h.bRTP)
	}

	pkt = rtpPkt(7, 320, 0xbbbb, 'b')
	send(t, h.sdp, pkt, h.bRTP)
	got, from = recv(t, h.pbx)
	if !bytes.Equal(got, pkt) {
		t.Fatal("B→A payload changed")
	}
	if from != h.aRTP {
		t.Fatalf("B→A sent from %s, want leg A socket %s", from, h.aRTP)
	}

	st := h.s.Stats()
	if st.AtoB.Packets != 1 || st.BtoA.Packets != 1 || st.AtoB.Bytes != 172 || st.AtoB.Forwarded != 1 {
		t.Fatalf("stats %+v", st)
	}
	if st.AtoB.SSRC != 0xaaaa || st.BtoA.Source != addrOf(h.sdp) {
		t.Fatalf("ssrc/source %+v", st)
	}
	if st.OneWay() {
		t.Fatal("two-way call flagged one-way")
	}
}

func TestPinholeBeforeAnyInboundPacket(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.s.SetRemote(LegB, addrOf(h.sdp), addrOf(h.sdpRTCP)); err != nil {
		t.Fatal(err)
	}
	b, from := recv(t, h.sdp)
	if from != h.bRTP {
		t.Fatalf("pinhole from %s, want %s", from, h.bRTP)
	}
	var hdr rtp.Header
	n, err := hdr.Unmarshal(b)
	if err != nil || hdr.Version != 2 || hdr.PayloadType != keepalivePT || n != len(b) {
		t.Fatalf("pinhole %x is not a bare RTP header with PT %d: %+v, %v", b, keepalivePT, hdr, err)
	}
	b, from = recv(t, h.sdpRTCP)
	if from != h.bRTCP {
		t.Fatalf("RTCP pinhole from %s, want %s", from, h.bRTCP)
	}
	if len(b) != 8 || b[0] != 0x80 || b[1] != 201 || binary.BigEndian.Uint16(b[2:]) != 1 {
		t.Fatalf("RTCP pinhole %x is not an empty RR", b)
	}
	// Same address again (a session refresh): no new pinhole, no relatch.
	if err := h.s.SetRemote(LegB, addrOf(h.sdp), addrOf(h.sdpRTCP)); err != nil {
		t.Fatal(err)
	}
	noPacket(t, h.sdp)
	// Leg A is on the LAN: no pinhole towards the PBX.
	if err := h.s.SetRemote(LegA, addrOf(h.pbx), addrOf(h.pbxRTCP)); err != nil {
		t.Fatal(err)
	}
	noPacket(t, h.pbx)
}

func TestLatchNATedSourceAndDropForeign(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()

	// Before latching, leg B sends to the SDP address.
	send(t, h.pbx, rtpPkt(1, 160, 1, 'x'), h.aRTP)
	recv(t, h.sdp)

	// The provider's media comes from another port than its SDP says.
	send(t, h.nat, rtpPkt(100, 1600, 0xfeed, 'n'), h.bRTP)
	recv(t, h.pbx)
	send(t, h.pbx, rtpPkt(2, 320, 1, 'y'), h.aRTP)
	got, from := recv(t, h.nat)
	if got[12] != 'y' || from != h.bRTP {
		t.Fatalf("after latching, A→B went elsewhere (got %q from %s)", got[12], from)
	}
	noPacket(t, h.sdp)

	// A third party, even with the SDP address and the same SSRC, is dropped.
	send(t, h.sdp, rtpPkt(101, 1760, 0xfeed, 'f'), h.bRTP)
	foreign := udp(t)
	send(t, foreign, rtpPkt(5, 5, 0xbad, 'f'), h.bRTP)
	send(t, h.nat, rtpPkt(102, 1920, 0xfeed, 'm'), h.bRTP)
	got, _ = recv(t, h.pbx)
	if got[12] != 'm' {
		t.Fatalf("foreign packet %q reached the PBX", got[12])
	}
	st := h.s.Stats()
	if st.BtoA.Foreign != 2 || st.BtoA.Packets != 2 || st.BtoA.Source != addrOf(h.nat) {
		t.Fatalf("stats %+v", st.BtoA)
	}
}

func TestSetRemoteChangeRelatches(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	send(t, h.nat, rtpPkt(1, 160, 1, 'a'), h.bRTP)
	recv(t, h.pbx)

	// A re-INVITE moves the provider's media; the old latch is dropped, and
	// the new address gets a pinhole.
	moved, movedNAT := udp(t), udp(t)
	if err := h.s.SetRemote(LegB, addrOf(moved), addrOf(h.sdpRTCP)); err != nil {
		t.Fatal(err)
	}
	if _, from := recv(t, moved); from != h.bRTP {
		t.Fatal("no pinhole to the new address")
	}
	send(t, movedNAT, rtpPkt(1, 160, 1, 'b'), h.bRTP) // same SSRC, new source
	if got, _ := recv(t, h.pbx); got[12] != 'b' {
		t.Fatal("new source not latched after SDP change")
	}
	send(t, h.nat, rtpPkt(2, 320, 1, 'c'), h.bRTP)
	waitFor(t, "old source dropped", func() bool { return h.s.Stats().BtoA.Foreign == 1 })
}

func TestRTCPRelayed(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	sr := []byte{0x80, 200, 0, 6, 0, 0, 0xaa, 0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22}
	send(t, h.pbxRTCP, sr, h.aRTCP)
	got, from := recv(t, h.sdpRTCP)
	if !bytes.Equal(got, sr) || from != h.bRTCP {
		t.Fatalf("RTCP A→B: %x from %s", got, from)
	}
	rr := []byte{0x80, 201, 0, 1, 0, 0, 0xbb, 0xbb}
	send(t, h.natRTCP, rr, h.bRTCP)
	got, from = recv(t, h.pbxRTCP)
	if !bytes.Equal(got, rr) || from != h.aRTCP {
		t.Fatalf("RTCP B→A: %x from %s", got, from)
	}
	// rtcp-mux: RTCP on the RTP port is relayed but kept out of RTP stats.
	send(t, h.pbx, sr, h.aRTP)
	if got, _ := recv(t, h.sdp); !bytes.Equal(got, sr) {
		t.Fatal("muxed RTCP not relayed")
	}
	st := h.s.Stats()
	if st.AtoB.RTCPPackets != 2 || st.AtoB.Packets != 0 || st.BtoA.RTCPPackets != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMalformedDropped(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	bad := [][]byte{
		{},
		{0x80, 8, 0},
		{0x40, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0}, // version 1
		{0x80, 8, 0, 1, 0, 0, 0, 0, 0, 0, 1},       // 11 bytes
		{0x8f, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0}, // 15 CSRCs announced, none there
		{0x90, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1},    // extension bit, no extension
		make([]byte, bufSize+100),                  // would be truncated
	}
	for _, b := range bad {
		send(t, h.pbx, b, h.aRTP)
	}
	send(t, h.pbxRTCP, []byte{0x00, 201, 0, 1, 0, 0, 0, 0}, h.aRTCP) // RTCP version 0
	send(t, h.pbx, rtpPkt(1, 160, 1, 'g'), h.aRTP)
	if got, _ := recv(t, h.sdp); got[12] != 'g' {
		t.Fatal("malformed packet forwarded")
	}
	waitFor(t, "RTCP malformed counted", func() bool { return h.s.Stats().AtoB.Malformed == uint64(len(bad)+1) })
	if st := h.s.Stats().AtoB; st.Packets != 1 || st.Source != addrOf(h.pbx) {
		t.Fatalf("stats %+v", st)
	}
}

func TestHoldZeroAddressStopsSending(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	send(t, h.pbx, rtpPkt(1, 160, 1, 'a'), h.aRTP)
	recv(t, h.sdp)

	// The PBX holds with c=0.0.0.0: nothing goes to it, but its latch stays.
	hold := netip.AddrPortFrom(netip.IPv4Unspecified(), addrOf(h.pbx).Port())
	if err := h.s.SetRemote(LegA, hold, hold); err != nil {
		t.Fatal(err)
	}
	send(t, h.nat, rtpPkt(1, 160, 2, 'm'), h.bRTP)
	waitFor(t, "unsent counted", func() bool { return h.s.Stats().BtoA.Unsent == 1 })
	noPacket(t, h.pbx)
	send(t, h.pbx, rtpPkt(2, 320, 1, 'b'), h.aRTP) // still accepted from the latched PBX
	recv(t, h.nat)

	if err := h.s.SetRemote(LegA, addrOf(h.pbx), addrOf(h.pbxRTCP)); err != nil {
		t.Fatal(err)
	}
	send(t, h.nat, rtpPkt(2, 320, 2, 'r'), h.bRTP)
	if got, _ := recv(t, h.pbx); got[12] != 'r' {
		t.Fatal("no media after resume")
	}
	if st := h.s.Stats().AtoB; st.Foreign != 0 {
		t.Fatalf("resume relatched: %+v", st)
	}
}

func TestMediaTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()

	// Ringing without media is not a media timeout.
	h.clk.Advance(2 * DefaultMediaTimeout)
	assertNoTimeout(t, h)

	h.s.Established()
	h.clk.Advance(DefaultMediaTimeout - time.Second)
	assertNoTimeout(t, h)
	h.clk.Advance(time.Second)
	if s := <-h.timeouts; s != h.s {
		t.Fatal("OnTimeout got another session")
	}
	h.clk.Advance(10 * DefaultMediaTimeout)
	assertNoTimeout(t, h) // once only
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseFromOnTimeout(t *testing.T) {
	closed := make(chan error, 1)
	h := newHarness(t, func(c *Config) {
		c.OnTimeout = func(s *Session) { closed <- s.Close() }
	})
	h.connect()
	h.s.Established()
	h.clk.Advance(DefaultMediaTimeout) // runs OnTimeout, and so Close, inline
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if c := h.br.cfg.WAN.Counts(); c.InUse != 0 || c.Quarantined != 1 {
		t.Fatalf("WAN pool %+v", c)
	}
}

func TestMediaTimeoutNotWhileMediaFlows(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	h.s.Established()
	// Both directions flowing keep the call, RTCP as well as RTP.
	for i := range 5 {
		h.clk.Advance(DefaultMediaTimeout / 2)
		send(t, h.nat, rtpPkt(uint16(i), uint32(i)*160, 2, 'm'), h.bRTP)
		recv(t, h.pbx)
		if i%2 == 0 {
			send(t, h.pbx, rtpPkt(uint16(i), uint32(i)*160, 1, 'p'), h.aRTP)
			recvMedia(t, h.nat) // the latched source, not the SDP's address
		} else {
			send(t, h.pbxRTCP, []byte{0x80, 201, 0, 1, 0, 0, 0, 1}, h.aRTCP) // an RR: alive, silent
			recv(t, h.sdpRTCP)
		}
	}
	assertNoTimeout(t, h)
	h.clk.Advance(DefaultMediaTimeout - time.Millisecond)
	assertNoTimeout(t, h)
	h.clk.Advance(time.Millisecond)
	<-h.timeouts
}

// recvMedia is recv that skips the relay's keepalives, which an Advance
// of the fake clock may have queued first.
func recvMedia(t *testing.T, c *net.UDPConn) []byte {
	t.Helper()
	for {
		b, _ := recv(t, c)
		if len(b) < 2 || b[1]&0x7f != keepalivePT {
			return b
		}
	}
}

// TestMediaTimeoutOneDeadDirection (issue 9 item 10): the provider leg
// died while the PBX streams on; the call must end after media_timeout of
// that silence, not stay up for ever. On hold the silent direction is the
// held one's choice, and one live direction keeps the call.
func TestMediaTimeoutOneDeadDirection(t *testing.T) {
	for _, hold := range []bool{false, true} {
		h := newHarness(t, nil)
		h.connect()
		h.s.Established()
		send(t, h.nat, rtpPkt(1, 160, 2, 'n'), h.bRTP) // the provider leg spoke once
		recv(t, h.pbx)
		if hold {
			h.s.SetHold(true)
		}
		for i := range 4 { // the PBX streams on for two media timeouts
			h.clk.Advance(DefaultMediaTimeout / 2)
			send(t, h.pbx, rtpPkt(uint16(i), uint32(i)*160, 1, 'p'), h.aRTP)
			recvMedia(t, h.nat)
			if !hold && i == 1 {
				// One media timeout after the provider leg's last packet;
				// the fake clock has fired it inside Advance.
				select {
				case <-h.timeouts:
				default:
					t.Fatal("the PBX streams into a dead provider leg, and the call stays up")
				}
				break
			}
		}
		if hold {
			assertNoTimeout(t, h)
		}
		_ = h.s.Close()
	}
}

func TestHoldTimeout(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.HoldTimeout = 10 * time.Minute })
	h.connect()
	h.s.Established()
	h.s.SetHold(true)
	h.clk.Advance(10*time.Minute - time.Second)
	assertNoTimeout(t, h)
	h.clk.Advance(time.Second)
	<-h.timeouts
}

func assertNoTimeout(t *testing.T, h *harness) {
	t.Helper()
	select {
	case <-h.timeouts:
		t.Fatal("unexpected media timeout")
	default:
	}
}

func TestKeepaliveWhileWANIdle(t *testing.T) {
	h := newHarness(t, nil)
	h.connect() // the pinhole was sent at t=0
	h.s.SetHold(true)

	h.clk.Advance(DefaultKeepaliveInterval - time.Millisecond)
	noPacket(t, h.sdp)
	h.clk.Advance(time.Millisecond)
	b, from := recv(t, h.sdp)
	if from != h.bRTP || len(b) != 12 || b[1] != keepalivePT {
		t.Fatalf("keepalive %x from %s", b, from)
	}

	// Relayed media counts as traffic: no keepalive while the PBX talks.
	h.clk.Advance(DefaultKeepaliveInterval / 2)
	send(t, h.pbx, rtpPkt(1, 160, 1, 'a'), h.aRTP)
	recv(t, h.sdp)
	h.clk.Advance(DefaultKeepaliveInterval/2 + time.Millisecond)
	noPacket(t, h.sdp)

	// Keepalives go to the latched source and survive a 0.0.0.0 hold.
	send(t, h.nat, rtpPkt(1, 160, 2, 'n'), h.bRTP)
	recv(t, h.pbx)
	zero := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	if err := h.s.SetRemote(LegB, zero, zero); err != nil {
		t.Fatal(err)
	}
	h.clk.Advance(DefaultKeepaliveInterval)
	b2, _ := recv(t, h.nat)
	if b2[1] != keepalivePT || binary.BigEndian.Uint16(b2[2:]) != binary.BigEndian.Uint16(b[2:])+1 {
		t.Fatalf("second keepalive %x after %x", b2, b)
	}
}

func TestCloseIdempotentAndLeakFree(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	send(t, h.pbx, rtpPkt(1, 160, 1, 'a'), h.aRTP)
	recv(t, h.sdp)
	if err := h.s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-h.s.Done():
	default:
		t.Fatal("Done not closed")
	}
	if err := h.s.SetRemote(LegA, addrOf(h.pbx), addrOf(h.pbxRTCP)); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("SetRemote after Close: %v", err)
	}
	if st := h.s.Stats(); st.AtoB.Packets != 1 {
		t.Fatalf("stats lost on close: %+v", st)
	}
	if h.br.Active() != 0 {
		t.Fatal("session still tracked")
	}
	// checkRoutines (in newHarness) verifies the readers are gone.
}

func TestPortsFreedAfterSessionsClose(t *testing.T) {
	checkRoutines(t)
	clk := newFakeClock()
	lan, wan := testPool(lanRange, clk), testPool(wanRange, clk)
	br, err := New(Config{IO: testIO, LAN: lan, WAN: wan, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	pbx := udp(t)
	var open []*Session
	for i := range 20 {
		s, err := br.NewSession("c")
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
		_ = s.SetRemote(LegA, addrOf(pbx), addrOf(pbx))
		if i%2 == 0 {
			_ = s.SetRemote(LegB, addrOf(pbx), addrOf(pbx))
		}
	}
	if lan.Counts().InUse != 20 || wan.Counts().InUse != 20 || br.Active() != 20 {
		t.Fatalf("counts %+v %+v", lan.Counts(), wan.Counts())
	}
	for i, s := range open {
		if i < 10 {
			_ = s.Close()
		}
	}
	for _, p := range []*Pool{lan, wan} {
		if c := states(p.Counts()); c != (PoolCounts{InUse: 10, Quarantined: 10, Free: 480}) {
			t.Fatalf("after closing half %+v", c)
		}
	}
	clk.Advance(DefaultQuarantine)
	for _, p := range []*Pool{lan, wan} {
		if c := states(p.Counts()); c != (PoolCounts{InUse: 10, Free: 490}) {
			t.Fatalf("after quarantine %+v", c)
		}
	}
	// Bridge.Close closes the other ten sessions and then the pools, which
	// ends their quarantine: nothing stays bound or quarantined.
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Pool{lan, wan} {
		if c := states(p.Counts()); c != (PoolCounts{Free: 500}) {
			t.Fatalf("after Bridge.Close %+v", c)
		}
	}
	if _, err := br.NewSession("late"); !errors.Is(err, ErrBridgeClosed) {
		t.Fatalf("NewSession after Close: %v", err)
	}
}

func TestBridgePoolExhaustionAndRecovery(t *testing.T) {
	checkRoutines(t)
	br, lan, clk := oneWANPairBridge(t, 44600)
	s, err := br.NewSession("first")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := br.NewSession("busy"); !errors.Is(err, ErrPoolExhausted) {
			t.Fatalf("err %v, want ErrPoolExhausted", err)
		}
	}
	// The LAN pairs of the refused calls went straight back.
	if c := states(lan.Counts()); c != (PoolCounts{InUse: 1, Free: 499}) {
		t.Fatalf("LAN pool leaked: %+v", c)
	}
	// A closed call's pair is quarantined, which no longer holds up the
	// next call: it takes the pair over at once.
	port := s.LocalPort(LegB)
	_ = s.Close()
	s, err = br.NewSession("recovered")
	if err != nil {
		t.Fatalf("with the pair quarantined: %v", err)
	}
	if s.LocalPort(LegB) != port {
		t.Fatalf("port %d, want %d", s.LocalPort(LegB), port)
	}
	_ = s.Close()
	clk.Advance(DefaultQuarantine)
	if c := states(br.Counts().WAN); c != (PoolCounts{Free: 1}) {
		t.Fatalf("WAN pool after the quarantine %+v", c)
	}
}

func TestConfigValidation(t *testing.T) {
	good := func() Config {
		return Config{LAN: testPool(lanRange, nil), WAN: testPool(wanRange, nil)}
	}
	for name, mod := range map[string]func(*Config){
		"no LAN":           func(c *Config) { c.LAN = nil },
		"bad WAN":          func(c *Config) { c.WAN = &Pool{} },
		"negative timeout": func(c *Config) { c.MediaTimeout = -1 },
		"payload type":     func(c *Config) { c.ClockRates = map[uint8]uint32{200: 8000} },
		"unknown IO":       func(c *Config) { c.IO = "poll" },
		"reactors":         func(c *Config) { c.IO, c.Reactors = IOEpoll, -1 },
	} {
		cfg := good()
		mod(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := New(good()); err != nil {
		t.Fatal(err)
	}
	if reactorSupported {
		// A pool serves the reactors of one bridge only.
		cfg := good()
		cfg.IO = IOEpoll
		br, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer br.Close()
		if other, err := New(Config{IO: IOEpoll, LAN: cfg.LAN, WAN: testPool(wanRange, nil)}); !errors.Is(err, ErrInvalidConfig) {
			if other != nil {
				_ = other.Close()
			}
			t.Fatalf("a second bridge on the same pool: %v, want ErrInvalidConfig", err)
		}
	}
}

func TestStatsLogLine(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	h := newHarness(t, func(c *Config) { c.Logger = zap.New(core) })
	h.connect()
	send(t, h.pbx, rtpPkt(1, 160, 1, 'a'), h.aRTP)
	recv(t, h.sdp)
	_ = h.s.Close()
	entries := logs.FilterMessage("session closed").All()
	if len(entries) != 1 || entries[0].LoggerName != "rtpbridge" {
		t.Fatalf("entries %+v", logs.All())
	}
	ctx := entries[0].ContextMap()
	media, ok := ctx["media"].(map[string]any)
	if !ok || ctx["call_id"] != "call-1" || media["one_way"] != true {
		t.Fatalf("fields %+v", ctx)
	}
	if ab := media["a_to_b"].(map[string]any); ab["packets"] != uint64(1) || ab["dropped_foreign"] != uint64(0) {
		t.Fatalf("a_to_b %+v", ab)
	}
}

// T.38 over UDPTL is not RTP: in raw mode any datagram is relayed (both
// ways) and counts as activity, where RTP mode drops it as malformed.
func TestRawModeRelaysUDPTL(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	udptl := []byte{0x00, 0x00, 0x06, 0x40, 0x01, 0x80} // seq 0, an IFP: first byte 0, no RTP version
	send(t, h.pbx, udptl, h.aRTP)
	waitFor(t, "UDPTL counted as malformed in RTP mode", func() bool { return h.s.Stats().AtoB.Malformed == 1 })
	noPacket(t, h.sdp)

	h.s.SetRaw(true)
	send(t, h.pbx, udptl, h.aRTP)
	if got, _ := recv(t, h.sdp); string(got) != string(udptl) {
		t.Fatalf("relayed %x, want the UDPTL datagram unchanged", got)
	}
	send(t, h.nat, []byte{0x00, 0x01, 0x02}, h.bRTP)
	if got, _ := recv(t, h.pbx); len(got) != 3 {
		t.Fatalf("reverse direction relayed %x", got)
	}
	if st := h.s.Stats(); st.AtoB.Packets != 1 || st.BtoA.Packets != 1 || st.AtoB.Malformed != 1 {
		t.Errorf("stats %+v", st)
	}
}

// oneWANPairBridge is a bridge whose Internet pool holds exactly one
// RTP/RTCP pair (port, port+1) on a fake clock, so the second call
// exhausts it; Close is registered on t.
func oneWANPairBridge(t *testing.T, port uint16) (*Bridge, *Pool, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	lan := testPool(lanRange, clk)
	wan := &Pool{Address: "127.0.0.1", MinPort: port, MaxPort: port + 1, Clock: clk}
	br, err := New(Config{IO: testIO, LAN: lan, WAN: wan, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	return br, lan, clk
}
