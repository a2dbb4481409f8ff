package rtpbridge

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Leg is one side of a Session.
type Leg int

const (
	// LegA faces the LAN and the PBX.
	LegA Leg = iota
	// LegB faces the Internet and the provider. Pinholes and keepalives are
	// sent on this leg only, because only it is behind the NAT.
	LegB
)

func (l Leg) String() string {
	switch l {
	case LegA:
		return "A"
	case LegB:
		return "B"
	}
	return "invalid"
}

const (
	kindRTP  = 0
	kindRTCP = 1
)

// keepalivePT is the payload type of pinhole and keepalive RTP packets: RFC
// 6263 §4.6, an RTP packet with a payload type the session did not
// negotiate. RFC 3550 requires receivers to ignore payload types they do not
// know, so it is never played; comfort noise (PT 13) would be decoded by
// receivers that negotiated it, and a zero-length UDP datagram is discarded by
// some stacks before any NAT-friendly handling. 20 is unassigned in RFC 3551,
// outside the dynamic range, so it cannot collide with a negotiated type.
const keepalivePT = 20

// Session relays one media stream (RTP and RTCP) between leg A and leg B.
// Each of its four sockets has one reader goroutine, or with IOEpoll is
// served by a reactor; a timer handles the media timeout and keepalives.
// Close releases everything and waits for the readers.
type Session struct {
	id    string
	br    *Bridge
	log   *zap.Logger
	clock Clock
	epoch time.Time
	ssrc  uint32 // of our own keepalive and pinhole packets
	// pairs and socks change only in Rebind, under mu; the readers see
	// the other leg's socket through sock.out.
	pairs   [2]*PortPair
	socks   [2][2]*sock // [leg][kind]
	retired [2][]*sock  // sockets Rebind replaced, for Stats; guarded by mu
	// rebind serialises Rebind, and Close with it: a Close between
	// Rebind's swap and its attach would release the new pair, and the
	// attach would then serve the quarantined pair with this session's
	// socket instead of its drain.
	rebind  sync.Mutex
	rebinds atomic.Uint64 // completed Rebinds
	// rebindSwapped, if set (tests), runs in Rebind right after the swap.
	rebindSwapped func()

	wg        sync.WaitGroup
	closed    chan struct{}
	closeOnce sync.Once

	// raw: the stream is not RTP (T.38 over UDPTL), so any datagram is
	// relayed and counts as activity. Read per packet, hence atomic.
	raw atomic.Bool

	mu          sync.Mutex // guards the fields below and every latch change
	isClosed    bool
	timer       Timer
	established bool
	held        bool
	mark        int64 // last Established/SetHold, in ns since epoch
	timedOut    bool
	kaSeq       uint16
	// The no-inbound watch of leg B: since watchFrom (ns since epoch),
	// when leg A's RTP socket had forwarded watchBase packets. fired: the
	// current pair has been reported.
	watchFrom int64
	watchBase uint64
	fired     bool
}

func newSession(b *Bridge, id string, lan, wan *PortPair, latching [2]Latching) *Session {
	s := &Session{
		id:     id,
		br:     b,
		log:    b.log.With(zap.String("call_id", id)),
		clock:  b.cfg.Clock,
		pairs:  [2]*PortPair{lan, wan},
		ssrc:   rand.Uint32(),
		closed: make(chan struct{}),
		kaSeq:  uint16(rand.Uint32()),
	}
	s.epoch = s.clock.Now()
	for leg, pp := range s.pairs {
		for kind := range 2 {
			k := newSock(s, Leg(leg), kind, pp)
			k.mode = latching[leg]
			k.taint = pp.taint[kind]
			s.socks[leg][kind] = k
		}
	}
	for leg := range s.socks {
		for kind := range s.socks[leg] {
			s.socks[leg][kind].out.Store(s.socks[1-leg][kind])
		}
	}
	return s
}

func (s *Session) start() {
	for leg := range s.socks {
		for _, k := range s.socks[leg] {
			k.start()
		}
	}
	s.mu.Lock()
	s.armLocked(s.nowNS())
	s.mu.Unlock()
}

func (s *Session) nowNS() int64 { return int64(s.clock.Now().Sub(s.epoch)) }

// ID is the call ID given to NewSession.
func (s *Session) ID() string { return s.id }

// LocalPort is the RTP port of leg l, for the SDP sent on that leg; RTCP is
// on LocalPort+1.
func (s *Session) LocalPort(l Leg) uint16 {
	if l != LegA && l != LegB {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pairs[l].port
}

// Done is closed when the session is closed.
func (s *Session) Done() <-chan struct{} { return s.closed }

// SetRemote sets the SDP addresses of the peer on leg l: RTP, and RTCP (port+1
// unless the SDP has an a=rtcp attribute). An address that is invalid,
// unspecified (a 0.0.0.0 hold) or has port 0 means "send nothing there"; the
// latch is kept, so resuming to the same address needs no relearning. A new
// address drops the latch, and the next packet that the leg's Latching rule
// accepts for the new address latches again. Until the first SetRemote, the
// leg accepts no packet at all.
//
// On leg B a new address gets a pinhole packet at once, before the provider
// has a chance to send first.
func (s *Session) SetRemote(l Leg, rtpAddr, rtcpAddr netip.AddrPort) error {
	if l != LegA && l != LegB {
		return ErrInvalidLeg
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return ErrSessionClosed
	}
	now := s.nowNS()
	for kind, addr := range [2]netip.AddrPort{rtpAddr, rtcpAddr} {
		k := s.socks[l][kind]
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		changed := k.setRemoteLocked(addr)
		if changed {
			s.log.Debug("remote set", zap.Stringer("leg", l), zap.Bool("rtcp", kind == kindRTCP),
				zap.Stringer("addr", addr))
		}
		if l == LegB && changed {
			s.sendKeepaliveLocked(k, addr, now)
			if kind == kindRTP {
				s.watchLocked(now)
			}
		}
	}
	s.armLocked(now)
	return nil
}

// Established starts the media timeout; the SIP layer calls it when the call
// is answered. Before that, the SIP ring timeout governs and a call ringing
// without early media must not be reaped.
func (s *Session) Established() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return
	}
	s.established = true
	s.mark = s.nowNS()
	s.watchLocked(s.mark)
	s.armLocked(s.mark)
}

// SetHold switches between MediaTimeout and HoldTimeout. Either change
// restarts the timeout, since RTP is expected to stop or resume with it.
func (s *Session) SetHold(held bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return
	}
	s.held = held
	s.mark = s.nowNS()
	s.armLocked(s.mark)
}

// SetRaw switches the session between RTP (validated, parsed, counted
// with loss and jitter) and raw datagrams: T.38 fax over UDPTL (RFC 3362)
// is relayed like audio, but its packets are not RTP and would otherwise
// be dropped as malformed. Latching works the same.
func (s *Session) SetRaw(raw bool) { s.raw.Store(raw) }

// Stats returns a snapshot of the session's counters. It is valid after
// Close too.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{AtoB: s.direction(LegA), BtoA: s.direction(LegB)}
}

// Rebinds is how many times Rebind moved a leg to a new port pair.
func (s *Session) Rebinds() uint64 { return s.rebinds.Load() }

func (s *Session) direction(l Leg) Direction {
	var d Direction
	for _, k := range s.retired[l] {
		k.addTo(&d, k.kind == kindRTCP)
	}
	s.socks[l][kindRTP].addTo(&d, false)
	s.socks[l][kindRTCP].addTo(&d, true)
	return d
}

// Close stops relaying, waits for the reader goroutines and releases both
// port pairs into quarantine, where their sockets stay bound and drain late
// packets (see Pool). It is idempotent and safe to call from OnTimeout.
func (s *Session) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.rebind.Lock()
		defer s.rebind.Unlock()
		s.mu.Lock()
		s.isClosed = true
		if s.timer != nil {
			s.timer.Stop()
		}
		s.mu.Unlock()
		close(s.closed)
		// A past read deadline ends the readers' blocking reads; the sockets
		// stay open for the pool to drain. Packets arriving in between wait
		// in the socket buffer for the drain readers.
		for _, pp := range s.pairs {
			pp.interrupt()
		}
		s.wg.Wait()
		// The pool refuses these sources in the pair's next call, for as
		// long as that call lasts, unless its SDP names one of them.
		for leg, pp := range s.pairs {
			for kind := range pp.peers {
				if p := s.socks[leg][kind].peer.Load(); p != nil {
					pp.peers[kind] = *p
				}
			}
		}
		err = errors.Join(s.pairs[LegA].Release(), s.pairs[LegB].Release())
		s.br.remove(s)
		s.log.Debug("session closed", zap.Object("media", s.Stats()))
	})
	return err
}

func (s *Session) timeoutLocked() int64 {
	if s.held {
		return int64(s.br.cfg.HoldTimeout)
	}
	return int64(s.br.cfg.MediaTimeout)
}

// lastActivityLocked is when the call last showed it is alive: each leg
// by its last accepted RTP or RTCP packet (RTCP keeps a silence-suppressing
// endpoint alive), and the call by its quieter leg, so that one dead
// direction ends it (issue 9 item 10). On hold, and for T.38 (whose
// receiver is quiet for whole pages), one live leg is enough. Never before
// the last Established or SetHold.
func (s *Session) lastActivityLocked() int64 {
	var leg [2]int64
	for l := range leg {
		leg[l] = max(s.socks[l][kindRTP].lastRx.Load(), s.socks[l][kindRTCP].lastRx.Load())
	}
	if s.held || s.raw.Load() {
		return max(leg[0], leg[1], s.mark)
	}
	return max(min(leg[0], leg[1]), s.mark)
}

// armLocked schedules the next housekeeping at the earliest deadline. It
// wakes once per keepalive interval rather than per packet: deadlines are
// recomputed from the packet timestamps when the timer fires.
func (s *Session) armLocked(now int64) {
	if s.isClosed {
		return
	}
	next := int64(math.MaxInt64)
	if ka := int64(s.br.cfg.KeepaliveInterval); ka > 0 {
		if w := s.socks[LegB][kindRTP]; w.kaDst.IsValid() {
			next = w.lastTx.Load() + ka
		}
	}
	if s.established && !s.timedOut {
		next = min(next, s.lastActivityLocked()+s.timeoutLocked())
	}
	if s.watchingLocked() {
		// Polled once per NoInboundAfter until it fires or leg B hears
		// something: the condition depends on packet counts, and a timer
		// per packet is what the relay never does.
		next = min(next, max(s.watchFrom+int64(s.br.cfg.NoInboundAfter), now+int64(s.br.cfg.NoInboundAfter)/4))
	}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if next == math.MaxInt64 {
		return
	}
	s.timer = s.clock.AfterFunc(time.Duration(max(next-now, int64(time.Millisecond))), s.housekeep)
}

func (s *Session) housekeep() {
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		return
	}
	now := s.nowNS()
	w := s.socks[LegB][kindRTP]
	if ka := int64(s.br.cfg.KeepaliveInterval); ka > 0 && w.kaDst.IsValid() && now-w.lastTx.Load() >= ka {
		s.sendKeepaliveLocked(w, w.kaDst, now)
	}
	fire, held := false, s.held
	if s.established && !s.timedOut && now-s.lastActivityLocked() >= s.timeoutLocked() {
		s.timedOut = true
		fire = true
	}
	noInbound := false
	if s.watchingLocked() && now-s.watchFrom >= int64(s.br.cfg.NoInboundAfter) &&
		s.socks[LegA][kindRTP].forwarded.Load()-s.watchBase >= noInboundMinSent {
		s.fired, noInbound = true, true
	}
	s.armLocked(now)
	s.mu.Unlock()
	if noInbound {
		s.log.Info("no media from leg B while we send", zap.Uint16("port", s.LocalPort(LegB)),
			zap.Object("media", s.Stats()))
		if f := s.br.cfg.OnNoInbound; f != nil {
			f(s, LegB)
		}
	}
	if fire {
		s.log.Info("media timeout", zap.Bool("held", held), zap.Object("media", s.Stats()))
		if f := s.br.cfg.OnTimeout; f != nil {
			f(s)
		}
	}
}

// watchLocked (re)starts the no-inbound watch of leg B; a watch counts
// only what is sent from now on.
func (s *Session) watchLocked(now int64) {
	s.watchFrom = now
	s.watchBase = s.socks[LegA][kindRTP].forwarded.Load()
}

// watchingLocked reports whether leg B's silence may still be reported:
// the call is answered, not held, RTP rather than T.38, leg B sends to an
// SDP address, this pair has not been reported yet, and it has never
// accepted an RTP packet.
func (s *Session) watchingLocked() bool {
	w := s.socks[LegB][kindRTP]
	return s.br.cfg.NoInboundAfter > 0 && s.established && !s.held && !s.timedOut && !s.fired &&
		!s.raw.Load() && w.dst.Load() != nil && !w.heard()
}

// Rebind moves leg l to a fresh port pair from its pool and returns the
// new RTP port, for the re-INVITE that tells the remote. It repairs the
// NAT race that OnNoInbound reports: on leg B the new pair sends its
// pinhole packets to the remote's current address before it carries any
// media, so the router's mapping for the new port is ours. The latch and
// SDP addresses carry over; the old pair goes into quarantine like a
// released one, so its late packets are drained and never reach the
// call. Counters continue across the move.
func (s *Session) Rebind(l Leg) (uint16, error) {
	if l != LegA && l != LegB {
		return 0, ErrInvalidLeg
	}
	s.rebind.Lock()
	defer s.rebind.Unlock()
	pool := s.br.cfg.LAN
	if l == LegB {
		pool = s.br.cfg.WAN
	}
	pp, err := pool.Allocate()
	if err != nil {
		return 0, s.br.poolErr(l.String(), err)
	}
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		_ = pp.close(false)
		return 0, ErrSessionClosed
	}
	now := s.nowNS()
	old, oldPair := s.socks[l], s.pairs[l]
	var fresh [2]*sock
	for kind := range 2 {
		o := old[kind]
		k := newSock(s, l, kind, pp)
		k.mode, k.taint = o.mode, pp.taint[kind]
		k.sdp, k.kaDst = o.sdp, o.kaDst
		k.expect.Store(o.expect.Load())
		k.dst.Store(o.dst.Load())
		k.peer.Store(o.peer.Load())
		k.lastTx.Store(o.lastTx.Load())
		k.lastRx.Store(o.lastRx.Load())
		// The latched peer was last heard then, as far as the new
		// socket knows (the old one's lastPeerRx is its reader's): else
		// the latch looks long silent, and any source the rule allows
		// would take it over before the peer follows the re-INVITE.
		k.lastPeerRx = o.lastRx.Load()
		k.out.Store(s.socks[1-l][kind])
		if l == LegB && k.kaDst.IsValid() {
			// First, before any media leaves from the new port.
			s.sendKeepaliveLocked(k, k.kaDst, now)
		}
		fresh[kind] = k
	}
	for kind, k := range fresh {
		if k.rs == nil {
			k.start()
		}
		s.socks[1-l][kind].out.Store(k)
		old[kind].out.Store(nil)
	}
	s.socks[l], s.pairs[l] = fresh, pp
	s.retired[l] = append(s.retired[l], old[:]...)
	s.fired = false
	s.watchLocked(now)
	s.armLocked(now)
	other := s.socks[1-l]
	s.mu.Unlock()
	if s.rebindSwapped != nil {
		s.rebindSwapped()
	}

	oldPair.interrupt()
	for kind, k := range old {
		if k.rs != nil {
			// Outside s.mu, which the reactor may need while it serves
			// a socket. The other leg's barrier: a packet it was
			// forwarding out of the old socket has gone, so the old pair
			// may be closed.
			fresh[kind].start()
			other[kind].rs.barrier()
		} else {
			<-k.done
		}
		if p := k.peer.Load(); p != nil {
			oldPair.peers[kind] = *p
		}
	}
	s.rebinds.Add(1)
	s.log.Info("leg moved to a new port pair", zap.Stringer("leg", l), zap.Uint16("old", oldPair.port),
		zap.Uint16("new", pp.port))
	return pp.port, oldPair.Release()
}

// sendKeepaliveLocked sends the pinhole/keepalive packet: on RTP a bare
// 12-byte header with keepalivePT, on RTCP an empty receiver report, the
// smallest valid RTCP packet, so RTCP receivers do not flag it as malformed.
func (s *Session) sendKeepaliveLocked(k *sock, to netip.AddrPort, now int64) {
	var b [12]byte
	n := 12
	if k.kind == kindRTCP {
		b[0], b[1] = 0x80, 201 // V=2, RC=0, RR
		binary.BigEndian.PutUint16(b[2:], 1)
		binary.BigEndian.PutUint32(b[4:], s.ssrc)
		n = 8
	} else {
		s.kaSeq++
		b[0], b[1] = 0x80, keepalivePT
		binary.BigEndian.PutUint16(b[2:], s.kaSeq)
		binary.BigEndian.PutUint32(b[4:], uint32(now/int64(time.Millisecond))*8)
		binary.BigEndian.PutUint32(b[8:], s.ssrc)
	}
	if err := k.writeTo(b[:n], to); err != nil {
		s.log.Warn("keepalive send failed", zap.Stringer("addr", to), zap.Error(err))
		return
	}
	k.lastTx.Store(now)
}
