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

// relatchProbation is how many packets a new source must send, with a new
// SSRC and the latched source silent, before it takes over. One would let a
// single spoofed packet steal the stream.
const relatchProbation = 3

// logEvery throttles latch and drop logs per socket, so a flood of foreign
// packets cannot flood the log.
const logEvery = 10 * time.Second

// bufSize is larger than any RTP packet the path MTU allows; a datagram that
// fills it was probably truncated and is dropped as malformed.
const bufSize = 2048

// sock is one socket of a leg with its latch state and counters.
type sock struct {
	s    *Session
	leg  Leg
	kind int
	conn *net.UDPConn
	out  *sock // same kind on the other leg: where our packets go out

	// dst is where packets for this socket's peer are sent: the latched
	// source, else the SDP address; nil means send nothing. peer is the
	// latched source, nil while learning. Both are written under s.mu and
	// read lock-free by the packet paths.
	dst  atomic.Pointer[netip.AddrPort]
	peer atomic.Pointer[netip.AddrPort]
	// lastTx and lastRx are when this socket last sent and last accepted
	// RTP, in ns since the session epoch. Per socket, so the readers of the
	// two legs never write the same cache line.
	lastTx atomic.Int64
	lastRx atomic.Int64

	sdp   netip.AddrPort // last usable SDP address; guarded by s.mu
	kaDst netip.AddrPort // keepalive target, survives a 0.0.0.0 hold; guarded by s.mu

	// Owned by the reader goroutine.
	buf         []byte
	hdr         rtp.Header
	latchedSSRC uint32
	lastPeerRx  int64
	cand        candidate
	lastLog     int64
	quiet       int // logs suppressed since lastLog

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
	relatched              uint64
	ssrc                   uint32
	seq                    seqState
	jitter                 jitterState
}

// candidate is a source that may replace the latched one.
type candidate struct {
	src   netip.AddrPort
	ssrc  uint32
	start int64
	n     int
}

func newSock(s *Session, leg Leg, kind int, c *net.UDPConn) *sock {
	return &sock{s: s, leg: leg, kind: kind, conn: c, buf: make([]byte, bufSize)}
}

func (k *sock) run() {
	defer k.s.wg.Done()
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
			// Transient errors (e.g. a queued ICMP error) must not end the
			// relay; the throttle keeps a persistent one from flooding.
			if k.shouldLog(k.s.nowNS()) {
				k.log(zap.WarnLevel, "read failed", zap.Error(err))
			}
			continue
		}
		now := k.s.nowNS()
		if k.handle(k.buf[:n], src, now) {
			k.forward(k.buf[:n], now)
		}
	}
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
	case len(b) < 12:
		return k.dropMalformed()
	default:
		if _, err := k.hdr.Unmarshal(b); err != nil {
			return k.dropMalformed()
		}
		rtpPacket = true
		ssrc = k.hdr.SSRC
	}

	peer := k.peer.Load()
	switch {
	case peer == nil:
		k.latch(src, ssrc, now, false)
	case *peer == src:
	case !k.relatch(src, ssrc, now):
		k.mu.Lock()
		k.st.foreign++
		k.mu.Unlock()
		if k.shouldLog(now) {
			k.log(zap.InfoLevel, "dropped packet from foreign source", zap.Stringer("src", src), zap.Stringer("latched", *peer))
		}
		return false
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
		return true
	}
	if ssrc != k.st.ssrc || k.st.packets == 0 {
		// A new SSRC is a new sequence and timestamp space.
		k.st.ssrc = ssrc
		k.latchedSSRC = ssrc
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
	out := k.out
	dst := out.dst.Load()
	if dst == nil {
		k.unsent.Add(1)
		return
	}
	// Counted before the write: loopback delivers inside sendto, and a
	// receiver must never see a packet that Stats does not count yet.
	k.forwarded.Add(1)
	out.lastTx.Store(now)
	if _, err := out.conn.WriteToUDPAddrPort(b, *dst); err != nil {
		k.forwarded.Add(^uint64(0))
		k.sendErrors.Add(1)
	}
}

// latch makes src the peer. It is rare (first packet, after SetRemote, after
// a relatch), so it takes the session lock to order itself with SetRemote.
func (k *sock) latch(src netip.AddrPort, ssrc uint32, now int64, relatch bool) {
	s := k.s
	s.mu.Lock()
	old := k.peer.Load()
	if (old == nil) == !relatch {
		p := src
		k.peer.Store(&p)
		// Symmetric RTP: answer where the peer sends from. Unless the SDP
		// says not to send at all.
		if k.dst.Load() != nil {
			k.dst.Store(&p)
		}
		k.kaDst = p
	}
	s.mu.Unlock()
	k.latchedSSRC = ssrc
	k.cand = candidate{}
	if relatch {
		k.mu.Lock()
		k.st.relatched++
		k.mu.Unlock()
	}
	// The first latch of every call is routine; a relatch is worth seeing.
	if lvl := zap.DebugLevel; relatch || k.s.log.Core().Enabled(lvl) {
		if relatch {
			lvl = zap.InfoLevel
		}
		if k.shouldLog(now) {
			k.log(lvl, "latched", zap.Stringer("src", src), zap.Bool("relatch", relatch))
		}
	}
}

// relatch decides whether a packet from a source other than the latched one
// moves the latch. Only a new SSRC opens a learning window, and the
// candidate must send relatchProbation packets within RelatchWindow while the
// latched source stays silent: a transfer or media-server switch behaves
// like that, an injected stream next to a live one does not.
func (k *sock) relatch(src netip.AddrPort, ssrc uint32, now int64) bool {
	if ssrc == k.latchedSSRC {
		return false
	}
	c := &k.cand
	if c.src != src || c.ssrc != ssrc || now-c.start > int64(k.s.br.cfg.RelatchWindow) || k.lastPeerRx > c.start {
		*c = candidate{src: src, ssrc: ssrc, start: now, n: 1}
		return false
	}
	c.n++
	if c.n < relatchProbation {
		return false
	}
	k.latch(src, ssrc, now, true)
	return true
}

// shouldLog is checked before building log fields, which allocate.
func (k *sock) shouldLog(now int64) bool {
	if k.lastLog != 0 && now-k.lastLog < int64(logEvery) {
		k.quiet++
		return false
	}
	k.lastLog = max(now, 1)
	return true
}

func (k *sock) log(lvl zapcore.Level, msg string, fields ...zap.Field) {
	k.s.log.Log(lvl, msg, append(fields, zap.Stringer("leg", k.leg), zap.Bool("rtcp", k.kind == kindRTCP),
		zap.Int("suppressed", k.quiet))...)
	k.quiet = 0
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

func (k *sock) addTo(d *Direction, rtcp bool) {
	k.mu.Lock()
	st := k.st
	k.mu.Unlock()
	d.Malformed += st.malformed
	d.Foreign += st.foreign
	d.Relatched += st.relatched
	d.Forwarded += k.forwarded.Load()
	d.Unsent += k.unsent.Load()
	d.SendErrors += k.sendErrors.Load()
	d.RTCPPackets += st.rtcpPackets
	d.RTCPBytes += st.rtcpBytes
	if rtcp {
		return
	}
	d.Packets, d.Bytes = st.packets, st.bytes
	d.Lost = st.seq.lost()
	d.Jitter = st.jitter.duration()
	d.SSRC = st.ssrc
	if p := k.peer.Load(); p != nil {
		d.Source = *p
	}
}
