package rtpbridge

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// reactorSupported tells New whether IOEpoll can be used on this platform.
const reactorSupported = true

// batch is how many datagrams one recvmmsg takes from a socket, and how
// many forwarded datagrams one reactor queues before it sends them. At 50
// packets/s per socket a batch is mostly one packet; the win is in serving
// every ready socket of a wake-up (perf-anchors: one wake per packet costs
// far more than the syscalls).
const batch = 16

// maxEvents is how many ready sockets one epoll_wait returns.
const maxEvents = 256

// reactors are the epoll loops of a Bridge in IOEpoll mode. Sockets are
// spread over them as they are created; a packet may leave through a
// socket of another reactor, which is safe because a socket is only closed
// once nothing forwards to it (see rsock.close).
type reactors struct {
	rs   []*reactor
	next atomic.Uint32
	wg   sync.WaitGroup
}

// reactor is one goroutine that owns a level-triggered epoll over raw
// non-blocking UDP sockets, which Go's netpoller never sees: a socket the
// netpoller also watched would wake it on every packet as well. The
// netpoller watches the epoll fd instead, and wakes the reactor once for
// whatever is ready.
type reactor struct {
	epfd, evfd int
	file       *os.File        // epfd, registered with Go's netpoller
	wait       syscall.RawConn // of file
	pollFn     func(uintptr) bool
	log        *zap.Logger

	mu    sync.Mutex
	socks map[int32]*rsock // registered sockets by fd

	wakes atomic.Uint64 // polls that found something ready, for tests

	// Owned by the loop.
	stopped bool
	events  [maxEvents]unix.EpollEvent
	ready   [maxEvents]*rsock
	in      [batch]unix.Mmsghdr
	inIov   [batch]unix.Iovec
	inName  [batch]unix.RawSockaddrInet6
	bufs    [batch][bufSize]byte
	out     [batch]unix.Mmsghdr
	outIov  [batch]unix.Iovec
	outTo   [batch]unix.RawSockaddrInet6
	outFd   [batch]int
	outBy   [batch]*sock // the socket whose packet it is, for its counters
	queued  int
}

// rhandler is what a reactor hands a socket's datagrams to: a Session's
// sock while the pair carries a call, a drain while it is quarantined.
type rhandler interface {
	packet(r *reactor, b []byte, src netip.AddrPort)
	readError(err error)
}

// rsock is a raw UDP socket served by a reactor. Its mutex is held while
// the reactor serves it, so once attach, pause or close returns, the old
// handler sees no more packets.
type rsock struct {
	r   *reactor
	fam int

	// fd is -1 once closed. It changes under mu but is read without it
	// too: keepalives are sent under the Session's lock, which the
	// reactor may be waiting for while it holds mu.
	fd     atomic.Int32
	mu     sync.Mutex
	h      rhandler
	polled bool // in the epoll set
}

func newReactors(n int, log *zap.Logger) (*reactors, error) {
	rx := &reactors{}
	for range n {
		r, err := newReactor(log)
		if err != nil {
			rx.close()
			return nil, err
		}
		rx.rs = append(rx.rs, r)
		rx.wg.Add(1)
		go r.loop(&rx.wg)
	}
	return rx, nil
}

func newReactor(log *zap.Logger) (*reactor, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("rtpbridge: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("rtpbridge: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("rtpbridge: epoll_ctl: %w", err)
	}
	// Only the epoll fd itself is on Go's netpoller: one netpoller wake-up
	// per batch of ready sockets, on whichever thread polls, instead of a
	// thread of our own whose blocking epoll_wait makes the scheduler hand
	// its P off and back on every wake-up.
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("rtpbridge: epoll fd: %w", err)
	}
	file := os.NewFile(uintptr(epfd), "rtpbridge-epoll")
	wait, err := file.SyscallConn()
	if err != nil {
		_ = file.Close()
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("rtpbridge: epoll fd: %w", err)
	}
	r := &reactor{epfd: epfd, evfd: evfd, file: file, wait: wait, log: log, socks: make(map[int32]*rsock)}
	r.pollFn = r.poll
	for i := range r.in {
		r.inIov[i].Base = &r.bufs[i][0]
		r.inIov[i].SetLen(bufSize)
		r.in[i].Hdr.Iov = &r.inIov[i]
		r.in[i].Hdr.SetIovlen(1)
		r.out[i].Hdr.Iov = &r.outIov[i]
		r.out[i].Hdr.SetIovlen(1)
		r.out[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.outTo[i]))
	}
	return r, nil
}

// close stops the loops and waits for them. Every socket must have been
// closed before.
func (rx *reactors) close() {
	for _, r := range rx.rs {
		one := [8]byte{1}
		if _, err := unix.Write(r.evfd, one[:]); err != nil {
			r.log.Error("cannot stop reactor", zap.Error(err))
		}
	}
	rx.wg.Wait()
	for _, r := range rx.rs {
		_ = r.file.Close()
		_ = unix.Close(r.evfd)
	}
	rx.rs = nil
}

// listen binds a raw non-blocking UDP socket on a reactor, paused: it is
// served once a handler is attached.
func (rx *reactors) listen(network, address string, port, dscp int) (*rsock, error) {
	ip, err := netip.ParseAddr(address)
	if err != nil {
		return nil, errSetup{err}
	}
	fam := unix.AF_INET
	if network == "udp6" {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, errSetup{fmt.Errorf("rtpbridge: socket: %w", err)}
	}
	var sa unix.Sockaddr
	if fam == unix.AF_INET6 {
		// As net.ListenPacket("udp6") does.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			_ = unix.Close(fd)
			return nil, errSetup{fmt.Errorf("rtpbridge: IPV6_V6ONLY: %w", err)}
		}
		sa = &unix.SockaddrInet6{Port: port, Addr: ip.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: port, Addr: ip.As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("rtpbridge: bind %s port %d: %w", address, port, err)
	}
	if dscp >= 0 {
		lvl, opt := unix.IPPROTO_IP, unix.IP_TOS
		if fam == unix.AF_INET6 {
			lvl, opt = unix.IPPROTO_IPV6, unix.IPV6_TCLASS
		}
		if err := unix.SetsockoptInt(fd, lvl, opt, dscp<<2); err != nil {
			_ = unix.Close(fd)
			return nil, errSetup{fmt.Errorf("rtpbridge: set DSCP %d: %w", dscp, err)}
		}
	}
	rs := &rsock{r: rx.rs[int(rx.next.Add(1))%len(rx.rs)], fam: fam}
	rs.fd.Store(int32(fd))
	return rs, nil
}

// attach makes h the socket's handler and starts serving it. Packets that
// arrived while it was paused are served at once (level-triggered).
func (rs *rsock) attach(h rhandler) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.fdn() < 0 {
		return errRsockClosed
	}
	rs.h = h
	if rs.polled {
		return nil
	}
	r := rs.r
	r.mu.Lock()
	r.socks[int32(rs.fdn())] = rs
	r.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(rs.fdn())}
	if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, rs.fdn(), &ev); err != nil {
		return fmt.Errorf("rtpbridge: epoll_ctl add: %w", err)
	}
	rs.polled = true
	return nil
}

// pause stops serving the socket; what arrives waits in its buffer. It is
// out of the epoll set rather than registered for nothing, since a socket
// error would still be reported and spin a level-triggered loop.
func (rs *rsock) pause() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.pauseLocked()
}

func (rs *rsock) pauseLocked() {
	rs.h = nil
	if !rs.polled {
		return
	}
	rs.polled = false
	_ = unix.EpollCtl(rs.r.epfd, unix.EPOLL_CTL_DEL, rs.fdn(), nil)
	rs.r.mu.Lock()
	if rs.r.socks[int32(rs.fdn())] == rs {
		delete(rs.r.socks, int32(rs.fdn()))
	}
	rs.r.mu.Unlock()
}

// barrier returns once a packet the reactor may be serving on this socket
// has been handled, so a socket it forwarded to can be closed afterwards.
func (rs *rsock) barrier() {
	rs.mu.Lock()
	rs.mu.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// close pauses and closes the socket. The caller makes sure that nothing
// forwards to it any more. Idempotent.
func (rs *rsock) close() error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.fdn() < 0 {
		return nil
	}
	rs.pauseLocked()
	err := unix.Close(rs.fdn())
	rs.fd.Store(-1)
	return err
}

func (rs *rsock) fdn() int { return int(rs.fd.Load()) }

// writeTo sends one datagram outside the reactor: keepalives and
// pinholes, not the packet path.
func (rs *rsock) writeTo(b []byte, to netip.AddrPort) error {
	var sa unix.RawSockaddrInet6
	n, ok := rs.sockaddr(&sa, to)
	if !ok {
		return errAddrFamily
	}
	fd := rs.fdn()
	if fd < 0 {
		return errRsockClosed
	}
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0,
		uintptr(unsafe.Pointer(&sa)), uintptr(n))
	if e != 0 {
		return e
	}
	return nil
}

// sockaddr encodes to in the socket's family; a v4 address on a v6
// socket becomes v4-mapped.
func (rs *rsock) sockaddr(sa *unix.RawSockaddrInet6, to netip.AddrPort) (uint32, bool) {
	port := to.Port()
	if rs.fam == unix.AF_INET {
		if !to.Addr().Unmap().Is4() {
			return 0, false
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		sa4.Port = port<<8 | port>>8
		sa4.Addr = to.Addr().Unmap().As4()
		sa4.Zero = [8]byte{}
		return unix.SizeofSockaddrInet4, true
	}
	sa.Family = unix.AF_INET6
	sa.Port = port<<8 | port>>8
	sa.Flowinfo = 0
	sa.Addr = to.Addr().As16()
	sa.Scope_id = 0
	return unix.SizeofSockaddrInet6, true
}

var (
	errRsockClosed = errors.New("rtpbridge: socket closed")
	errAddrFamily  = errors.New("rtpbridge: address family does not match the socket")
)

func (r *reactor) loop(wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		if err := r.wait.Read(r.pollFn); err != nil {
			r.log.Error("reactor stopped: wait failed", zap.Error(err))
			return
		}
		if r.stopped {
			return
		}
	}
}

// poll serves what is ready without blocking. It returns false, to wait
// for the netpoller, once it has drained every socket it was told of: a
// packet that arrives after its socket's recvmmsg notifies the netpoller
// anew, so nothing waits unseen, and the epoll_wait that would only find
// nothing is saved. It returns true to be called again at once, when a
// full batch may have left something behind, or to stop.
func (r *reactor) poll(uintptr) bool {
	// The packet path's syscalls never block (a 0 timeout, MSG_DONTWAIT),
	// so they are raw: a scheduled syscall wakes the runtime's sysmon
	// thread out of its sleep, and those wake-ups cost more than a
	// quarter of the relay's CPU at 200 calls (perf: futex, nanosleep).
	nr, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(r.epfd), uintptr(unsafe.Pointer(&r.events[0])),
		maxEvents, 0, 0, 0)
	if e != 0 {
		if e == unix.EINTR {
			return false
		}
		r.log.Error("epoll_wait failed", zap.Error(e))
		r.stopped = true
		return true
	}
	n := int(nr)
	if n == 0 {
		return false
	}
	r.wakes.Add(1)
	r.mu.Lock()
	for i := range n {
		fd := r.events[i].Fd
		if int(fd) == r.evfd {
			r.stopped = true
		}
		r.ready[i] = r.socks[fd]
	}
	r.mu.Unlock()
	if r.stopped {
		return true
	}
	more := n == len(r.events)
	for i := range n {
		if rs := r.ready[i]; rs != nil {
			more = r.serve(rs) || more
			r.ready[i] = nil
		}
	}
	return more
}

// serve reads what is queued on one socket with one recvmmsg, hands each
// datagram to the socket's handler and sends what the handler forwarded.
// It reports whether the batch was full, so more may be queued.
func (r *reactor) serve(rs *rsock) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	h := rs.h
	if h == nil || rs.fdn() < 0 {
		return false // paused or closed since epoll_wait
	}
	for i := range r.in {
		r.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&r.inName[i]))
		r.in[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.in[i].Hdr.Flags = 0
	}
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(rs.fdn()), uintptr(unsafe.Pointer(&r.in[0])), batch,
		unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		if e != unix.EAGAIN && e != unix.EINTR {
			// A queued ICMP error, say; reading it cleared it.
			h.readError(e)
		}
		// After an error, datagrams may still be queued behind it.
		return e != unix.EAGAIN
	}
	for i := range int(n) {
		src, ok := sockaddrAddrPort(&r.inName[i])
		if !ok {
			continue
		}
		h.packet(r, r.bufs[i][:r.in[i].Len], src)
	}
	r.flush()
	return n == batch
}

// sockaddrAddrPort decodes a received source address without allocating.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) (netip.AddrPort, bool) {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), sa4.Port<<8|sa4.Port>>8), true
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), sa.Port<<8|sa.Port>>8), true
	}
	return netip.AddrPort{}, false
}

// queue adds a forwarded datagram to the send batch. b points into the
// receive buffers, which stay untouched until flush.
func (r *reactor) queue(out *rsock, b []byte, to netip.AddrPort, by *sock) {
	i := r.queued
	n, ok := out.sockaddr(&r.outTo[i], to)
	fd := out.fdn()
	if !ok || fd < 0 {
		by.sendFailed()
		return
	}
	r.outIov[i].Base = &b[0]
	r.outIov[i].SetLen(len(b))
	r.out[i].Hdr.Namelen = n
	r.outFd[i] = fd
	r.outBy[i] = by
	r.queued++
}

// flush sends the batch with one sendmmsg per run of the same socket; a
// datagram the kernel refuses is counted and the rest still go.
func (r *reactor) flush() {
	for i := 0; i < r.queued; {
		j := i + 1
		for j < r.queued && r.outFd[j] == r.outFd[i] {
			j++
		}
		for i < j {
			n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(r.outFd[i]), uintptr(unsafe.Pointer(&r.out[i])),
				uintptr(j-i), unix.MSG_DONTWAIT, 0, 0)
			switch {
			case e == unix.EINTR:
			case e != 0 || n == 0:
				r.outBy[i].sendFailed()
				i++
			default:
				i += int(n)
			}
		}
	}
	for i := range r.queued {
		r.outBy[i] = nil
		r.outIov[i].Base = nil
	}
	r.queued = 0
}

// packet is the reactor's per-packet path of a Session socket: the same
// handle as the reader goroutine's, and the send queued for the batch.
func (k *sock) packet(r *reactor, b []byte, src netip.AddrPort) {
	now := k.s.nowNS()
	if !k.handle(b, src, now) {
		return
	}
	if out, dst := k.route(now); out != nil {
		r.queue(out.rs, b, dst, k)
	}
}

func (k *sock) readError(err error) {
	if k.errLog.allow(k.s.nowNS(), logEvery) {
		k.log(zap.WarnLevel, &k.errLog, "read failed", zap.Error(err))
	}
}

func (h *drainSock) packet(_ *reactor, _ []byte, src netip.AddrPort) {
	h.d.last.Store(h.p.nowNS())
	h.d.heard[h.kind] = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	h.p.noSession.Add(1)
}

func (h *drainSock) readError(error) {}
