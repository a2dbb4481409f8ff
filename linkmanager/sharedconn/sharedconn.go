// Package sharedconn is the one UDP socket that carries SIP and STUN, seen
// by sipgo as a net.PacketConn.
package sharedconn

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/linkmanager/linkmanager/stunkeeper"
)

// Conn is the Internet-facing UDP socket (65002 by default) seen
// through the net.PacketConn interface that sipgo's UDP transport needs.
//
// One socket carries SIP and STUN because the NAT mapping that STUN reveals
// and keeps alive must be the very mapping SIP uses; a second socket would
// get a different public port. The caller owns the socket; Conn only
// reads and writes it, and closing Conn closes it.
//
// ReadFrom returns only SIP the daemon is willing to process. It hands STUN
// to the STUN handler, swallows CRLF keepalives, drops requests from sources
// that are not the providers (toll fraud: nobody else may send us calls), and
// absorbs transient read errors, because sipgo stops its UDP listener for
// good on any read error except net.ErrClosed.
type Conn struct {
	conn udpConn
	log  *zap.Logger

	// handlers are set once before serving; atomics keep the read path
	// lock-free and let tests swap them without races.
	stunHandler  atomic.Pointer[func([]byte, netip.AddrPort) bool]
	allowRequest atomic.Pointer[func(netip.AddrPort) bool]
	onSend       atomic.Pointer[func(netip.AddrPort)]
	reject       atomic.Pointer[rejecter]

	mu       sync.Mutex
	lastSent map[netip.AddrPort]time.Time // guarded by mu; per-flow idle time for keepalives
	now      func() time.Time

	readyOnce sync.Once
	ready     chan struct{}
	reading   atomic.Bool  // inside ReadFrom: the SIP stack is listening
	returned  atomic.Int64 // c.now() in Unix ns when ReadFrom last returned a message

	stats counters
	// errLog lets one absorbed read error a while be logged: a socket
	// that keeps failing must not fill the disk over months; largeLog the
	// same for large datagrams sent.
	errLog, largeLog rate.Sometimes
}

// udpConn is the part of *net.UDPConn Conn uses; tests inject
// read errors through it.
type udpConn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	LocalAddr() net.Addr
	Close() error
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

type counters struct {
	sipIn, stunIn, stunUnmatched, keepaliveIn atomic.Uint64
	droppedSource, droppedMalformed           atomic.Uint64
	rejected                                  atomic.Uint64
	readErrors, writeErrors                   atomic.Uint64
	largeSent                                 atomic.Uint64
	lengthMismatch                            atomic.Uint64
}

// Stats is a snapshot of what the socket saw.
type Stats struct {
	SIPIn            uint64 // SIP messages passed to the SIP stack
	STUNIn           uint64 // STUN packets matched by the STUN handler
	STUNUnmatched    uint64 // STUN-looking packets nobody was waiting for
	KeepalivesIn     uint64 // CRLF keepalives received
	DroppedSource    uint64 // SIP requests from sources that may not send to us
	Rejected         uint64 // of those, answered with a stateless rejection
	DroppedMalformed uint64 // datagrams that are neither SIP nor STUN
	ReadErrors       uint64 // transient read errors absorbed
	WriteErrors      uint64
	LargeSent        uint64 // datagrams over LargeDatagram bytes: IP fragments them
	// LengthMismatch counts SIP from allowed sources whose Content-Length
	// is not their body's length: the mark of a SIP ALG that edited the
	// body and not the header (or of a broken sender). sipgo drops such a
	// message when the body is shorter and cuts it when longer, so only
	// the socket sees it. Anyone who can forge a provider's source address
	// can send one, so it is counted, never a verdict of its own.
	LengthMismatch uint64
}

// LargeDatagram is RFC 3261 §18.1.1's limit for SIP over UDP: above it a
// message should go over TCP, which linkmanager does not speak yet, so it
// goes as UDP, which IP fragments; a router or firewall on the way that
// drops fragments loses it.
const LargeDatagram = 1300

// New wraps conn. The now func is injectable for tests; nil means
// time.Now.
func New(conn udpConn, log *zap.Logger, now func() time.Time) *Conn {
	if log == nil {
		log = zap.NewNop()
	}
	if now == nil {
		now = time.Now
	}
	return &Conn{
		conn:     conn,
		log:      log.Named("sipconn"),
		lastSent: make(map[netip.AddrPort]time.Time),
		now:      now,
		ready:    make(chan struct{}),
		errLog:   rate.Sometimes{Interval: 10 * time.Second},
		largeLog: rate.Sometimes{Interval: time.Hour},
	}
}

// SetSTUNHandler sets who receives STUN packets. It reports whether it
// consumed the packet; the buffer is reused after it returns.
func (c *Conn) SetSTUNHandler(h func(b []byte, from netip.AddrPort) bool) {
	c.stunHandler.Store(&h)
}

// SetRequestFilter sets which sources may send SIP, requests and
// responses alike: a response from anyone else cannot belong to a
// transaction this socket started with a provider.
func (c *Conn) SetRequestFilter(allow func(from netip.AddrPort) bool) {
	c.allowRequest.Store(&allow)
}

// SetOnSend registers a hook run after every successful write, so the STUN
// keeper can measure idle time from the socket's last write.
func (c *Conn) SetOnSend(f func(to netip.AddrPort)) {
	c.onSend.Store(&f)
}

// Ready is closed once the SIP stack has started reading. sipgo registers
// the socket in its connection pool before its first read; a request sent
// earlier would make sipgo bind a new socket on the same port and fail.
func (c *Conn) Ready() <-chan struct{} { return c.ready }

// Listening reports whether the SIP stack is reading: waiting in ReadFrom
// now, or back in it within stall of the last message it was handed. A
// listener that died or wedged never comes back; the watchdog uses this.
// A single sample of "inside ReadFrom" is not enough: on a busy socket the
// reader is between two reads at any instant with fair odds, and two such
// samples in a row would have systemd kill a healthy daemon with calls up.
func (c *Conn) Listening(stall time.Duration) bool {
	if c.reading.Load() {
		return true
	}
	last := c.returned.Load()
	return last != 0 && c.now().Sub(time.Unix(0, last)) < stall
}

// Stats returns a snapshot of the counters.
func (c *Conn) Stats() Stats {
	s := &c.stats
	return Stats{
		SIPIn: s.sipIn.Load(), STUNIn: s.stunIn.Load(), STUNUnmatched: s.stunUnmatched.Load(),
		KeepalivesIn: s.keepaliveIn.Load(), DroppedSource: s.droppedSource.Load(), Rejected: s.rejected.Load(),
		DroppedMalformed: s.droppedMalformed.Load(), ReadErrors: s.readErrors.Load(),
		WriteErrors: s.writeErrors.Load(), LargeSent: s.largeSent.Load(), LengthMismatch: s.lengthMismatch.Load(),
	}
}

// LastSent reports when the socket last sent to dst (zero if never). The
// NAT times each flow separately, so keepalives are per destination.
func (c *Conn) LastSent(dst netip.AddrPort) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastSent[dst]
}

// LocalAddrPort is the bound address.
func (c *Conn) LocalAddrPort() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// ReadFrom implements net.PacketConn for sipgo.
func (c *Conn) ReadFrom(p []byte) (int, net.Addr, error) {
	c.readyOnce.Do(func() { close(c.ready) })
	c.reading.Store(true)
	defer c.reading.Store(false)
	var backoff time.Duration
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(p)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0, nil, err
			}
			// Anything else would kill sipgo's listener for good. Pause
			// briefly so a persistent error cannot spin a core.
			n := c.stats.readErrors.Add(1)
			c.errLog.Do(func() { c.log.Warn("socket read error absorbed", zap.Error(err), zap.Uint64("read_errors", n)) })
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		switch kind := classify(p[:n]); kind {
		case kindSTUN:
			if h := c.stunHandler.Load(); h != nil && (*h)(p[:n], from) {
				c.stats.stunIn.Add(1)
			} else {
				c.stats.stunUnmatched.Add(1)
			}
			continue
		case kindKeepalive:
			c.stats.keepaliveIn.Add(1)
			continue
		case kindRequest, kindResponse:
			// Responses too: sipgo keeps state per remote address it
			// hears from (240k forged sources once left 37 MiB behind)
			// and logs every unparsable "SIP/2.0 ..." datagram whole.
			// Only the providers answer what this socket sends.
			if f := c.allowRequest.Load(); f != nil && !(*f)(from) {
				// Silence by default: answering tells scanners someone
				// is here. See SetReject for the PBX side.
				c.stats.droppedSource.Add(1)
				if r := c.reject.Load(); r != nil && kind == kindRequest {
					c.rejectStateless(r, p[:n], from)
				}
				continue
			}
		default:
			c.stats.droppedMalformed.Add(1)
			continue
		}
		if lengthMismatch(p[:n]) {
			c.stats.lengthMismatch.Add(1)
		}
		c.stats.sipIn.Add(1)
		c.returned.Store(c.now().UnixNano())
		return n, net.UDPAddrFromAddrPort(from), nil
	}
}

// WriteTo implements net.PacketConn for sipgo.
func (c *Conn) WriteTo(p []byte, addr net.Addr) (int, error) {
	var dst netip.AddrPort
	switch a := addr.(type) {
	case *net.UDPAddr:
		dst = a.AddrPort()
	default:
		ap, err := netip.ParseAddrPort(addr.String())
		if err != nil {
			return 0, err
		}
		dst = ap
	}
	return len(p), c.Send(p, dst)
}

// Send writes b to dst. It is the STUN keeper's send func.
func (c *Conn) Send(b []byte, dst netip.AddrPort) error {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if _, err := c.conn.WriteToUDPAddrPort(b, dst); err != nil {
		c.stats.writeErrors.Add(1)
		return err
	}
	c.mu.Lock()
	c.lastSent[dst] = c.now()
	c.mu.Unlock()
	if len(b) > LargeDatagram {
		n := c.stats.largeSent.Add(1)
		c.largeLog.Do(func() {
			c.log.Warn(fmt.Sprintf("sent a %d-byte SIP message over UDP: above %d bytes IP fragments it, and a router or provider that drops fragments loses it (calls time out); trim the PBX's codec list if calls to this peer fail", len(b), LargeDatagram),
				zap.Stringer("dst", dst), zap.Uint64("large_sent", n))
		})
	}
	if f := c.onSend.Load(); f != nil {
		(*f)(dst)
	}
	return nil
}

// Close closes the socket; sipgo's reader then ends with net.ErrClosed.
func (c *Conn) Close() error { return c.conn.Close() }

// LocalAddr implements net.PacketConn.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline implements net.PacketConn.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

type packetKind int

const (
	kindGarbage packetKind = iota
	kindSTUN
	kindKeepalive
	kindRequest
	kindResponse
)

// classify sorts a datagram cheaply by its first bytes. STUN's first two
// bits are zero and bytes 4..8 hold the magic cookie (RFC 5389 §6). RFC 3489
// servers echo our whole 16-byte transaction ID, which starts with the
// cookie, so their answers pass the same test. SIP is text.
func classify(b []byte) packetKind {
	if len(b) == 0 {
		return kindGarbage
	}
	if b[0] <= 1 {
		if stunkeeper.IsSTUN(b) {
			return kindSTUN
		}
		return kindGarbage
	}
	if onlyWhitespace(b) {
		return kindKeepalive // RFC 5626 §4.4.1 CRLF ping, or zero padding
	}
	if len(b) >= 8 && string(b[:8]) == "SIP/2.0 " {
		return kindResponse
	}
	// Request line: METHOD SP Request-URI SP SIP/2.0 CRLF, the method an
	// uppercase token. Anything else (HTTP probes, TLS, RTP sent to the
	// wrong port) is not worth handing to the parser.
	sp := -1
	for i, ch := range b[:min(len(b), 32)] {
		if ch == ' ' {
			sp = i
			break
		}
		if (ch < 'A' || ch > 'Z') && ch != '-' && ch != '_' {
			return kindGarbage
		}
	}
	if sp <= 0 {
		return kindGarbage
	}
	line := b[sp:min(len(b), 1024)]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = bytes.TrimSuffix(line[:i], []byte("\r"))
		if bytes.HasSuffix(line, []byte(" SIP/2.0")) {
			return kindRequest
		}
	}
	return kindGarbage
}

func onlyWhitespace(b []byte) bool {
	for _, ch := range b {
		if ch != '\r' && ch != '\n' && ch != ' ' && ch != 0 {
			return false
		}
	}
	return true
}

var blankLine = []byte("\r\n\r\n")

// lengthMismatch reports whether a SIP datagram's Content-Length (or its
// compact form l) names another length than the body after the blank
// line; trailing CR and LF beyond it are padding, not a mismatch. Without
// the header, or with one that is not a number, it reports false: that is
// the parser's business. It allocates nothing.
func lengthMismatch(b []byte) bool {
	end := bytes.Index(b, blankLine)
	if end < 0 {
		return false
	}
	body := b[end+len(blankLine):]
	hdrs := b[:end]
	for len(hdrs) > 0 {
		line := hdrs
		if i := bytes.IndexByte(hdrs, '\n'); i >= 0 {
			line, hdrs = hdrs[:i], hdrs[i+1:]
		} else {
			hdrs = nil
		}
		name, val, ok := bytes.Cut(line, []byte{':'})
		name = bytes.TrimSpace(name)
		if !ok || !(bytes.EqualFold(name, contentLength) || len(name) == 1 && name[0]|0x20 == 'l') {
			continue
		}
		n, ok := digits(bytes.TrimSpace(val))
		if !ok {
			return false
		}
		if n > len(body) {
			return true
		}
		return len(bytes.TrimRight(body[n:], "\r\n")) > 0
	}
	return false
}

var contentLength = []byte("Content-Length")

// digits parses a short decimal number.
func digits(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 6 {
		return 0, false
	}
	n := 0
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		n = 10*n + int(ch-'0')
	}
	return n, true
}
