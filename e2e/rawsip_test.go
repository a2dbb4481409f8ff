//go:build linux

package e2e

// A hand-made SIP endpoint for the hostile tests (issue 9 items 2, 3 and
// 7): what sipp cannot do, such as sending from a forged source, replaying
// a captured header or a blind ACK, or ringing for ever.

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawUA is one UDP socket inside a lab namespace that sends SIP built as
// text and keeps every SIP message it receives. respond, when set, is
// called from the reader for each one (a PBX that rings, say).
type rawUA struct {
	t       testing.TB
	conn    *net.UDPConn
	respond func(u *rawUA, m WireSIP)

	mu      sync.Mutex
	got     []WireSIP     // guarded by mu
	arrived chan struct{} // closed and replaced on each message; guarded by mu
	done    sync.WaitGroup
}

// startRawUA opens laddr in ns. The socket is closed, and the reader
// waited for, at the test's end.
func (l *Lab) startRawUA(t testing.TB, ns, laddr string, respond func(u *rawUA, m WireSIP)) *rawUA {
	t.Helper()
	conn, err := l.ListenUDP(ns, laddr)
	if err != nil {
		t.Fatalf("%s in %s: %v", laddr, ns, err)
	}
	// Room for a flood's answers while the reader is busy (the kernel
	// caps it at rmem_max).
	_ = conn.SetReadBuffer(4 << 20)
	u := &rawUA{t: t, conn: conn, respond: respond, arrived: make(chan struct{})}
	u.done.Add(1)
	go u.read()
	t.Cleanup(u.Close)
	return u
}

func (u *rawUA) read() {
	defer u.done.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		msgs := SIPMessages([]Packet{{T: time.Now(), Src: from, Dst: u.Addr(), Payload: append([]byte(nil), buf[:n]...)}})
		if len(msgs) == 0 {
			continue
		}
		u.mu.Lock()
		u.got = append(u.got, msgs[0])
		close(u.arrived)
		u.arrived = make(chan struct{})
		u.mu.Unlock()
		if u.respond != nil {
			u.respond(u, msgs[0])
		}
	}
}

// Addr is the socket's local address.
func (u *rawUA) Addr() netip.AddrPort { return u.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close ends the reader (idempotent).
func (u *rawUA) Close() {
	u.conn.Close()
	u.done.Wait()
}

// Send writes one message to dst.
func (u *rawUA) Send(dst netip.AddrPort, msg string) {
	if _, err := u.conn.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
		u.t.Errorf("send to %s: %v", dst, err)
	}
}

// Received is every message so far that pred accepts.
func (u *rawUA) Received(pred func(WireSIP) bool) []WireSIP {
	u.mu.Lock()
	defer u.mu.Unlock()
	var res []WireSIP
	for _, m := range u.got {
		if pred(m) {
			res = append(res, m)
		}
	}
	return res
}

// Await returns the first message pred accepts, waiting up to timeout.
func (u *rawUA) Await(timeout time.Duration, pred func(WireSIP) bool) (WireSIP, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		for _, m := range u.got {
			if pred(m) {
				u.mu.Unlock()
				return m, true
			}
		}
		arrived := u.arrived
		u.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			return WireSIP{}, false
		}
	}
}

// AwaitResending is Await for a request sent over UDP: like a real UA's
// Timer A it sends msg again after 0.5 s, 1 s, 2 s, then every 4 s, until
// pred accepts a message or timeout ends, so one datagram lost on a busy
// machine cannot fail the test.
func (u *rawUA) AwaitResending(timeout time.Duration, dst netip.AddrPort, msg string, pred func(WireSIP) bool) (WireSIP, bool) {
	end := time.Now().Add(timeout)
	for wait := 500 * time.Millisecond; ; wait = min(2*wait, 4*time.Second) {
		left := time.Until(end)
		if left <= 0 {
			return WireSIP{}, false
		}
		if m, ok := u.Await(min(wait, left), pred); ok {
			return m, true
		}
		u.Send(dst, msg)
	}
}

// finalFor accepts the final response to the INVITE of callID.
func finalFor(callID string) func(WireSIP) bool {
	return func(m WireSIP) bool { return m.CallID == callID && m.Code >= 200 && m.CSeqMethod() == "INVITE" }
}

// rawRequest is a SIP request the test writes by hand.
type rawRequest struct {
	Method, RURI string
	Via          netip.AddrPort // sent-by (and Contact); the branch is derived from CallID and CSeq
	From, To     string         // name-addr with tags, e.g. "<sip:200@h>;tag=x"
	CallID       string
	CSeq         int
	Headers      []string // more header lines, e.g. "Proxy-Authorization: Digest ..."
	Body         string   // SDP, if any
}

func (r rawRequest) String() string {
	var b strings.Builder
	// One branch per Call-ID and CSeq number: a non-2xx ACK shares its
	// INVITE's, as RFC 3261 §17.1.1.3 wants.
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s-%d;rport\r\n", r.Method, r.RURI, r.Via,
		strings.NewReplacer("@", "-", ".", "-").Replace(r.CallID), r.CSeq)
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n", r.From, r.To, r.CallID, r.CSeq, r.Method)
	fmt.Fprintf(&b, "Contact: <sip:%s>\r\n", r.Via)
	for _, h := range r.Headers {
		b.WriteString(h + "\r\n")
	}
	if r.Body != "" {
		b.WriteString("Content-Type: application/sdp\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(r.Body), r.Body)
	return b.String()
}

// ackOf is the ACK of a non-2xx final response to an INVITE sent to
// ruri, built from the response: the INVITE's Via (so its branch), From,
// To with the answerer's tag, Call-ID and CSeq number.
func ackOf(resp WireSIP, ruri string) string {
	num, _, _ := strings.Cut(resp.CSeq, " ")
	var b strings.Builder
	fmt.Fprintf(&b, "ACK %s SIP/2.0\r\n", ruri)
	if v := resp.Header("Via"); len(v) > 0 {
		b.WriteString("Via: " + v[0] + "\r\n")
	}
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		strings.Join(resp.Header("From"), ""), strings.Join(resp.Header("To"), ""), resp.CallID, num)
	return b.String()
}

// replyTo answers request m with code (the To gets toTag unless it has a
// tag already), copying Via, From, To, Call-ID and CSeq.
func replyTo(m WireSIP, code int, reason, toTag string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d %s\r\n", code, reason)
	for _, v := range m.Header("Via") {
		b.WriteString("Via: " + v + "\r\n")
	}
	to := strings.Join(m.Header("To"), "")
	if !strings.Contains(to, ";tag=") && toTag != "" {
		to += ";tag=" + toTag
	}
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s\r\nContent-Length: 0\r\n\r\n",
		strings.Join(m.Header("From"), ""), to, m.CallID, m.CSeq)
	return b.String()
}

// ringingPBX answers every INVITE with 100 and 180 and never more: a PBX
// whose extension rings and nobody picks up. A CANCEL gets 200 and its
// INVITE 487; any other request 200.
func ringingPBX(u *rawUA, m WireSIP) {
	switch m.Method {
	case "":
	case "INVITE":
		u.Send(m.Src, replyTo(m, 100, "Trying", ""))
		u.Send(m.Src, replyTo(m, 180, "Ringing", "ring"))
	case "CANCEL":
		u.Send(m.Src, replyTo(m, 200, "OK", "ring"))
		inv := m
		inv.CSeq = strings.Replace(m.CSeq, "CANCEL", "INVITE", 1)
		u.Send(m.Src, replyTo(inv, 487, "Request Terminated", "ring"))
	case "ACK":
	default:
		u.Send(m.Src, replyTo(m, 200, "OK", "ring"))
	}
}

// labSDP is an audio offer from ip:port (PCMA).
func labSDP(ip string, port int) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n", ip, ip, port)
}
