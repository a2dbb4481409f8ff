package sdp

import (
	"net/netip"
	"testing"
)

// A typical offer from a PBX: two codecs, DTMF, ptime, rtcp.
var benchOffer = []byte("v=0\r\no=- 8000 8000 IN IP4 192.168.100.20\r\ns=Asterisk\r\nc=IN IP4 192.168.100.20\r\nt=0 0\r\n" +
	"m=audio 14000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n" +
	"a=fmtp:101 0-16\r\na=ptime:20\r\na=rtcp:14001\r\na=sendrecv\r\n")

// BenchmarkParse and BenchmarkRewrite are the per-call SDP work (once per
// offer or answer, not per packet).
func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(benchOffer); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRewrite(b *testing.B) {
	addr := netip.MustParseAddr("198.51.100.1")
	ports := map[int]int{0: 55000}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Rewrite(benchOffer, addr, ports, 2); err != nil {
			b.Fatal(err)
		}
	}
}
