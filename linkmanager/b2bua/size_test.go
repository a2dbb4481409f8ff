package b2bua

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestTooLargeForUDP: an INVITE whose relayed form is over what sipgo
// sends on UDP (sip.UDPMTUSize-200 bytes; no TCP yet) is answered 513
// Message Too Large, which tells the PBX's admin what to trim, and nothing
// reaches the provider. It was 503, which reads as a provider outage.
func TestTooLargeForUDP(t *testing.T) {
	h := newHarness(t)
	// sipgo will not send it either, so the PBX is a plain socket.
	pbx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(pbxIP)})
	if err != nil {
		t.Fatal(err)
	}
	defer pbx.Close()
	// A PBX offering every codec it has: 80 rtpmap lines.
	body := string(sdpOf(pbxIP, 30000))
	for i := range 80 {
		body += fmt.Sprintf("a=rtpmap:%d X-CODEC-%02d/8000\r\n", 20+i%70, i)
	}
	inv := fmt.Sprintf("INVITE sip:4930555@%s SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK-big1;rport\r\n"+
		"From: <sip:200@%s>;tag=big1\r\nTo: <sip:4930555@%s>\r\nCall-ID: big1@pbx\r\nCSeq: 1 INVITE\r\n"+
		"Contact: <sip:200@%s>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s",
		h.lan.addr, pbx.LocalAddr(), pbxIP, lanIP, pbx.LocalAddr(), len(body), body)
	if len(inv) <= sip.UDPMTUSize-200 {
		t.Fatalf("test INVITE is %d bytes, want over %d", len(inv), sip.UDPMTUSize-200)
	}
	if _, err := pbx.WriteTo([]byte(inv), net.UDPAddrFromAddrPort(h.lan.addr)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		_ = pbx.SetReadDeadline(time.Now().Add(wait))
		n, _, err := pbx.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no final response: %v", err)
		}
		first, _, _ := strings.Cut(string(buf[:n]), "\r\n")
		if strings.HasPrefix(first, "SIP/2.0 1") {
			continue
		}
		if first != "SIP/2.0 513 Message Too Large" {
			t.Fatalf("final response %q, want 513 Message Too Large", first)
		}
		break
	}
	if r, ok := h.prov.any(); ok {
		t.Fatalf("the provider got %s", r.Method)
	}
}
