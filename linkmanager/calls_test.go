package linkmanager

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// Loopback addresses standing in for the networks, so that a leak of one
// side's address into the other is visible in the text.
const (
	wanIP      = "127.0.0.1" // provider and the daemon's Internet socket
	lanIP      = "127.0.0.5" // the daemon's PBX socket
	pbxIP      = "127.0.0.6" // the PBX
	strangerIP = "127.0.0.7" // someone on the LAN who is not the PBX
)

func listenOn(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatalf("bind %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fakeProvider registers us, challenges INVITEs with 407 and answers them
// with 180 and 200 + SDP; it keeps every message it received as text.
type fakeProvider struct {
	t    *testing.T
	conn *net.UDPConn
	mu   sync.Mutex
	got  []string
}

func startFakeProvider(t *testing.T) *fakeProvider {
	p := &fakeProvider{t: t, conn: listenOn(t, wanIP)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		parser := sip.NewParser()
		for {
			n, from, err := p.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.got = append(p.got, string(buf[:n]))
			p.mu.Unlock()
			msg, err := parser.ParseSIP(buf[:n])
			if req, ok := msg.(*sip.Request); err == nil && ok {
				p.answer(req, from)
			}
		}
	}()
	t.Cleanup(func() { p.conn.Close(); <-done })
	return p
}

func (p *fakeProvider) write(res *sip.Response, to netip.AddrPort) {
	if _, err := p.conn.WriteToUDPAddrPort([]byte(res.String()), to); err != nil {
		p.t.Logf("provider write: %v", err)
	}
}

func (p *fakeProvider) answer(req *sip.Request, from netip.AddrPort) {
	res := func(code int, reason string) *sip.Response {
		r := sip.NewResponseFromRequest(req, code, reason, nil)
		if v := r.Via(); v != nil {
			v.Params.Remove("received")
			v.Params.Remove("rport")
			v.Params.Add("received", from.Addr().String())
			v.Params.Add("rport", fmt.Sprint(from.Port()))
		}
		return r
	}
	switch req.Method {
	case sip.REGISTER:
		if req.GetHeader("Authorization") == nil {
			r := res(401, "Unauthorized")
			r.AppendHeader(sip.NewHeader("WWW-Authenticate", `Digest realm="test", nonce="abc"`))
			p.write(r, from)
			return
		}
		p.write(res(200, "OK"), from)
	case sip.INVITE:
		if req.GetHeader("Proxy-Authorization") == nil {
			r := res(407, "Proxy Authentication Required")
			r.AppendHeader(sip.NewHeader("Proxy-Authenticate", `Digest realm="test", nonce="xyz"`))
			p.write(r, from)
			return
		}
		ring := res(180, "Ringing")
		ring.To().Params.Add("tag", "prov")
		ring.AppendHeader(sip.NewHeader("Record-Route", fmt.Sprintf("<sip:%s:%d;lr;secret-provider-route>", wanIP, p.port())))
		p.write(ring, from)
		// A callee rings before it answers. sipgo handles each datagram
		// in its own goroutine, so a 180 and 200 sent back to back can
		// reach the transaction in either order.
		time.Sleep(50 * time.Millisecond)
		ok := res(200, "OK")
		ok.To().Params.Add("tag", "prov")
		ok.AppendHeader(sip.NewHeader("Record-Route", fmt.Sprintf("<sip:%s:%d;lr;secret-provider-route>", wanIP, p.port())))
		ok.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: wanIP, Port: p.port()}})
		ok.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		ok.SetBody([]byte("v=0\r\no=prov 1 1 IN IP4 " + wanIP + "\r\ns=-\r\nc=IN IP4 " + wanIP +
			"\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"))
		p.write(ok, from)
	case sip.BYE, sip.OPTIONS:
		p.write(res(200, "OK"), from)
	}
}

func (p *fakeProvider) port() int { return int(p.conn.LocalAddr().(*net.UDPAddr).Port) }

func (p *fakeProvider) received(method string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.got {
		if strings.HasPrefix(m, method+" ") {
			out = append(out, m)
		}
	}
	return out
}

func startB2BUA(t *testing.T, prov *fakeProvider) (*Server, netip.AddrPort) {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	lan := sharedconn.New(listenOn(t, lanIP), log, nil)
	srv, _ := runServer(t, log, Options{
		Trunks: []trunk.Options{{Name: "provider", Host: wanIP, Port: prov.port(), Domain: "sip.provider.test",
			Username: "4930123456", Password: "secret", Expires: 300 * time.Second, Register: true,
			Keepalive: config.KeepaliveOff, DIDs: []string{"4930123456"}}},
		PBXConn: lan,
		PBX: b2bua.PBXOptions{Addr: netip.MustParseAddrPort(pbxIP + ":5060"),
			Allow: []netip.Prefix{netip.MustParsePrefix(pbxIP + "/32")}},
		Media: rtpbridge.Config{
			// RTPBRIDGE_TEST_IO=epoll runs these calls on the relay's
			// reactors, as it does the rtpbridge tests.
			IO:  os.Getenv("RTPBRIDGE_TEST_IO"),
			LAN: &rtpbridge.Pool{Address: lanIP, MinPort: 45000, MaxPort: 45199},
			WAN: &rtpbridge.Pool{Address: wanIP, MinPort: 46000, MaxPort: 46199},
		},
	})
	await(t, "registration", func() bool { return srv.Status()[0].Registered })
	return srv, lan.LocalAddrPort()
}

func pbxInvite(from netip.AddrPort, number, branch string) string {
	body := "v=0\r\no=pbx 1 1 IN IP4 " + from.Addr().String() + "\r\ns=pbx\r\nc=IN IP4 " + from.Addr().String() +
		"\r\nt=0 0\r\nm=audio 20000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
	return fmt.Sprintf("INVITE sip:%s@%s SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\n"+
		"From: \"Reception\" <sip:200@%s>;tag=pbx%s\r\n"+
		"To: <sip:%s@%s>\r\n"+
		"Call-ID: %s@%s\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"+
		"Contact: <sip:200@%s>\r\nX-Pbx-Internal: secret-lan-header\r\n"+
		"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s",
		number, lanIP, from, branch, from.Addr(), branch, number, lanIP, branch, from.Addr(), from, len(body), body)
}

// readFinal reads until a final response, returning it and the
// provisional ones before it.
func readFinal(t *testing.T, c *net.UDPConn) (string, []string) {
	t.Helper()
	var prov []string
	buf := make([]byte, 65535)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no final response: %v (provisional: %d)", err, len(prov))
		}
		s := string(buf[:n])
		if strings.HasPrefix(s, "SIP/2.0 1") {
			prov = append(prov, s)
			continue
		}
		return s, prov
	}
}

func headerOf(msg, name string) string {
	for _, l := range strings.Split(msg, "\r\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			return v
		}
	}
	return ""
}

// placeCall runs a whole outbound call from the PBX socket: INVITE, 200,
// ACK, BYE.
func placeCall(t *testing.T, prov *fakeProvider, pbx *net.UDPConn, lan netip.AddrPort, id string) {
	t.Helper()
	pAddr := pbx.LocalAddr().(*net.UDPAddr).AddrPort()
	if _, err := pbx.WriteToUDPAddrPort([]byte(pbxInvite(pAddr, "0301234567", id)), lan); err != nil {
		t.Fatal(err)
	}
	final, _ := readFinal(t, pbx)
	if !strings.HasPrefix(final, "SIP/2.0 200") {
		t.Fatalf("PBX got %q, want 200", firstLine(final))
	}
	for _, m := range []string{"ACK", "BYE"} {
		cseq := map[string]string{"ACK": "1 ACK", "BYE": "2 BYE"}[m]
		req := fmt.Sprintf("%s sip:0301234567@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s%s;rport\r\n"+
			"From: <sip:200@%s>;tag=pbx%s\r\nTo: %s\r\nCall-ID: %s@%s\r\nCSeq: %s\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
			m, lan, pAddr, m, id, pbxIP, id, headerOf(final, "To"), id, pbxIP, cseq)
		if _, err := pbx.WriteToUDPAddrPort([]byte(req), lan); err != nil {
			t.Fatal(err)
		}
	}
	if res, _ := readFinal(t, pbx); !strings.HasPrefix(res, "SIP/2.0 200") {
		t.Errorf("BYE answered %q", firstLine(res))
	}
}
