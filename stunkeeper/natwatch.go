package stunkeeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// DefaultNATWatchSettle: a redial brings a burst of change events
	// (STUN, then the registrar); one test after it settles is enough.
	DefaultNATWatchSettle = 2 * time.Second
	// DefaultNATWatchMinGap keeps a flapping NAT from running the test
	// back to back; a change in the gap is tested when it ends.
	DefaultNATWatchMinGap = 30 * time.Second
)

// NATWatchConfig configures a NATWatch.
type NATWatchConfig struct {
	// Keeper's change events of the public address trigger a new test.
	// Required.
	Keeper *Keeper
	// Servers as for NATTestConfig.
	Servers []string
	// Listen opens one test socket (an ephemeral port on the SIP
	// socket's IP, never the SIP socket). It is called twice per test;
	// the watch closes both sockets when the test is done. Required.
	Listen func() (net.PacketConn, error)
	// PortMin, PortMax: the Internet-side RTP pool, for the advice line.
	PortMin, PortMax int
	// PortForward: the router forwards the SIP port and the pool to us
	// (nat.port_forward); every report carries it (NATReport.PortForward).
	PortForward bool
	// Settle and MinGap default to DefaultNATWatchSettle and
	// DefaultNATWatchMinGap.
	Settle, MinGap time.Duration
	// Lifetime: after each test against an RFC 5780 server, measure the
	// binding lifetime (up to LifetimeMax, default DefaultLifetimeMax)
	// and cap the keeper's idle keepalive to it (Keeper.LimitIdle).
	Lifetime    bool
	LifetimeMax time.Duration
	Logger      *zap.Logger
}

// NATWatch runs the NAT self-test at start and again whenever the
// keeper reports that the public address changed (a redial, another
// router), keeps the last report for /status and logs the verdict as one
// line in an admin's words when it changes.
type NATWatch struct {
	cfg NATWatchConfig // Servers is guarded by mu (SetServers)
	log *zap.Logger

	mu       sync.Mutex
	last     NATReport
	have     bool
	tests    uint64
	lifetime Lifetime
	haveLT   bool
}

// NewNATWatch validates cfg.
func NewNATWatch(cfg NATWatchConfig) (*NATWatch, error) {
	if cfg.Keeper == nil || cfg.Listen == nil {
		return nil, ErrNATWatchConfig
	}
	if err := checkServers(cfg.Servers); err != nil {
		return nil, err
	}
	cfg.Servers = slices.Clone(cfg.Servers)
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultNATWatchSettle
	}
	if cfg.MinGap <= 0 {
		cfg.MinGap = DefaultNATWatchMinGap
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &NATWatch{cfg: cfg, log: log.Named("stunkeeper").Named("natwatch")}, nil
}

// Last returns the newest report and how many tests ran; false before
// the first test finished.
func (w *NATWatch) Last() (NATReport, uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.tests, w.have
}

// PortForward reports NATWatchConfig.PortForward: the admin's word that
// the router forwards the SIP port and the pool, true before any test.
func (w *NATWatch) PortForward() bool { return w.cfg.PortForward }

// SetServers replaces the STUN servers (a config reload); the next test
// uses them. A list that does not parse, or an empty one, is refused.
func (w *NATWatch) SetServers(servers []string) error {
	if err := checkServers(servers); err != nil {
		return err
	}
	w.mu.Lock()
	w.cfg.Servers = slices.Clone(servers)
	w.mu.Unlock()
	return nil
}

func checkServers(servers []string) error {
	if len(servers) == 0 {
		return ErrNoServers
	}
	for _, s := range servers {
		if _, err := parseServer(s); err != nil {
			return err
		}
	}
	return nil
}

// LastLifetime returns the newest measured binding lifetime; false
// before the first measurement (or without Lifetime).
func (w *NATWatch) LastLifetime() (Lifetime, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lifetime, w.haveLT
}

// Run tests once, then after every public address change, until ctx is
// done or the keeper stops; it returns nil then. All its work runs on the
// calling goroutine.
func (w *NATWatch) Run(ctx context.Context) error {
	events, unsubscribe := w.cfg.Keeper.Subscribe()
	defer unsubscribe()
	timer := time.NewTimer(0) // the test at start
	defer timer.Stop()
	var lastTest time.Time
	// known is the public address last seen. Read after subscribing, so
	// an address learned before Run started is not taken for a change,
	// whichever came first.
	var known netip.AddrPort
	if pub, ok := w.cfg.Keeper.Public(); ok {
		known = pub.Addr
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if pub, _ := w.cfg.Keeper.Public(); ev.Via != pub.Via || ev.Addr == known {
				// Another destination's view (the NAT-check server behind
				// a symmetric NAT sees a new port every time), or the
				// same address from another server: no news.
				continue
			}
			first := !known.IsValid()
			known = ev.Addr
			if first {
				// Learning the address is no change; the test at start
				// covers it.
				continue
			}
			// Wait for the burst to settle and for the gap since the
			// last test; a later event within that time moves nothing.
			at := time.Now().Add(w.cfg.Settle)
			if next := lastTest.Add(w.cfg.MinGap); next.After(at) {
				at = next
			}
			timer.Reset(time.Until(at))
		case <-timer.C:
			lastTest = time.Now()
			w.test(ctx)
		}
	}
}

func (w *NATWatch) test(ctx context.Context) {
	var conns []net.PacketConn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range 2 {
		c, err := w.cfg.Listen()
		if err != nil {
			w.log.Warn("nat test: cannot open a test socket", zap.Error(err))
			return
		}
		conns = append(conns, c)
	}
	w.mu.Lock()
	servers := w.cfg.Servers
	w.mu.Unlock()
	r, err := NATTest(ctx, NATTestConfig{Servers: servers, Mapping: conns[0], Filtering: conns[1], Logger: w.log})
	if ctx.Err() != nil {
		return
	}
	r.PortForward = w.cfg.PortForward
	if err != nil && !errors.Is(err, ErrNoAnswer) {
		w.log.Warn("nat test failed", zap.Error(err))
		return
	}
	w.mu.Lock()
	prev, had := w.last, w.have
	w.last, w.have = r, true
	w.tests++
	w.mu.Unlock()

	fields := []zap.Field{zap.String("verdict", string(r.Verdict)), zap.String("mapping", string(r.Mapping)),
		zap.String("filtering", string(r.Filtering)), zap.String("hairpin", string(r.Hairpin)),
		zap.Stringer("test_public_addr", r.Public), zap.String("rfc5780_server", r.Server), zap.Duration("took", r.Took)}
	msg := "NAT: " + r.Advice(w.cfg.PortMin, w.cfg.PortMax)
	switch {
	case had && prev.Verdict == r.Verdict && prev.Mapping == r.Mapping && prev.Filtering == r.Filtering:
		// The same NAT after a redial: no news for the admin.
		w.log.Debug(msg, fields...)
	case r.Works():
		w.log.Info(msg, fields...)
	default:
		w.log.Warn(msg, fields...)
	}
	if w.cfg.Lifetime && r.Server != "" {
		w.measureLifetime(ctx, r.Primary)
	}
}

// measureLifetime sizes the keeper's idle keepalive by the NAT's
// binding lifetime.
func (w *NATWatch) measureLifetime(ctx context.Context, server netip.AddrPort) {
	lt, err := MeasureLifetime(ctx, LifetimeConfig{Server: server, Listen: w.cfg.Listen, Max: w.cfg.LifetimeMax})
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		w.log.Warn("NAT binding lifetime not measured", zap.Error(err))
		return
	}
	w.mu.Lock()
	same := w.haveLT && w.lifetime == lt
	w.lifetime, w.haveLT = lt, true
	w.mu.Unlock()
	k := w.cfg.Keeper
	k.LimitIdle(lt.SafeInterval())
	fields := []zap.Field{zap.Duration("alive", lt.Alive), zap.Duration("expired", lt.Expired),
		zap.Duration("interval", k.interval), zap.Duration("keepalive", k.KeepaliveInterval())}
	switch {
	case same:
		w.log.Debug("NAT binding lifetime unchanged", fields...)
	case k.KeepaliveInterval() < k.interval:
		w.log.Warn(fmt.Sprintf("NAT binding lifetime %v: idle mappings are gone sooner than stun.interval %v; keepalive every %v instead",
			lt, k.interval, k.KeepaliveInterval()), fields...)
	default:
		w.log.Info(fmt.Sprintf("NAT binding lifetime %v: a keepalive every %v (stun.interval) keeps the mapping", lt, k.interval), fields...)
	}
}

// String is the report as /status shows it in one line.
func (r NATReport) String() string {
	return fmt.Sprintf("%s (mapping %s, filtering %s, hairpin %s)", r.Verdict, r.Mapping, r.Filtering, r.Hairpin)
}
