package rtpbridge

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Bridge defaults.
const (
	DefaultMediaTimeout = 60 * time.Second
	// DefaultHoldTimeout is long because a held call may carry no RTP at
	// all; it only reaps calls whose signalling died while on hold.
	DefaultHoldTimeout = time.Hour
	// DefaultKeepaliveInterval stays under the 20 s UDP conntrack timeout
	// measured in the NAT lab (RFC 6263 suggests 15 s too).
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultClockRate         = 8000
	// DefaultNoInboundAfter is how long leg B may hear nothing while we
	// send before OnNoInbound fires: a remote that sends starts within
	// tens of milliseconds of its answer, and a second leaves room for a
	// slow one without leaving a one-way call unrepaired for long.
	DefaultNoInboundAfter = time.Second
)

// noInboundMinSent is how many packets must have gone out of leg B since
// its remote was set before its silence counts: proof that our side talks,
// so the remote had something to answer and a pinhole to answer through.
const noInboundMinSent = 10

// IO modes of a Bridge: how its sockets are read.
const (
	// IOGoroutines gives every socket its own reader goroutine on Go's
	// netpoller: one wake-up per packet. Portable.
	IOGoroutines = "goroutines"
	// IOEpoll serves all sockets from a reactor goroutine or a few, each
	// with a level-triggered epoll over raw non-blocking sockets, draining
	// them with recvmmsg and sending with sendmmsg: one wake-up serves
	// every socket that is ready. Linux only.
	IOEpoll = "epoll"
)

// Config configures a Bridge. Zero values mean the documented defaults.
type Config struct {
	// LAN allocates leg A (PBX side), WAN leg B (provider side). Both are
	// required and are validated by New; they may be the same Pool. The
	// Bridge owns them: Bridge.Close closes them.
	LAN, WAN *Pool
	// MediaTimeout: no RTP in either direction for this long, once the call
	// is established, calls OnTimeout.
	MediaTimeout time.Duration
	// HoldTimeout replaces MediaTimeout while the session is held.
	HoldTimeout time.Duration
	// KeepaliveInterval: when nothing has been sent on the WAN RTP socket for
	// this long, a keepalive is sent there. Negative disables.
	KeepaliveInterval time.Duration
	// Latching is the source rule of each leg, indexed by Leg, unless a
	// session overrides it. Zero: DefaultLANLatching for leg A,
	// DefaultWANLatching for leg B.
	Latching [2]Latching
	// RelatchAfter is how long a latched source must have been silent
	// before another source the rule accepts replaces it. Default
	// DefaultRelatchAfter; RTCP waits at least 12 s, a report interval and
	// a half.
	RelatchAfter time.Duration
	// ClockRates maps RTP payload types to their clock rate for jitter; types
	// not listed use DefaultClockRate. Wideband codecs with dynamic payload
	// types (Opus 48000, G.722 8000 by RFC 3551's quirk) go here.
	ClockRates map[uint8]uint32
	// Clock is the time source. Default: the system clock.
	Clock Clock
	// Logger is named "rtpbridge" by New. Nil discards logs.
	Logger *zap.Logger
	// OnTimeout is called at most once per session, from a timer goroutine,
	// when its media timeout expires, so the SIP layer can BYE both legs and
	// Close the session. It may run while Close is in progress.
	OnTimeout func(*Session)
	// OnNoInbound is called at most once per port pair of leg B, from a
	// timer goroutine, when the answered, unheld RTP session has sent at
	// least 10 packets out of leg B since its remote was set and accepted
	// none there for NoInboundAfter: the NAT race of nat-findings 4, where
	// the router gave the public port to the remote's early flow. The SIP
	// layer repairs it with Rebind and a re-INVITE, if the remote's SDP
	// says it sends at all.
	OnNoInbound func(*Session, Leg)
	// NoInboundAfter is that silence. Default DefaultNoInboundAfter;
	// negative disables the check.
	NoInboundAfter time.Duration
	// IO is IOGoroutines (the default) or IOEpoll. With IOEpoll the Bridge
	// binds the pools' sockets itself (Pool.ListenPacket is not used) and
	// PortPair.RTP and RTCP are nil.
	IO string
	// Reactors is how many reactor goroutines IOEpoll runs. Default 1:
	// on 2 cores one used less CPU per packet than two at 50 to 500 calls
	// (bench/, BenchmarkPacedRelay), since a second one mostly splits
	// the wake-ups that one would have shared.
	Reactors int
}

// Bridge creates Sessions and tracks them so Close can end them all.
type Bridge struct {
	cfg   Config
	rates [128]uint32
	log   *zap.Logger
	rx    *reactors // IOEpoll, until Close; guarded by mu after New

	mu       sync.Mutex
	sessions map[*Session]struct{}
	closed   bool
}

// New validates cfg and its pools.
func New(cfg Config) (*Bridge, error) {
	if cfg.LAN == nil || cfg.WAN == nil {
		return nil, fmt.Errorf("%w: LAN and WAN pools are required", ErrInvalidConfig)
	}
	if err := cfg.LAN.Validate(); err != nil {
		return nil, fmt.Errorf("LAN pool: %w", err)
	}
	if err := cfg.WAN.Validate(); err != nil {
		return nil, fmt.Errorf("WAN pool: %w", err)
	}
	if cfg.MediaTimeout < 0 || cfg.HoldTimeout < 0 || cfg.RelatchAfter < 0 {
		return nil, fmt.Errorf("%w: negative timeout", ErrInvalidConfig)
	}
	if cfg.MediaTimeout == 0 {
		cfg.MediaTimeout = DefaultMediaTimeout
	}
	if cfg.HoldTimeout == 0 {
		cfg.HoldTimeout = DefaultHoldTimeout
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if cfg.NoInboundAfter == 0 {
		cfg.NoInboundAfter = DefaultNoInboundAfter
	}
	if cfg.RelatchAfter == 0 {
		cfg.RelatchAfter = DefaultRelatchAfter
	}
	for leg, def := range [2]Latching{DefaultLANLatching, DefaultWANLatching} {
		if !cfg.Latching[leg].valid() {
			return nil, fmt.Errorf("%w: latching %d", ErrInvalidConfig, cfg.Latching[leg])
		}
		if cfg.Latching[leg] == LatchDefault {
			cfg.Latching[leg] = def
		}
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	switch cfg.IO {
	case "":
		cfg.IO = IOGoroutines
	case IOGoroutines:
	case IOEpoll:
		if !reactorSupported {
			return nil, fmt.Errorf("%w: IO %q needs Linux", ErrInvalidConfig, cfg.IO)
		}
	default:
		return nil, fmt.Errorf("%w: IO %q, want %q or %q", ErrInvalidConfig, cfg.IO, IOGoroutines, IOEpoll)
	}
	if cfg.Reactors < 0 {
		return nil, fmt.Errorf("%w: %d reactors", ErrInvalidConfig, cfg.Reactors)
	}
	if cfg.Reactors == 0 {
		cfg.Reactors = 1
	}
	b := &Bridge{cfg: cfg, log: cfg.Logger.Named("rtpbridge"), sessions: make(map[*Session]struct{})}
	// An array indexed by the 7-bit payload type keeps the map off the
	// packet path.
	for i := range b.rates {
		b.rates[i] = DefaultClockRate
	}
	for pt, rate := range cfg.ClockRates {
		if pt > 127 {
			return nil, fmt.Errorf("%w: payload type %d > 127", ErrInvalidConfig, pt)
		}
		b.rates[pt] = rate
	}
	if cfg.IO == IOEpoll {
		rx, err := newReactors(cfg.Reactors, b.log)
		if err != nil {
			return nil, err
		}
		if err := errors.Join(cfg.LAN.useReactors(rx), cfg.WAN.useReactors(rx)); err != nil {
			cfg.LAN.dropReactors(rx)
			cfg.WAN.dropReactors(rx)
			rx.close()
			return nil, err
		}
		b.rx = rx
	}
	return b, nil
}

// NewSession allocates a LAN and a WAN port pair and starts relaying between
// them, with the Config's latching rules. callID is only used in logs. The
// error wraps ErrPoolExhausted when either pool is out of ports.
func (b *Bridge) NewSession(callID string) (*Session, error) {
	return b.NewSessionWith(callID, SessionOptions{})
}

// NewSessionWith is NewSession with per-call options, such as the latching
// rule of the trunk the call uses.
func (b *Bridge) NewSessionWith(callID string, opts SessionOptions) (*Session, error) {
	latching := b.cfg.Latching
	for leg, l := range opts.Latching {
		if !l.valid() {
			return nil, fmt.Errorf("%w: latching %d", ErrInvalidConfig, l)
		}
		if l != LatchDefault {
			latching[leg] = l
		}
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, ErrBridgeClosed
	}
	lan, err := b.cfg.LAN.Allocate()
	if err != nil {
		return nil, b.poolErr("LAN", err)
	}
	wan, err := b.cfg.WAN.Allocate()
	if err != nil {
		// No packet was relayed on the LAN pair, so it needs no quarantine;
		// quarantining it would drain the LAN pool while the WAN pool is
		// exhausted.
		_ = lan.close(false)
		return nil, b.poolErr("WAN", err)
	}
	s := newSession(b, callID, lan, wan, latching)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = s.Close()
		return nil, ErrBridgeClosed
	}
	b.sessions[s] = struct{}{}
	b.mu.Unlock()
	s.start()
	return s, nil
}

// poolErr wraps an Allocate error. A pool closed by a concurrent Close is
// reported as ErrBridgeClosed, like a NewSession that starts after it.
func (b *Bridge) poolErr(pool string, err error) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed && errors.Is(err, ErrPoolClosed) {
		return ErrBridgeClosed
	}
	return fmt.Errorf("%s pool: %w", pool, err)
}

// Active is the number of open sessions.
func (b *Bridge) Active() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sessions)
}

// BridgeCounts is the port usage of both pools, in pairs, and the open
// sessions.
type BridgeCounts struct {
	LAN, WAN PoolCounts
	Shared   bool // one Pool serves both legs
	Sessions int
}

// MaxSessions is how many sessions the pools hold at once: every session
// takes one pair of each pool, two of a shared one.
func (c BridgeCounts) MaxSessions() int {
	if c.Shared {
		return c.WAN.Pairs / 2
	}
	return min(c.LAN.Pairs, c.WAN.Pairs)
}

// Limit is the pool that bounds MaxSessions: the WAN pool unless the LAN
// pool is smaller.
func (c BridgeCounts) Limit() (lan bool, p PoolCounts) {
	if !c.Shared && c.LAN.Pairs < c.WAN.Pairs {
		return true, c.LAN
	}
	return false, c.WAN
}

// Counts reports both pools' usage and the open sessions (status, metrics,
// capacity warnings, leak tests).
func (b *Bridge) Counts() BridgeCounts {
	return BridgeCounts{LAN: b.cfg.LAN.Counts(), WAN: b.cfg.WAN.Counts(), Shared: b.cfg.LAN == b.cfg.WAN, Sessions: b.Active()}
}

// NoSessionDrops is the number of packets discarded because they arrived on a
// quarantined port pair of either pool, i.e. for no session: mostly late
// media of ended calls. It only grows, also after Close, and is the SIP
// layer's linkmanager_rtp_dropped_total{reason="no_session"}. Drops of live
// sessions are in their Stats instead.
func (b *Bridge) NoSessionDrops() uint64 {
	n := b.cfg.LAN.NoSessionDrops()
	if b.cfg.WAN != b.cfg.LAN {
		n += b.cfg.WAN.NoSessionDrops()
	}
	return n
}

// Close closes every session, then both pools, which ends the quarantines
// and stops their drain readers, and makes NewSession fail with
// ErrBridgeClosed. It waits for every goroutine of the bridge.
func (b *Bridge) Close() error {
	b.mu.Lock()
	b.closed = true
	rx := b.rx
	b.rx = nil // a second Close does not stop the reactors again
	open := make([]*Session, 0, len(b.sessions))
	for s := range b.sessions {
		open = append(open, s)
	}
	b.mu.Unlock()
	var errs []error
	for _, s := range open {
		errs = append(errs, s.Close())
	}
	errs = append(errs, b.cfg.LAN.Close(), b.cfg.WAN.Close())
	if rx != nil {
		// Every socket is closed: the pools' quarantines have ended.
		rx.close()
	}
	return errors.Join(errs...)
}

func (b *Bridge) remove(s *Session) {
	b.mu.Lock()
	delete(b.sessions, s)
	b.mu.Unlock()
}
