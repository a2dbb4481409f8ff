package sharedconn

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readOne reads one datagram through the Conn with a deadline, so a
// wrongly swallowed packet fails the test instead of hanging it.
func readOne(t *testing.T, c *Conn) (string, net.Addr, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFrom(buf)
	return string(buf[:n]), from, err
}

func TestSharedConnDemux(t *testing.T) {
	sock := listenLoopback(t)
	c := New(sock, nil, nil)
	provider, stranger := listenLoopback(t), listenLoopback(t)
	providerAddr := provider.LocalAddr().(*net.UDPAddr).AddrPort()
	c.SetRequestFilter(func(from netip.AddrPort) bool { return from == providerAddr })

	var stunSeen atomic.Int32
	var stunFrom netip.AddrPort
	c.SetSTUNHandler(func(b []byte, from netip.AddrPort) bool {
		stunSeen.Add(1)
		stunFrom = from
		return true
	})
	dst := sock.LocalAddr()
	send := func(from *net.UDPConn, b []byte) {
		t.Helper()
		if _, err := from.WriteTo(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	invite := []byte("INVITE sip:4930123456@198.51.100.1:65002 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.50\r\n\r\n")
	binding := stun.MustBuild(stun.TransactionID, stun.BindingSuccess).Raw

	// Everything the SIP stack must not see, then one request it must:
	// reads return only that request, in order.
	send(provider, binding)
	send(provider, []byte("\r\n\r\n"))
	send(stranger, invite) // toll-fraud scanner: silently dropped
	send(provider, []byte("\x16\x03\x01 garbage"))
	send(provider, []byte("GET / HTTP/1.1\r\n"))
	send(provider, invite)
	send(stranger, []byte("SIP/2.0 200 OK\r\nforged\r\n\r\n")) // a stranger's response: dropped too
	send(provider, []byte("SIP/2.0 200 OK\r\n\r\n"))           // the provider's passes; sipgo matches it

	got, from, err := readOne(t, c)
	if err != nil || got != string(invite) || from.String() != providerAddr.String() {
		t.Fatalf("first read = %q from %v (%v), want the provider's INVITE", got, from, err)
	}
	if got, _, err := readOne(t, c); err != nil || got != "SIP/2.0 200 OK\r\n\r\n" {
		t.Fatalf("second read = %q (%v), want the provider's response (not the stranger's)", got, err)
	}
	s := c.Stats()
	if stunSeen.Load() != 1 || stunFrom != providerAddr || s.STUNIn != 1 || s.KeepalivesIn != 1 ||
		s.DroppedSource != 2 || s.DroppedMalformed != 2 {
		t.Errorf("stats = %+v, stun handler calls = %d", s, stunSeen.Load())
	}
	if s.SIPIn != 2 {
		t.Errorf("SIPIn = %d, want 2", s.SIPIn)
	}
}

func TestSharedConnSendTracksFlows(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	c := New(listenLoopback(t), nil, func() time.Time { return now })
	peer := listenLoopback(t).LocalAddr().(*net.UDPAddr).AddrPort()
	var hooked netip.AddrPort
	c.SetOnSend(func(to netip.AddrPort) { hooked = to })
	if !c.LastSent(peer).IsZero() {
		t.Fatal("fresh flow has a send time")
	}
	if _, err := c.WriteTo([]byte("OPTIONS"), net.UDPAddrFromAddrPort(peer)); err != nil {
		t.Fatal(err)
	}
	if c.LastSent(peer) != now || hooked != peer {
		t.Errorf("LastSent = %v, hook saw %v", c.LastSent(peer), hooked)
	}
	other := netip.MustParseAddrPort("127.0.0.1:9")
	if !c.LastSent(other).IsZero() {
		t.Error("a send to one flow counted for another: keepalives would skip the registrar")
	}
}

// flakyConn fails reads the way a real socket sometimes does (ICMP
// errors surfacing as ECONNREFUSED, ENOBUFS) before delivering a packet.
type flakyConn struct {
	*net.UDPConn
	failures atomic.Int32
}

func (f *flakyConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	if f.failures.Add(-1) >= 0 {
		return 0, netip.AddrPort{}, &net.OpError{Op: "read", Net: "udp", Err: syscall.ECONNREFUSED}
	}
	return f.UDPConn.ReadFromUDPAddrPort(b)
}

func TestSharedConnAbsorbsTransientReadErrors(t *testing.T) {
	sock := listenLoopback(t)
	flaky := &flakyConn{UDPConn: sock}
	flaky.failures.Store(5)
	core, logs := observer.New(zap.InfoLevel)
	c := New(flaky, zap.New(core), nil)
	peer := listenLoopback(t)
	if _, err := peer.WriteTo([]byte("SIP/2.0 200 OK\r\n\r\n"), sock.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	// sipgo ends its listener on any error but net.ErrClosed, so the
	// errors must never reach it.
	got, _, err := readOne(t, c)
	if err != nil || got != "SIP/2.0 200 OK\r\n\r\n" {
		t.Fatalf("read = %q, %v; want the packet after the errors", got, err)
	}
	if n := c.Stats().ReadErrors; n != 5 {
		t.Errorf("ReadErrors = %d, want 5", n)
	}
	// One line for the burst, not one per error.
	if n := logs.FilterMessage("socket read error absorbed").Len(); n != 1 {
		t.Errorf("%d log lines for 5 read errors, want 1", n)
	}
	c.Close()
	if _, _, err := readOne(t, c); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close = %v, want net.ErrClosed so sipgo stops cleanly", err)
	}
}

func TestClassify(t *testing.T) {
	binding := stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw
	noCookie := append([]byte(nil), binding...)
	copy(noCookie[4:8], []byte{1, 2, 3, 4})
	for _, tc := range []struct {
		name string
		in   []byte
		want packetKind
	}{
		{"stun", binding, kindSTUN},
		{"stun without cookie", noCookie, kindGarbage},
		{"short binary", []byte{0, 1, 0}, kindGarbage},
		{"empty", nil, kindGarbage},
		{"crlf ping", []byte("\r\n\r\n"), kindKeepalive},
		{"single crlf", []byte("\r\n"), kindKeepalive},
		{"zero padding", []byte{0, 0, 0, 0}, kindGarbage},
		{"response", []byte("SIP/2.0 180 Ringing\r\n"), kindResponse},
		{"invite", []byte("INVITE sip:a@b SIP/2.0\r\n"), kindRequest},
		{"http", []byte("GET / HTTP/1.1\r\n"), kindGarbage},
		{"no line end", []byte("INVITE sip:a@b SIP/2.0"), kindGarbage},
		{"lowercase method", []byte("invite sip:a@b SIP/2.0\r\n"), kindGarbage},
		{"leading space", []byte(" INVITE sip:a@b"), kindGarbage},
		{"rtp", []byte{0x80, 0x08, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, kindGarbage},
		{"tls", []byte{0x16, 0x03, 0x01, 0x00}, kindGarbage},
		{"endless token", []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), kindGarbage},
	} {
		if got := classify(tc.in); got != tc.want {
			t.Errorf("%s: classify = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func FuzzClassify(f *testing.F) {
	f.Add([]byte("INVITE sip:a@b SIP/2.0\r\n"))
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw)
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k := classify(b)
		if k == kindRequest && (len(b) == 0 || b[0] < 'A' || b[0] > 'Z') {
			t.Errorf("%q classified as a request", b)
		}
	})
}

// The watchdog's liveness check must hold between two reads: right after
// ReadFrom hands sipgo a message the reader is outside ReadFrom, and on a
// busy socket two samples in a row can land there. Only a reader that has
// not come back for the stall time is dead.
func TestSharedConnListeningBetweenReads(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC).UnixNano())
	sock := listenLoopback(t)
	c := New(sock, nil, func() time.Time { return time.Unix(0, now.Load()) })
	const stall = 10 * time.Second
	if c.Listening(stall) {
		t.Fatal("listening before the first read")
	}
	peer := listenLoopback(t)
	if _, err := peer.WriteTo([]byte("SIP/2.0 200 OK\r\n\r\n"), sock.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readOne(t, c); err != nil {
		t.Fatal(err)
	}
	// The SIP stack is handling the message, not in ReadFrom.
	if !c.Listening(stall) {
		t.Error("not listening right after handing over a message: the watchdog would kill a healthy daemon")
	}
	now.Add(int64(stall - time.Second))
	if !c.Listening(stall) {
		t.Error("not listening within the stall time")
	}
	now.Add(int64(2 * time.Second))
	if c.Listening(stall) {
		t.Error("still listening after the reader stayed away for longer than the stall time: a wedged reader would never be restarted")
	}
	// Back in ReadFrom: alive again however long ago the last message was.
	done := make(chan struct{})
	go func() { defer close(done); _, _, _ = readOne(t, c) }()
	deadline := time.Now().Add(5 * time.Second)
	for !c.Listening(stall) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !c.Listening(stall) {
		t.Error("not listening while inside ReadFrom")
	}
	c.Close()
	<-done
}

// A SIP message over RFC 3261's UDP limit is sent (there is no TCP yet)
// but counted, and logged once, not once per message.
func TestSharedConnCountsLargeDatagrams(t *testing.T) {
	sock := listenLoopback(t)
	core, logs := observer.New(zap.InfoLevel)
	c := New(sock, zap.New(core), nil)
	defer c.Close()
	peer := listenLoopback(t)
	dst := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, size := range []int{LargeDatagram, LargeDatagram + 1, 4000} {
		if err := c.Send(make([]byte, size), dst); err != nil {
			t.Fatalf("send %d bytes: %v", size, err)
		}
		buf := make([]byte, 8192)
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, _, err := peer.ReadFrom(buf); err != nil || n != size {
			t.Fatalf("peer got %d bytes (%v), want %d", n, err, size)
		}
	}
	if n := c.Stats().LargeSent; n != 2 {
		t.Errorf("LargeSent = %d, want 2 (the %d-byte one is within the limit)", n, LargeDatagram)
	}
	if l := logs.FilterMessageSnippet("SIP message over UDP").All(); len(l) != 1 || !strings.Contains(l[0].Message, "1301-byte") {
		t.Errorf("log lines %v, want one naming the first large message", l)
	}
}

// A Content-Length other than the body is what an ALG that edits SDP
// without fixing the header leaves; it is counted (and still handed on),
// and scanning for it allocates nothing.
func TestLengthMismatch(t *testing.T) {
	const sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\n"
	msg := func(hdr string, body string) []byte {
		return []byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1:65002\r\n" + hdr + "\r\n\r\n" + body)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"exact", msg("Content-Length: 32", sdp), false},
		{"compact form", msg("l:32", sdp), false},
		{"lower case, spaces", msg("content-length :  32 ", sdp), false},
		{"no body", msg("Content-Length: 0", ""), false},
		{"trailing CRLF padding", msg("Content-Length: 32", sdp+"\r\n"), false},
		{"no header", msg("CSeq: 1 REGISTER", sdp), false},
		{"not a number", msg("Content-Length: many", sdp), false},
		{"no blank line", []byte("SIP/2.0 200 OK\r\nContent-Length: 5\r\n"), false},
		{"body grew (address made longer)", msg("Content-Length: 32", sdp+"x=1\r\n"), true},
		{"body shrank", msg("Content-Length: 40", sdp), true},
		{"compact, wrong", msg("l: 3", sdp), true},
		{"huge", msg("Content-Length: 99999999999", sdp), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := lengthMismatch(tc.b); got != tc.want {
				t.Errorf("lengthMismatch(%q) = %v, want %v", tc.b, got, tc.want)
			}
		})
	}
	b := msg("Content-Length: 40", sdp)
	if a := testing.AllocsPerRun(100, func() { lengthMismatch(b) }); a != 0 {
		t.Errorf("%v allocations per datagram", a)
	}

	sock := listenLoopback(t)
	c := New(sock, nil, nil)
	provider := listenLoopback(t)
	c.SetRequestFilter(func(netip.AddrPort) bool { return true })
	for _, m := range [][]byte{msg("Content-Length: 32", sdp), msg("Content-Length: 40", sdp)} {
		if _, err := provider.WriteTo(m, sock.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readOne(t, c); err != nil {
			t.Fatal(err)
		}
	}
	if s := c.Stats(); s.LengthMismatch != 1 || s.SIPIn != 2 {
		t.Errorf("stats %+v, want 1 mismatch of 2 passed on", s)
	}
}
