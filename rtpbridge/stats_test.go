package rtpbridge

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestSeqLoss(t *testing.T) {
	for _, tc := range []struct {
		name     string
		seqs     []uint16
		lost     int64
		received int64
	}{
		{"in order", []uint16{10, 11, 12, 13}, 0, 4},
		{"gap", []uint16{10, 11, 14, 15}, 2, 4},
		{"wrap with gap", []uint16{65533, 65534, 65535, 0, 1, 4}, 2, 6},
		{"wrap clean", []uint16{65534, 65535, 0, 1}, 0, 4},
		{"reordered", []uint16{1, 3, 2, 4}, 0, 4},
		{"duplicate", []uint16{1, 2, 2, 3}, -1, 4},
		{"late packet after wrap", []uint16{65535, 0, 65534, 1}, -1, 4},
		// One stray jump is ignored; a jump followed by its successor is a
		// new sequence, and the loss before it is kept.
		{"stray jump", []uint16{1, 2, 30000, 4}, 1, 3},
		{"restart", []uint16{1, 3, 30000, 30001, 30002}, 1, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s seqState
			for _, q := range tc.seqs {
				s.update(q)
			}
			if got := s.lost(); got != tc.lost {
				t.Errorf("lost %d, want %d", got, tc.lost)
			}
			if got := s.priorRecv + s.received; got != tc.received {
				t.Errorf("received %d, want %d", got, tc.received)
			}
		})
	}
}

func TestSeqLossLongRunAcrossManyWraps(t *testing.T) {
	var s seqState
	seq := uint16(60000)
	dropped := 0
	for i := range 200_000 {
		if i%1000 == 500 { // never the last packet: trailing loss is invisible
			dropped++
		} else {
			s.update(seq)
		}
		seq++
	}
	if s.lost() != int64(dropped) {
		t.Fatalf("lost %d, want %d", s.lost(), dropped)
	}
}

// floatJitter is RFC 3550 6.4.1's formula, J += (|D| - J)/16, in floats.
func floatJitter(arrivalsMS []float64, ts []uint32, rate float64) float64 {
	var j float64
	for i := 1; i < len(ts); i++ {
		d := (arrivalsMS[i]-arrivalsMS[i-1])*rate/1000 - float64(int64(ts[i])-int64(ts[i-1]))
		j += (math.Abs(d) - j) / 16
	}
	return j / rate * 1000 // ms
}

func TestJitter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		delay  func(i int) float64 // network delay of packet i, ms
		wantMS float64
	}{
		{"steady", func(int) float64 { return 40 }, 0},
		{"alternating 5ms", func(i int) float64 { return float64(5 * (i % 2)) }, 5},
		{"ramp", func(i int) float64 { return float64(i % 7) }, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var j jitterState
			var arrivals []float64
			var ts []uint32
			base := uint32(math.MaxUint32 - 800) // the timestamp wraps early on
			for i := range 500 {
				a := float64(i*20) + tc.delay(i)
				arrivals = append(arrivals, a)
				ts = append(ts, base+uint32(i*160))
				j.update(base+uint32(i*160), int64(a*1e6), 8000)
			}
			got := float64(j.duration()) / float64(time.Millisecond)
			ref := floatJitter(arrivals, ts, 8000)
			if math.Abs(got-ref) > 0.25 {
				t.Fatalf("jitter %.3f ms, RFC formula %.3f ms", got, ref)
			}
			if tc.wantMS >= 0 && math.Abs(got-tc.wantMS) > 0.25 {
				t.Fatalf("jitter %.3f ms, want %.1f", got, tc.wantMS)
			}
		})
	}
}

func TestOneWay(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b Direction
		want bool
	}{
		{"no media", Direction{}, Direction{}, false},
		{"A only", Direction{Packets: 10}, Direction{}, true},
		{"B only", Direction{}, Direction{Packets: 10}, true},
		{"both", Direction{Packets: 10}, Direction{Packets: 10}, false},
		{"both, attack refused", Direction{Packets: 10, Foreign: 900, Refused: 900}, Direction{Packets: 10}, false},
		// The genuine peer was refused (or silent) and only an attacker
		// sent: nothing was relayed, but this is no quiet call.
		{"only refused traffic", Direction{}, Direction{Foreign: 907, Refused: 907}, true},
		{"only foreign traffic", Direction{Foreign: 3}, Direction{}, true},
	} {
		if got := (Stats{AtoB: tc.a, BtoA: tc.b}).OneWay(); got != tc.want {
			t.Errorf("%s: OneWay %v, want %v", tc.name, got, tc.want)
		}
	}
}

// bareSock is a receiving socket without a real conn, for the parse and
// stats path. Its SDP address is 127.0.0.1:5004 and its rule LatchIP.
func bareSock(t testing.TB, rates map[uint8]uint32) *sock {
	t.Helper()
	clk := newFakeClock()
	br, err := New(Config{LAN: testPool(lanRange, clk), WAN: testPool(wanRange, clk), Clock: clk, ClockRates: rates})
	if err != nil {
		t.Fatal(err)
	}
	s := &Session{br: br, log: zap.NewNop(), clock: clk, epoch: clk.Now(), closed: make(chan struct{})}
	k := newSock(s, LegA, kindRTP, &PortPair{})
	k.mode = LatchIP
	sdp := loopback(5004)
	k.expect.Store(&sdp)
	return k
}

func TestHandleStatsThroughParser(t *testing.T) {
	k := bareSock(t, map[uint8]uint32{8: 8000})
	src := loopback(5004)
	for i, seq := range []uint16{65534, 65535, 0, 3} {
		arrival := int64(i) * int64(20*time.Millisecond)
		if i == 3 {
			arrival += int64(20 * time.Millisecond) // on time for seq 3
		}
		b := rtpPkt(seq, uint32(seq)*160, 7, 'x')
		if !k.handle(b, src, arrival) {
			t.Fatalf("packet %d refused", seq)
		}
	}
	var d Direction
	k.addTo(&d, false)
	if d.Packets != 4 || d.Lost != 2 || d.SSRC != 7 || d.Bytes != 4*172 {
		t.Fatalf("stats %+v", d)
	}
}

func TestZeroAllocsPerPacket(t *testing.T) {
	t.Run("handle", func(t *testing.T) {
		k := bareSock(t, nil)
		b := rtpPkt(1, 160, 7, 'x')
		src := loopback(5004)
		var seq uint16
		allocs := testing.AllocsPerRun(1000, func() {
			seq++
			b[2], b[3] = byte(seq>>8), byte(seq)
			k.handle(b, src, int64(seq)*int64(20*time.Millisecond))
		})
		if allocs != 0 {
			t.Fatalf("%.1f allocs per packet", allocs)
		}
	})
	// An attacker's flood: refused by the rule, counted, its log line
	// throttled; one time, so the throttle never lets a line through.
	t.Run("refused", func(t *testing.T) {
		k := bareSock(t, nil)
		b := rtpPkt(1, 160, 0xbad, 'x')
		src := netip.AddrPortFrom(netip.AddrFrom4(attackerIP), 5004)
		k.handle(b, src, 1) // the one log line
		if allocs := testing.AllocsPerRun(1000, func() { k.handle(b, src, 2) }); allocs != 0 {
			t.Fatalf("%.1f allocs per refused packet", allocs)
		}
		var d Direction
		k.addTo(&d, false)
		if d.Refused != 1002 || d.Packets != 0 {
			t.Fatalf("stats %+v", d)
		}
	})
	// Headers shorter than their first byte says (review): 15 CSRCs in 12
	// bytes, an extension header cut off, an extension longer than the
	// packet. Dropped as malformed without an allocation: before, pion's
	// Unmarshal built an error for each.
	t.Run("truncated header", func(t *testing.T) {
		k := bareSock(t, nil)
		src := netip.AddrPortFrom(netip.AddrFrom4(attackerIP), 5004)
		for _, b := range [][]byte{
			{0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1},
			{0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde},
			{0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 9, 0, 0, 0, 0},
		} {
			if allocs := testing.AllocsPerRun(100, func() { k.handle(b, src, 2) }); allocs != 0 {
				t.Errorf("% x: %.1f allocs per packet", b, allocs)
			}
		}
		var d Direction
		k.addTo(&d, false)
		if d.Malformed != 3*101 || d.Packets != 0 {
			t.Fatalf("stats %+v, want %d malformed", d, 3*101)
		}
	})
	t.Run("loopback relay", func(t *testing.T) {
		h := newHarness(t, nil)
		h.connect()
		b := rtpPkt(1, 160, 7, 'x')
		buf := make([]byte, 2048)
		if err := h.sdp.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		var seq uint16
		relay := func() {
			seq++
			b[2], b[3] = byte(seq>>8), byte(seq)
			if _, err := h.pbx.WriteToUDPAddrPort(b, h.aRTP); err != nil {
				panic(err)
			}
			if _, _, err := h.sdp.ReadFromUDPAddrPort(buf); err != nil {
				panic(err)
			}
		}
		relay() // latches
		if allocs := testing.AllocsPerRun(500, relay); allocs != 0 {
			t.Fatalf("%.2f allocs per relayed packet", allocs)
		}
		if st := h.s.Stats().AtoB; st.Forwarded != 502 || st.Lost != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func FuzzHandlePacket(f *testing.F) {
	f.Add(rtpPkt(1, 160, 7, 'x'), uint16(5004), false)
	f.Add([]byte{0x80, 200, 0, 1, 0, 0, 0, 7}, uint16(5004), false)
	f.Add([]byte{0x90, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0}, uint16(5005), false)
	f.Add([]byte{0xaf, 8, 0, 1}, uint16(5004), true)
	f.Add([]byte{}, uint16(1), true)
	k := bareSock(f, map[uint8]uint32{0: 8000, 9: 16000, 111: 48000})
	var calls, accepted uint64
	var now int64
	f.Fuzz(func(t *testing.T, b []byte, port uint16, rtcp bool) {
		if rtcp {
			k.kind = kindRTCP
		} else {
			k.kind = kindRTP
		}
		now += int64(time.Millisecond)
		calls++
		ok := k.handle(b, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), now)
		if ok {
			accepted++
			if len(b) < 8 || b[0]>>6 != 2 {
				t.Fatalf("accepted %x", b)
			}
		}
		var d Direction
		k.addTo(&d, false)
		if d.Refused > d.Foreign {
			t.Fatalf("refused %d is not part of foreign %d", d.Refused, d.Foreign)
		}
		if got := d.Packets + d.RTCPPackets + d.Malformed + d.Foreign; got != calls {
			t.Fatalf("counters sum to %d after %d packets: %+v", got, calls, d)
		}
		if d.Packets+d.RTCPPackets != accepted {
			t.Fatalf("accepted %d, counted %d", accepted, d.Packets+d.RTCPPackets)
		}
		if d.Jitter < 0 {
			t.Fatalf("negative jitter %v", d.Jitter)
		}
	})
}
