package rtpbridge

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// These are microbenchmarks: one packet in flight, so every hop costs a
// goroutine wake-up and ns/op is latency, not throughput. They are not
// comparable with the whole-process µs/pkt at 50 pps per call in
// shared/notes/perf-anchors.md; bench/ measures that shape.

// cpuNS is the process's user+system CPU time.
func cpuNS(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// reportCPU adds cpu-µs/pkt: CPU of the whole test process (sender, relay
// and receiver) per packet.
func reportCPU(b *testing.B, start int64) {
	b.ReportMetric(float64(cpuNS(b)-start)/1e3/float64(b.N), "cpu-µs/pkt")
}

// systemBridge is a bridge on the test pools and the system clock, closed
// when the benchmark ends.
func systemBridge(b *testing.B) *Bridge {
	b.Helper()
	clk := systemClock{}
	br, err := New(Config{IO: testIO, LAN: testPool(lanRange, clk), WAN: testPool(wanRange, clk)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	return br
}

// BenchmarkRelay sends a 172-byte G.711 packet from a "PBX" socket to leg A,
// and reads it at a "provider" socket after the relay forwarded it out of
// leg B; both directions alternate so all four reader paths are exercised.
func BenchmarkRelay(b *testing.B) {
	br := systemBridge(b)
	s, err := br.NewSession("bench")
	if err != nil {
		b.Fatal(err)
	}
	pbx, prov := udp(b), udp(b)
	_ = s.SetRemote(LegA, addrOf(pbx), netip.AddrPort{})
	_ = s.SetRemote(LegB, addrOf(prov), netip.AddrPort{})
	a, bb := loopback(s.LocalPort(LegA)), loopback(s.LocalPort(LegB))
	buf := make([]byte, 2048)
	deadline := time.Now().Add(10 * time.Minute)
	_ = pbx.SetReadDeadline(deadline)
	_ = prov.SetReadDeadline(deadline)
	if _, _, err := prov.ReadFromUDPAddrPort(buf); err != nil { // the pinhole
		b.Fatal(err)
	}
	pa, pb := rtpPkt(1, 160, 1, 'a'), rtpPkt(1, 160, 2, 'b')
	hop := func(seq uint16, pkt []byte, from *net.UDPConn, to netip.AddrPort, at *net.UDPConn) {
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		if _, err := from.WriteToUDPAddrPort(pkt, to); err != nil {
			b.Fatal(err)
		}
		if _, _, err := at.ReadFromUDPAddrPort(buf); err != nil {
			b.Fatal(err)
		}
	}
	hop(0, pa, pbx, a, prov) // latch both legs
	hop(0, pb, prov, bb, pbx)

	b.ReportAllocs()
	b.SetBytes(int64(len(pa)))
	cpu := cpuNS(b)
	b.ResetTimer()
	for i := range b.N {
		seq := uint16(1 + i/2) // per direction, so no gap reads as loss
		if i%2 == 0 {
			hop(seq, pa, pbx, a, prov)
		} else {
			hop(seq, pb, prov, bb, pbx)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu)
	if st := s.Stats(); st.AtoB.Lost != 0 || st.BtoA.Lost != 0 {
		b.Fatalf("loss on loopback: %+v", st)
	}
}

// BenchmarkLoopbackDirect is the same ping-pong without the relay: what the
// sender and receiver cost on their own. BenchmarkRelay minus this is the
// relay's share (one extra read, parse and write, and one extra wake-up).
func BenchmarkLoopbackDirect(b *testing.B) {
	from, to := udp(b), udp(b)
	dst := addrOf(to)
	pkt := rtpPkt(1, 160, 1, 'a')
	buf := make([]byte, 2048)
	_ = to.SetReadDeadline(time.Now().Add(10 * time.Minute))
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	cpu := cpuNS(b)
	b.ResetTimer()
	for range b.N {
		if _, err := from.WriteToUDPAddrPort(pkt, dst); err != nil {
			b.Fatal(err)
		}
		if _, _, err := to.ReadFromUDPAddrPort(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu)
}

// BenchmarkHandle is the per-packet logic without syscalls: validation,
// latch check, pion/rtp header parse, loss and jitter.
func BenchmarkHandle(b *testing.B) {
	k := bareSock(b, nil)
	pkt := rtpPkt(1, 160, 7, 'x')
	src := loopback(5004)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		seq := uint16(i)
		pkt[2], pkt[3] = byte(seq>>8), byte(seq)
		ts := uint32(i) * 160
		pkt[4], pkt[5], pkt[6], pkt[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
		k.handle(pkt, src, int64(i)*int64(20*time.Millisecond))
	}
}

// BenchmarkSessionTurnover sets up and closes one call per op on two
// 500-pair pools with the default 30 s quarantine, so after the first 500
// ops every call takes over a quarantined pair: what a burst of short
// calls costs the relay, and proof that it does not exhaust the pools.
func BenchmarkSessionTurnover(b *testing.B) {
	br := systemBridge(b)
	peer := udp(b)
	b.ReportAllocs()
	for b.Loop() {
		s, err := br.NewSession("bench")
		if err != nil {
			b.Fatal(err)
		}
		_ = s.SetRemote(LegA, addrOf(peer), netip.AddrPort{})
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c := br.Counts()
	b.ReportMetric(float64(c.WAN.Quarantined), "quarantined")
}
