package rtpbridge

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// bsAddr is where a reactor socket bound to port 0 listens.
func bsAddr(rs *rsock) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(rs.fdn())
	if err != nil {
		return netip.AddrPort{}, err
	}
	sa4 := sa.(*unix.SockaddrInet4)
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(sa4.Port)), nil
}

// epollWatchers returns, for each epoll instance of the process, the fds
// it watches, read from /proc/self/fdinfo.
func epollWatchers(t *testing.T) map[int]map[int]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int]map[int]bool)
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || link != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
		if err != nil {
			continue // closed meanwhile
		}
		watched := make(map[int]bool)
		for _, line := range strings.Split(string(info), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "tfd:" {
				n, _ := strconv.Atoi(f[1])
				watched[n] = true
			}
		}
		out[fd] = watched
	}
	return out
}

// TestEpollSocketsNotOnNetpoller checks that a session's sockets are in
// its reactor's epoll and in no other, so Go's netpoller is not woken by
// their packets. Control: a net.UDPConn's socket is in the netpoller's.
func TestEpollSocketsNotOnNetpoller(t *testing.T) {
	if testIO != IOEpoll {
		t.Skip("IOEpoll pass only")
	}
	h := newHarness(t, nil)
	h.connect()
	watchers := epollWatchers(t)
	for leg, pp := range h.s.pairs {
		for kind, rs := range pp.rs {
			var in []int
			for ep, fds := range watchers {
				if fds[rs.fdn()] {
					in = append(in, ep)
				}
			}
			if len(in) != 1 || in[0] != rs.r.epfd {
				t.Errorf("leg %d kind %d: fd %d watched by epolls %v, want only the reactor's %d", leg, kind, rs.fdn(), in, rs.r.epfd)
			}
		}
	}
	raw, err := h.pbx.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var pbxFD int
	_ = raw.Control(func(fd uintptr) { pbxFD = int(fd) })
	seen := false
	for _, fds := range watchers {
		seen = seen || fds[pbxFD]
	}
	if !seen {
		t.Fatal("control: a net.UDPConn is in no epoll, so the check above proves nothing")
	}
}

// blocker is a handler that holds its reactor inside serve until released.
type blocker struct{ entered, release chan struct{} }

// blockReactor holds rx's first reactor busy until the blocker is
// released, with a socket of its own that c sends to.
func blockReactor(t *testing.T, rx *reactors, c *net.UDPConn) *blocker {
	t.Helper()
	bs, err := rx.listen("udp4", "127.0.0.1", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bs.close() })
	b := &blocker{entered: make(chan struct{}), release: make(chan struct{})}
	if err := bs.attach(b); err != nil {
		t.Fatal(err)
	}
	sa, err := bsAddr(bs)
	if err != nil {
		t.Fatal(err)
	}
	send(t, c, []byte("block"), sa)
	<-b.entered
	return b
}

// TestReactorDrainsBacklog queues more than several recvmmsg batches on
// one socket while the reactor is busy: all of it is relayed, in order,
// without another packet arriving to wake the reactor.
func TestReactorDrainsBacklog(t *testing.T) {
	if testIO != IOEpoll {
		t.Skip("IOEpoll pass only")
	}
	const n = 3*batch + 1
	h := newHarness(t, func(c *Config) { c.Reactors = 1 })
	h.connect()
	send(t, h.pbx, rtpPkt(0, 0, 7, 'l'), h.aRTP) // latch
	recv(t, h.sdp)
	b := blockReactor(t, h.br.rx, h.pbx)
	for i := 1; i <= n; i++ {
		send(t, h.pbx, rtpPkt(uint16(i), uint32(i)*160, 7, byte(i)), h.aRTP)
	}
	close(b.release)
	for i := 1; i <= n; i++ {
		if got, _ := recv(t, h.sdp); got[12] != byte(i) {
			t.Fatalf("packet %d: payload %d", i, got[12])
		}
	}
	if st := h.s.Stats().AtoB; st.Forwarded != n+1 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func (b *blocker) packet(*reactor, []byte, netip.AddrPort) {
	b.entered <- struct{}{}
	<-b.release
}

func (b *blocker) readError(error) {}

// TestReactorServesManySocketsPerWake holds the one reactor busy while a
// packet reaches each of many sessions, then checks that a single wake-up
// served them all: what saves the wake per packet of a reader goroutine
// per socket.
func TestReactorServesManySocketsPerWake(t *testing.T) {
	if testIO != IOEpoll {
		t.Skip("IOEpoll pass only")
	}
	const calls = 20
	h := newHarness(t, func(c *Config) { c.Reactors = 1 })
	h.connect()
	pbx, prov := udp(t), udp(t)
	var legA []netip.AddrPort
	for i := range calls {
		s, err := h.br.NewSession(fmt.Sprint("call-", i))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetRemote(LegA, addrOf(pbx), netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		if err := s.SetRemote(LegB, addrOf(prov), netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
		recv(t, prov) // pinhole
		legA = append(legA, loopback(s.LocalPort(LegA)))
		// Latch leg A now, so the packets below take the steady path.
		send(t, pbx, rtpPkt(1, 0, uint32(i), 'l'), legA[i])
		recv(t, prov)
	}
	r := h.s.pairs[LegA].rs[0].r
	b := blockReactor(t, h.br.rx, pbx)
	before := r.wakes.Load()
	for i := range calls {
		send(t, pbx, rtpPkt(2, 160, uint32(i), 'm'), legA[i])
	}
	close(b.release)
	for range calls {
		recv(t, prov)
	}
	if got := r.wakes.Load() - before; got > 1 {
		t.Fatalf("%d wake-ups for %d packets on %d sockets, want 1", got, calls, calls)
	}
}

// TestEpollSocketsSetDSCP is TestPoolSetsDSCP for the raw sockets.
func TestEpollSocketsSetDSCP(t *testing.T) {
	if testIO != IOEpoll {
		t.Skip("IOEpoll pass only")
	}
	for _, tc := range []struct{ dscp, tos int }{{0, DefaultDSCP << 2}, {10, 10 << 2}, {-1, 0}} {
		p := &Pool{Address: "127.0.0.1", MinPort: 44800, MaxPort: 44899, DSCP: tc.dscp}
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		withTestIO(t, p)
		closeAtEnd(t, p)
		pp, err := p.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		for _, rs := range pp.rs {
			tos, err := unix.GetsockoptInt(rs.fdn(), unix.IPPROTO_IP, unix.IP_TOS)
			if err != nil {
				t.Fatal(err)
			}
			if tos != tc.tos {
				t.Errorf("DSCP %d: TOS %#x, want %#x", tc.dscp, tos, tc.tos)
			}
		}
		if err := pp.close(false); err != nil {
			t.Fatal(err)
		}
	}
}

// recorder is a handler that hands over what it receives.
type recorder struct{ got chan netip.AddrPort }

func (r *recorder) packet(_ *reactor, _ []byte, src netip.AddrPort) { r.got <- src }

func (r *recorder) readError(error) {}

// TestEpollIPv6 receives on and sends from a raw udp6 socket, including to
// a v4-mapped address, which a v6 socket needs for an IPv4 peer.
func TestEpollIPv6(t *testing.T) {
	if testIO != IOEpoll {
		t.Skip("IOEpoll pass only")
	}
	peer, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { _ = peer.Close() })
	rx, err := newReactors(1, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rx.close)
	rs, err := rx.listen("udp6", "::1", 0, DefaultDSCP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.close() })
	rec := &recorder{got: make(chan netip.AddrPort, 1)}
	if err := rs.attach(rec); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(rs.fdn())
	if err != nil {
		t.Fatal(err)
	}
	local := netip.AddrPortFrom(netip.AddrFrom16(sa.(*unix.SockaddrInet6).Addr), uint16(sa.(*unix.SockaddrInet6).Port))
	send(t, peer, []byte("v6"), local)
	if src := <-rec.got; src != addrOf(peer) {
		t.Fatalf("source %s, want %s", src, addrOf(peer))
	}
	if err := rs.writeTo([]byte("back"), addrOf(peer)); err != nil {
		t.Fatal(err)
	}
	if b, _ := recv(t, peer); string(b) != "back" {
		t.Fatalf("got %q", b)
	}
	// An IPv4 destination fails on a v6-only socket, as it does through
	// a udp6 net.UDPConn, rather than leaving from the wrong family.
	if err := rs.writeTo([]byte("v4"), loopback(9)); err == nil {
		t.Fatal("a v4-mapped send from a v6-only socket succeeded")
	}
}

// TestRebindRacingClose (review): a Close that comes while a Rebind moves
// a leg leaves every quarantined pair served by its drain, never by the
// closed session's socket. Before, Close released the new pair between
// Rebind's swap and its attach, and the attach then put the dead
// session's handler back on the quarantined pair: it went on relaying the
// old remote's packets to the ended call's other pair, which may belong
// to a new call, and the drain's counters stopped. The Close starts in
// that gap; the hook then gives it up to a second to finish (on the old
// code it did in microseconds), which the fixed Close cannot: it waits
// for the Rebind.
func TestRebindRacingClose(t *testing.T) {
	if testIO != IOEpoll {
		t.Skip("the reactor's handlers exist only with rtp.io epoll")
	}
	h := newHarness(t, nil)
	h.connect()
	closed := make(chan struct{})
	h.s.rebindSwapped = func() {
		go func() { _ = h.s.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(time.Second):
		}
	}
	if _, err := h.s.Rebind(LegB); err != nil {
		t.Fatal(err)
	}
	<-closed
	pool := h.br.cfg.WAN
	pool.mu.Lock()
	defer pool.mu.Unlock()
	n := 0
	for _, d := range pool.drains {
		if d == nil {
			continue
		}
		for kind, rs := range d.rs {
			rs.mu.Lock()
			hd := rs.h
			rs.mu.Unlock()
			if _, ok := hd.(*drainSock); !ok {
				t.Errorf("quarantined pair %d (kind %d) is served by %T, not its drain", d.idx, kind, hd)
			}
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d quarantined sockets in the Internet pool, want 4 (both pairs the leg had)", n)
	}
}
