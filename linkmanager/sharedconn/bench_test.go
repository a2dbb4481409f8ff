package sharedconn

import (
	"net"
	"net/netip"
	"runtime"
	"testing"

	"github.com/pion/stun/v3"
)

// BenchmarkClassify is the demux's per-datagram decision on the SIP socket
// (issue 10: 0 allocations per packet).
func BenchmarkClassify(b *testing.B) {
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"invite", []byte("INVITE sip:4930123456@198.51.100.1:65002 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50\r\n\r\n")},
		{"response", []byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1:65002\r\n\r\n")},
		{"stun", stun.MustBuild(stun.TransactionID, stun.BindingSuccess).Raw},
		{"crlf", []byte("\r\n\r\n")},
		{"garbage", []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if classify(c.pkt) == 255 {
					b.Fatal("unreachable")
				}
			}
		})
	}
}

// BenchmarkSharedConnDrop is a stranger's datagram through ReadFrom over a
// real loopback socket: read, classify, filter, count, drop. This is the
// path a scanner flood takes.
func BenchmarkSharedConnDrop(b *testing.B) {
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	c := New(sock, nil, nil)
	defer c.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	c.SetRequestFilter(func(from netip.AddrPort) bool { return false })
	invite := []byte("INVITE sip:+90555@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9\r\n\r\n")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		_, _, _ = c.ReadFrom(buf) // returns only on Close
	}()
	dst := sock.LocalAddr().(*net.UDPAddr).AddrPort()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := peer.WriteToUDPAddrPort(invite, dst); err != nil {
			b.Fatal(err)
		}
		for i%64 == 63 && c.Stats().DroppedSource < uint64(i+1)*9/10 {
			runtime.Gosched() // keep the receive buffer from overflowing
		}
	}
	c.Close()
	<-done
	b.ReportMetric(float64(c.Stats().DroppedSource)/float64(b.N), "dropped/op")
}
