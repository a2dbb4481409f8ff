package rtpbridge

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/rtp"
	"go.uber.org/zap"
)

// fakeClock runs timers synchronously inside Advance, so timer-driven
// behaviour is deterministic.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       *fakeClock
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.stopped {
		return false
	}
	t.stopped = true
	return true
}

// Advance moves time forward, firing due timers in order at their own time,
// including timers that callbacks schedule within the window.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range c.timers {
			if !t.stopped && !t.at.After(target) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		next.stopped = true
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
		c.mu.Lock()
	}
	c.now = target
	live := c.timers[:0]
	for _, t := range c.timers {
		if !t.stopped {
			live = append(live, t)
		}
	}
	c.timers = live
	c.mu.Unlock()
}

// seqRand returns the given numbers in turn, modulo n.
type seqRand struct{ vals []int }

func (r *seqRand) IntN(n int) int {
	if len(r.vals) == 0 {
		return 0
	}
	v := r.vals[0]
	r.vals = r.vals[1:]
	return v % n
}

const waitTimeout = 5 * time.Second

// waitFor polls cond until it holds or waitTimeout passes. It is only used
// for state with no event to wait on (counters after a drop).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkRoutines fails the test if goroutines started during it outlive it,
// in the spirit of pion's test.CheckRoutines.
func checkRoutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
	})
}

func udp(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort {
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func loopback(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
}

func rtpPkt(seq uint16, ts, ssrc uint32, payload byte) []byte {
	p := rtp.Packet{
		Header:  rtp.Header{Version: 2, PayloadType: 8, SequenceNumber: seq, Timestamp: ts, SSRC: ssrc},
		Payload: make([]byte, 160),
	}
	p.Payload[0] = payload
	b, err := p.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

func send(t testing.TB, c *net.UDPConn, b []byte, to netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatal(err)
	}
}

// recv reads one datagram with a bounded wait.
func recv(t testing.TB, c *net.UDPConn) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	if err := c.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n], from
}

// noPacket asserts nothing is queued on c. Loopback delivers inside sendto,
// and the relay's reader has already handled a later packet when this is
// called, so an empty queue is conclusive.
func noPacket(t testing.TB, c *net.UDPConn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("unexpected packet (%d bytes from %s, err %v)", n, from, err)
	}
}

var (
	lanRange = [2]uint16{41000, 41999}
	wanRange = [2]uint16{43000, 43999}
)

// testIOEnv picks the IO mode of one test run; unset, TestMain runs the
// package once per mode.
const testIOEnv = "RTPBRIDGE_TEST_IO"

// testIO is the IO mode of the bridges and pools the tests make. It is set
// before any test runs and not changed while one does.
var testIO = os.Getenv(testIOEnv)

// TestMain runs every test against both paths: the reader goroutines
// (IOGoroutines, the portable fallback) and, on Linux, the reactors
// (IOEpoll). Benchmarks run once, in the mode the environment names
// (default IOGoroutines), so that benchstat compares like with like.
func TestMain(m *testing.M) {
	if testIO != "" {
		os.Exit(m.Run())
	}
	testIO = IOGoroutines
	code := m.Run()
	if f := flag.Lookup("test.bench"); code != 0 || !reactorSupported || (f != nil && f.Value.String() != "") {
		os.Exit(code)
	}
	fmt.Println("rtpbridge: again with", testIOEnv+"="+IOEpoll)
	testIO = IOEpoll
	os.Exit(m.Run())
}

// withTestIO makes a pool that the test uses without a Bridge serve its
// sockets in the test's IO mode, with reactors closed after the pool.
func withTestIO(t testing.TB, p *Pool) {
	t.Helper()
	if testIO != IOEpoll {
		return
	}
	rx, err := newReactors(1, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.useReactors(rx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rx.close)
}

func testPool(r [2]uint16, clk Clock) *Pool {
	return &Pool{Address: "127.0.0.1", MinPort: r[0], MaxPort: r[1], Clock: clk}
}

// harness is a session with a PBX on leg A and a provider on leg B. The
// provider's SDP address (sdp, sdpRTCP) differs from where it really sends
// from (nat, natRTCP), as behind a NAT.
type harness struct {
	t            *testing.T
	clk          *fakeClock
	br           *Bridge
	s            *Session
	pbx, pbxRTCP *net.UDPConn
	sdp, sdpRTCP *net.UDPConn
	nat, natRTCP *net.UDPConn
	aRTP, aRTCP  netip.AddrPort // the session's leg A sockets
	bRTP, bRTCP  netip.AddrPort
	timeouts     chan *Session
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	checkRoutines(t)
	h := &harness{t: t, clk: newFakeClock(), timeouts: make(chan *Session, 4)}
	cfg := Config{
		IO:        testIO,
		LAN:       testPool(lanRange, h.clk),
		WAN:       testPool(wanRange, h.clk),
		Clock:     h.clk,
		OnTimeout: func(s *Session) { h.timeouts <- s },
	}
	if mod != nil {
		mod(&cfg)
	}
	br, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.br = br
	h.s, err = br.NewSession("call-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	h.pbx, h.pbxRTCP = udp(t), udp(t)
	h.sdp, h.sdpRTCP = udp(t), udp(t)
	h.nat, h.natRTCP = udp(t), udp(t)
	h.aRTP, h.aRTCP = loopback(h.s.LocalPort(LegA)), loopback(h.s.LocalPort(LegA)+1)
	h.bRTP, h.bRTCP = loopback(h.s.LocalPort(LegB)), loopback(h.s.LocalPort(LegB)+1)
	return h
}

// connect sets both remotes and drains the pinhole packets.
func (h *harness) connect() {
	h.t.Helper()
	if err := h.s.SetRemote(LegA, addrOf(h.pbx), addrOf(h.pbxRTCP)); err != nil {
		h.t.Fatal(err)
	}
	if err := h.s.SetRemote(LegB, addrOf(h.sdp), addrOf(h.sdpRTCP)); err != nil {
		h.t.Fatal(err)
	}
	recv(h.t, h.sdp)
	recv(h.t, h.sdpRTCP)
}

// closeAtEnd closes p when the test ends, so its drained pairs do not stay
// bound into the next test (or the next -count run).
func closeAtEnd(t testing.TB, p *Pool) {
	t.Helper()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Pool.Close: %v", err)
		}
	})
}

// bound reports whether a local UDP port on 127.0.0.1 is held by a socket.
func bound(t testing.TB, port uint16) bool {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(loopback(port)))
	if err == nil {
		_ = c.Close()
		return false
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("probe bind %d: %v", port, err)
	}
	return true
}

// states is c with only the pair states, for comparing with a literal.
func states(c PoolCounts) PoolCounts {
	return PoolCounts{InUse: c.InUse, Quarantined: c.Quarantined, Free: c.Free}
}
