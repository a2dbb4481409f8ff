//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	pktSize  = 172 // 12-byte RTP header and 20 ms of G.711
	slots    = 20  // 1 ms slots per 20 ms frame: calls are spread in phase
	batch    = 16
	maxLatUS = 200_000 // the latency histogram's range, in 1 µs buckets
	drain    = 500 * time.Millisecond
)

// gen is the generator: for each call a PBX socket and a provider socket on
// 127.0.0.1, one OS thread serving all of them with epoll and recvmmsg, and
// a 1 ms timerfd that paces the sends. Each packet carries its send time,
// so the receiver reads the one-way latency through the relay.
type gen struct {
	pbx, prov []int // fds
	toA, toB  []unix.RawSockaddrInet4
	epfd, tfd int
	base      time.Time

	hist      []uint32
	histTotal uint64
	measuring bool
	received  uint64 // 172-byte packets back from the relay
}

func newGen(calls int) (*gen, error) {
	g := &gen{hist: make([]uint32, maxLatUS), epfd: -1, tfd: -1}
	var err error
	if g.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, err
	}
	if g.tfd, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC); err != nil {
		g.close()
		return nil, err
	}
	if err := g.watch(g.tfd); err != nil {
		g.close()
		return nil, err
	}
	for range calls {
		a, err := g.socket()
		if err != nil {
			g.close()
			return nil, err
		}
		g.pbx = append(g.pbx, a)
		b, err := g.socket()
		if err != nil {
			g.close()
			return nil, err
		}
		g.prov = append(g.prov, b)
	}
	return g, nil
}

func (g *gen) watch(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	return unix.EpollCtl(g.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
}

func (g *gen) socket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, g.watch(fd)
}

func port(fd int) int {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0
	}
	return sa.(*unix.SockaddrInet4).Port
}

func (g *gen) pbxPorts() []int  { return ports(g.pbx) }
func (g *gen) provPorts() []int { return ports(g.prov) }

func ports(fds []int) []int {
	out := make([]int, len(fds))
	for i, fd := range fds {
		out[i] = port(fd)
	}
	return out
}

// target sets where each call's PBX and provider send: the relay's ports.
func (g *gen) target(toA, toB []int) {
	sa := func(p int) unix.RawSockaddrInet4 {
		return unix.RawSockaddrInet4{Family: unix.AF_INET, Port: uint16(p)<<8 | uint16(p)>>8, Addr: [4]byte{127, 0, 0, 1}}
	}
	for i := range toA {
		g.toA = append(g.toA, sa(toA[i]))
		g.toB = append(g.toB, sa(toB[i]))
	}
}

func (g *gen) close() {
	for _, fd := range append(append([]int{g.epfd, g.tfd}, g.pbx...), g.prov...) {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
	}
}

func (g *gen) now() uint64 { return uint64(time.Since(g.base)) }

// run sends for warmup+window, measures over the window, then stops sending
// and drains. Sends are bounded by the tick count.
func (g *gen) run(relayPID int, warmup, window time.Duration) (result, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	g.base = time.Now()
	its := unix.ItimerSpec{Interval: unix.NsecToTimespec(1e6), Value: unix.NsecToTimespec(1e6)}
	if err := unix.TimerfdSettime(g.tfd, 0, &its, nil); err != nil {
		return result{}, err
	}
	calls := len(g.pbx)
	startTick, endTick := int(warmup/time.Millisecond), int((warmup+window)/time.Millisecond)
	var (
		pkt             [pktSize]byte
		seq             = make([]uint16, 2*calls)
		sent            uint64
		tick            int
		cpu0, gcpu0, r0 int64
		t0              time.Time
		res             result
		events          [256]unix.EpollEvent
		expired         [8]byte
		err             error
	)
	pkt[0], pkt[1] = 0x80, 8
	st := &recvState{}
	st.init()
	send := func(fd int, to *unix.RawSockaddrInet4, stream int) {
		seq[stream]++
		binary.BigEndian.PutUint16(pkt[2:], seq[stream])
		binary.BigEndian.PutUint32(pkt[4:], uint32(seq[stream])*160)
		binary.BigEndian.PutUint32(pkt[8:], uint32(stream))
		binary.LittleEndian.PutUint64(pkt[12:], g.now())
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&pkt[0])), pktSize, 0,
			uintptr(unsafe.Pointer(to)), unix.SizeofSockaddrInet4)
		if e == 0 {
			sent++
		}
	}
	// Sends are bounded by the tick count; this bound is for a generator
	// starved so badly that its figures would mean nothing anyway.
	deadline := time.Now().Add(2*(warmup+window) + drain + 10*time.Second)
	var drainUntil time.Time
	for {
		timeout := 100
		if !drainUntil.IsZero() {
			left := time.Until(drainUntil)
			if left <= 0 {
				break
			}
			timeout = int(left/time.Millisecond) + 1
		}
		if time.Now().After(deadline) {
			return result{}, fmt.Errorf("generator overran its time bound")
		}
		n, e := unix.EpollWait(g.epfd, events[:], timeout)
		if e != nil {
			if e == unix.EINTR {
				continue
			}
			return result{}, e
		}
		for i := range n {
			fd := int(events[i].Fd)
			if fd != g.tfd {
				g.recv(fd, st)
				continue
			}
			if _, err := unix.Read(g.tfd, expired[:]); err != nil {
				continue
			}
			// Late ticks are caught up, so the rate holds on a busy machine.
			for k := binary.LittleEndian.Uint64(expired[:]); k > 0 && drainUntil.IsZero(); k-- {
				slot := tick % slots
				for c := slot; c < calls; c += slots {
					send(g.pbx[c], &g.toA[c], 2*c)
					send(g.prov[c], &g.toB[c], 2*c+1)
				}
				tick++
				switch tick {
				case startTick:
					if cpu0, err = cpuTicks(relayPID); err != nil {
						return result{}, err
					}
					gcpu0, _ = cpuTicks(os.Getpid())
					r0, t0 = int64(g.received), time.Now()
					g.measuring = true
				case endTick:
					cpu1, err := cpuTicks(relayPID)
					if err != nil {
						return result{}, err
					}
					gcpu1, _ := cpuTicks(os.Getpid())
					got := float64(int64(g.received) - r0)
					if got == 0 {
						return result{}, fmt.Errorf("no packets relayed")
					}
					res.usPerPkt = float64(cpu1-cpu0) * 1e6 / userHZ / got
					res.genUsPerPkt = float64(gcpu1-gcpu0) * 1e6 / userHZ / got
					res.pps = got / time.Since(t0).Seconds()
					g.measuring = false
					drainUntil = time.Now().Add(drain)
				}
			}
		}
	}
	_ = unix.TimerfdSettime(g.tfd, 0, &unix.ItimerSpec{}, nil)
	res.lossPct = 100 * float64(int64(sent)-int64(g.received)) / float64(sent)
	res.p50 = quantile(g.hist, g.histTotal, 0.50)
	res.p99 = quantile(g.hist, g.histTotal, 0.99)
	return res, nil
}

// recvState is recvmmsg's buffers, set up once.
type recvState struct {
	msgs [batch]unix.Mmsghdr
	iov  [batch]unix.Iovec
	bufs [batch][2048]byte
}

func (s *recvState) init() {
	for i := range s.msgs {
		s.iov[i].Base = &s.bufs[i][0]
		s.iov[i].SetLen(len(s.bufs[i]))
		s.msgs[i].Hdr.Iov = &s.iov[i]
		s.msgs[i].Hdr.SetIovlen(1)
	}
}

func (g *gen) recv(fd int, s *recvState) {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&s.msgs[0])), batch,
			unix.MSG_DONTWAIT, 0, 0)
		if e != 0 || n == 0 {
			return
		}
		now := g.now()
		for i := range int(n) {
			if s.msgs[i].Len != pktSize {
				continue // RTCP or a keepalive, not our media
			}
			g.received++
			if !g.measuring {
				continue
			}
			lat := (now - binary.LittleEndian.Uint64(s.bufs[i][12:])) / 1000
			if lat >= maxLatUS {
				lat = maxLatUS - 1
			}
			g.hist[lat]++
			g.histTotal++
		}
		if n < batch {
			return
		}
	}
}
