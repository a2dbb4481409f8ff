package rtpbridge

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logEvery throttles refusal and error logs per socket, so a flood of
// foreign packets cannot flood the log.
const logEvery = 10 * time.Second

// takeoverLogEvery throttles takeover logs per socket. Takeovers are rare
// by construction (one per RelatchAfter at most), so nearly each is logged.
const takeoverLogEvery = time.Second

// bufSize is larger than any RTP packet the path MTU allows; a datagram that
// fills it was probably truncated and is dropped as malformed.
const bufSize = 2048

// sock is one socket of a leg with its latch state and counters.
type sock struct {
	s    *Session
	leg  Leg
	kind int
	conn *net.UDPConn // nil in IOEpoll mode
	rs   *rsock       // the socket in IOEpoll mode, served by a reactor
	// out is the same kind on the other leg: where our packets go out.
	// Atomic because Rebind swaps the other leg's socket; nil on a socket
	// Rebind retired, whose late packets must not reach the call.
	out  atomic.Pointer[sock]
	done chan struct{} // closed when the reader returns; IOGoroutines only

	// dst is where packets for this socket's peer are sent: the latched
	// source, else the SDP address; nil means send nothing. peer is the
	// latched source, nil while learning. expect is the SDP address the
	// latching rule is checked against, nil until the SIP layer set one;
	// a 0.0.0.0 hold keeps it. All three are written under s.mu and read
	// lock-free by the packet paths.
	dst    atomic.Pointer[netip.AddrPort]
	peer   atomic.Pointer[netip.AddrPort]
	expect atomic.Pointer[netip.AddrPort]
	// mode is the latching rule; taint holds the last sources of the
	// previous call on a reused port pair, refused unless one is exactly
	// the new SDP address. Both are fixed before the reader starts.
	mode  Latching
	taint [2]netip.AddrPort
	// lastTx and lastRx are when this socket last sent and last accepted
	// RTP, in ns since the session epoch. Per socket, so the readers of the
	// two legs never write the same cache line.
	lastTx atomic.Int64
	lastRx atomic.Int64

	sdp   netip.AddrPort // last usable SDP address; guarded by s.mu
	kaDst netip.AddrPort // keepalive target, survives a 0.0.0.0 hold; guarded by s.mu

	// Owned by the reader goroutine, or in IOEpoll mode by the reactor
	// while it holds rs.mu. buf is nil there: the reactor has its own.
	buf        []byte
	hdr        rtp.Header
	lastPeerRx int64 // last packet accepted from the latched source
	refuseLog  limiter
	takeLog    limiter
	errLog     limiter

	forwarded  atomic.Uint64
	unsent     atomic.Uint64
	sendErrors atomic.Uint64

	mu sync.Mutex // guards the stats below; contended only by Stats()
	st sockStats
}

type sockStats struct {
	packets, bytes         uint64 // RTP
	rtcpPackets, rtcpBytes uint64 // RTCP, including rtcp-mux on the RTP port
	malformed, foreign     uint64
	refused                uint64 // of foreign: outside the latching rule
	relatched              uint64
	ssrc                   uint32
	seq                    seqState
	jitter                 jitterState
}

func newSock(s *Session, leg Leg, kind int, pp *PortPair) *sock {
	k := &sock{s: s, leg: leg, kind: kind, rs: pp.rs[kind]}
	if k.rs == nil {
		k.conn = [2]*net.UDPConn{pp.rtp, pp.rtcp}[kind]
		k.buf, k.done = make([]byte, bufSize), make(chan struct{})
	}
	return k
}

// start serves the socket: a reader goroutine, or the reactor.
func (k *sock) start() {
	if k.rs != nil {
		if err := k.rs.attach(k); err != nil {
			k.s.log.Error("cannot serve media socket", zap.Error(err), zap.Stringer("leg", k.leg))
		}
		return
	}
	k.s.wg.Add(1)
	go k.run()
}

// writeTo sends one datagram off the packet path (keepalives, pinholes).
func (k *sock) writeTo(b []byte, to netip.AddrPort) error {
	if k.rs != nil {
		return k.rs.writeTo(b, to)
	}
	_, err := k.conn.WriteToUDPAddrPort(b, to)
	return err
}

func (k *sock) run() {
	defer k.s.wg.Done()
	defer close(k.done)
	for {
		n, src, err := k.conn.ReadFromUDPAddrPort(k.buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-k.s.closed:
				return
			default:
			}
			if k.out.Load() == nil {
				return // retired by Rebind, which interrupted the read
			}
			// Transient errors (e.g. a queued ICMP error) must not end the
			// relay; the throttle keeps a persistent one from flooding.
			if k.errLog.allow(k.s.nowNS(), logEvery) {
				k.log(zap.WarnLevel, &k.errLog, "read failed", zap.Error(err))
			}
			continue
		}
		now := k.s.nowNS()
		if k.handle(k.buf[:n], src, now) {
			k.forward(k.buf[:n], now)
		}
	}
}

// rtpHeaderFits reports whether b holds the whole RTP header its first
// byte announces: 12 bytes, the CSRCs, and an extension's header and the
// length that header gives (RFC 3550 §5.1, §5.3.1). Checked before
// Unmarshal, whose errors allocate: a stranger's 12-byte packet with a CSRC
// count of 15 would otherwise cost an allocation each.
func rtpHeaderFits(b []byte) bool {
	if len(b) < 12 {
		return false
	}
	n := 12 + 4*int(b[0]&0x0f)
	if b[0]&0x10 != 0 {
		if len(b) < n+4 {
			return false
		}
		n += 4 + 4*int(binary.BigEndian.Uint16(b[n+2:]))
	}
	return len(b) >= n
}

// handle validates, latches and counts one packet, and reports whether to
// forward it. It is the whole per-packet logic apart from the two syscalls.
func (k *sock) handle(b []byte, src netip.AddrPort, now int64) bool {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	rtpPacket, raw := false, k.kind == kindRTP && k.s.raw.Load()
	var ssrc uint32
	switch {
	case raw:
		if len(b) == 0 || len(b) >= bufSize {
			return k.dropMalformed()
		}
	case len(b) < 8 || len(b) >= bufSize || b[0]>>6 != 2:
		// Length is checked before Unmarshal, whose errors allocate.
		return k.dropMalformed()
	case k.kind == kindRTCP || isRTCP(b[1]):
		ssrc = binary.BigEndian.Uint32(b[4:8])
	case !rtpHeaderFits(b):
		return k.dropMalformed()
	default:
		if _, err := k.hdr.Unmarshal(b); err != nil {
			return k.dropMalformed()
		}
		rtpPacket = true
		ssrc = k.hdr.SSRC
	}

	if peer := k.peer.Load(); peer == nil || *peer != src {
		if !k.admit(src, peer, now) {
			return false
		}
	}
	k.lastPeerRx = now

	k.mu.Lock()
	if raw {
		k.st.packets++
		k.st.bytes += uint64(len(b))
		k.mu.Unlock()
		k.lastRx.Store(now)
		return true
	}
	if !rtpPacket {
		k.st.rtcpPackets++
		k.st.rtcpBytes += uint64(len(b))
		k.mu.Unlock()
		k.lastRx.Store(now) // a silence-suppressing endpoint is alive by its RTCP
		if k.leg == LegA {
			scrubSDES(b) // the PBX's CNAME names a LAN host
		}
		return true
	}
	if ssrc != k.st.ssrc || k.st.packets == 0 {
		// A new SSRC is a new sequence and timestamp space.
		k.st.ssrc = ssrc
		k.st.seq.restart(k.hdr.SequenceNumber)
		k.st.jitter.reset()
	}
	if k.st.seq.update(k.hdr.SequenceNumber) {
		k.st.jitter.update(k.hdr.Timestamp, now, k.s.br.rates[k.hdr.PayloadType&0x7f])
	}
	k.st.packets++
	k.st.bytes += uint64(len(b))
	k.mu.Unlock()
	k.lastRx.Store(now)
	return true
}

// isRTCP tells RTCP from RTP on an RTP port (RFC 5761 §4, rtcp-mux): the
// second byte of RTCP is its packet type, 192-223.
func isRTCP(b1 byte) bool { return b1 >= 192 && b1 <= 223 }

func (k *sock) dropMalformed() bool {
	k.mu.Lock()
	k.st.malformed++
	k.mu.Unlock()
	return false
}

func (k *sock) forward(b []byte, now int64) {
	if out, dst := k.route(now); out != nil {
		if _, err := out.conn.WriteToUDPAddrPort(b, dst); err != nil {
			k.sendFailed()
		}
	}
}

// route is where an accepted packet goes out, and counts it as forwarded;
// nil means it is not sent.
func (k *sock) route(now int64) (*sock, netip.AddrPort) {
	out := k.out.Load()
	if out == nil {
		return nil, netip.AddrPort{} // retired by Rebind
	}
	dst := out.dst.Load()
	if dst == nil {
		k.unsent.Add(1)
		return nil, netip.AddrPort{}
	}
	// Counted before the write: loopback delivers inside sendto, and a
	// receiver must never see a packet that Stats does not count yet.
	k.forwarded.Add(1)
	out.lastTx.Store(now)
	return out, *dst
}

// sendFailed takes back the count of a packet that route let through.
func (k *sock) sendFailed() {
	k.forwarded.Add(^uint64(0))
	k.sendErrors.Add(1)
}

// admit decides on a packet from a source other than the latched one (or
// from any source while nothing is latched). It is off the steady-state
// path: a live call only gets here for foreign packets.
func (k *sock) admit(src netip.AddrPort, peer *netip.AddrPort, now int64) bool {
	sdp := k.expect.Load()
	if sdp == nil || !k.mode.allows(src, *sdp) || k.tainted(src, *sdp) {
		k.mu.Lock()
		k.st.foreign++
		k.st.refused++
		k.mu.Unlock()
		if k.refuseLog.allow(now, logEvery) {
			fields := []zap.Field{zap.Stringer("src", src), zap.Stringer("latching", k.mode)}
			if sdp != nil {
				fields = append(fields, zap.Stringer("sdp", *sdp))
			}
			k.log(zap.InfoLevel, &k.refuseLog, "refused media source", fields...)
		}
		return false
	}
	if peer != nil && now-k.lastPeerRx < k.relatchAfter() {
		// An acceptable source, but the latched one is alive: a burst or
		// an SSRC change alone must not move the latch.
		k.mu.Lock()
		k.st.foreign++
		k.mu.Unlock()
		if k.refuseLog.allow(now, logEvery) {
			k.log(zap.InfoLevel, &k.refuseLog, "dropped packet from foreign source", zap.Stringer("src", src),
				zap.Stringer("latched", *peer))
		}
		return false
	}
	return k.latch(src, sdp, peer, now)
}

// tainted reports whether src was a source of the pair's previous call. Its
// late packets must not latch the new call; only the new SDP address itself
// overrides that, since then the far end really is there again.
func (k *sock) tainted(src, sdp netip.AddrPort) bool {
	return src != sdp && (src == k.taint[0] || src == k.taint[1])
}

// relatchAfter is how long the latched source must be silent before it can
// be replaced.
func (k *sock) relatchAfter() int64 {
	d := k.s.br.cfg.RelatchAfter
	if k.kind == kindRTCP {
		d = max(d, rtcpRelatchAfter)
	}
	return int64(d)
}

// latch makes src the peer in place of old (nil: the first latch). It is
// rare, so it takes the session lock to order itself with SetRemote; if
// SetRemote changed the SDP address or the latch since the packet was
// judged, the packet is dropped and the next one is judged afresh.
func (k *sock) latch(src netip.AddrPort, sdp, old *netip.AddrPort, now int64) bool {
	s := k.s
	s.mu.Lock()
	if k.expect.Load() != sdp || k.peer.Load() != old {
		s.mu.Unlock()
		k.mu.Lock()
		k.st.foreign++
		k.mu.Unlock()
		return false
	}
	p := src
	k.peer.Store(&p)
	// Symmetric RTP: answer where the peer sends from. Unless the SDP says
	// not to send at all.
	if k.dst.Load() != nil {
		k.dst.Store(&p)
	}
	k.kaDst = p
	s.mu.Unlock()
	if old == nil {
		// The first latch of every call is routine.
		if ce := s.log.Check(zap.DebugLevel, "latched"); ce != nil {
			ce.Write(zap.Stringer("src", src), zap.Stringer("leg", k.leg), zap.Bool("rtcp", k.kind == kindRTCP))
		}
		return true
	}
	k.mu.Lock()
	k.st.relatched++
	k.mu.Unlock()
	if k.takeLog.allow(now, takeoverLogEvery) {
		k.log(zap.WarnLevel, &k.takeLog, "media source taken over", zap.Stringer("src", src),
			zap.Stringer("old", *old), zap.Duration("silent", time.Duration(now-k.lastPeerRx)),
			zap.Stringer("latching", k.mode))
	}
	return true
}

func (k *sock) log(lvl zapcore.Level, l *limiter, msg string, fields ...zap.Field) {
	k.s.log.Log(lvl, msg, append(fields, zap.Stringer("leg", k.leg), zap.Bool("rtcp", k.kind == kindRTCP),
		zap.Int("suppressed", l.suppressed()))...)
}

// setRemoteLocked applies an SDP address and reports whether it is new.
func (k *sock) setRemoteLocked(addr netip.AddrPort) bool {
	if !addr.IsValid() || addr.Addr().IsUnspecified() || addr.Port() == 0 {
		k.dst.Store(nil)
		return false
	}
	if addr != k.sdp {
		k.sdp = addr
		k.kaDst = addr
		k.peer.Store(nil)
		k.expect.Store(&addr)
		k.dst.Store(&addr)
		return true
	}
	if p := k.peer.Load(); p != nil {
		k.dst.Store(p)
	} else {
		k.dst.Store(&addr)
	}
	return false
}

// heard reports whether the socket has accepted any packet of its kind.
func (k *sock) heard() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.st.packets > 0
}

func (k *sock) addTo(d *Direction, rtcp bool) {
	k.mu.Lock()
	st := k.st
	k.mu.Unlock()
	d.Malformed += st.malformed
	d.Foreign += st.foreign
	d.Refused += st.refused
	d.Relatched += st.relatched
	d.Forwarded += k.forwarded.Load()
	d.Unsent += k.unsent.Load()
	d.SendErrors += k.sendErrors.Load()
	d.RTCPPackets += st.rtcpPackets
	d.RTCPBytes += st.rtcpBytes
	if rtcp {
		return
	}
	// Summed: a leg moved by Rebind has its retired sockets' counts too.
	// Jitter and SSRC are of the latest socket that heard anything.
	d.Packets += st.packets
	d.Bytes += st.bytes
	d.Lost += st.seq.lost()
	if st.packets > 0 {
		d.Jitter = st.jitter.duration()
		d.SSRC = st.ssrc
	}
	if p := k.peer.Load(); p != nil {
		d.Source = *p
	}
}
