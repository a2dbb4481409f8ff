package portmap

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Defaults of Config.
const (
	DefaultLifetime       = 2 * time.Hour // RFC 6886 §3.3 recommends 7200 s
	DefaultRequestTimeout = time.Second   // one request to the gateway, retries included
	DefaultReprobe        = 5 * time.Minute
	retryDelay            = 10 * time.Second // after a failed renewal
	closeTimeout          = 3 * time.Second  // deleting every mapping on shutdown
)

// Config is a Mapper's setup.
type Config struct {
	Gateway netip.Addr // the router; zero: the default route's gateway
	Local   netip.Addr // our LAN address, named as the internal client (UPnP)
	// Ports are mapped for as long as Run runs (the SIP port).
	Ports          []uint16
	Lifetime       time.Duration // asked for; default DefaultLifetime
	RequestTimeout time.Duration // default DefaultRequestTimeout
	Reprobe        time.Duration // ask again this often while no gateway answers; default DefaultReprobe
	// Probe finds the gateway's protocol; nil uses Discover.
	Probe func(ctx context.Context, gateway, local netip.Addr, timeout time.Duration) (Protocol, error)
	// Now and After are the clock; nil uses time.Now and time.After.
	Now    func() time.Time
	After  func(time.Duration) <-chan time.Time
	Logger *zap.Logger
}

// Status is what /status shows.
type Status struct {
	Protocol string    `json:"protocol,omitempty"` // nat-pmp | upnp; empty while none answers
	Gateway  string    `json:"gateway,omitempty"`
	External string    `json:"external_ip,omitempty"`
	Mappings []Mapping `json:"mappings,omitempty"`
	Error    string    `json:"last_error,omitempty"`
	// Dropped counts datagrams from the gateway that answered none of our
	// requests (PCP only: short, another version, opcode or nonce).
	Dropped uint64 `json:"dropped,omitempty"`
}

// Mapping is one lease as /status shows it.
type Mapping struct {
	Internal uint16    `json:"internal_port"`
	External string    `json:"external"`
	Expires  time.Time `json:"expires"`
}

// Mapper holds the leases of one gateway. Add and Remove may be called from
// any goroutine; Run owns every renewal and deletion.
type Mapper struct {
	cfg Config
	log *zap.Logger

	req sync.Mutex // serialises requests to the gateway, so a delete never overtakes a re-add

	mu      sync.Mutex
	proto   Protocol         // nil while no gateway answers
	ext     netip.Addr       // the gateway's public address
	leases  map[uint16]Lease // by internal port
	pending []Lease          // removed, not yet deleted at the gateway
	lastErr error
	closed  bool
	wake    chan struct{}
}

// New checks cfg and fills in defaults. It sends nothing: Run does.
func New(cfg Config) (*Mapper, error) {
	if cfg.Gateway == (netip.Addr{}) {
		gw, err := DefaultGateway()
		if err != nil {
			return nil, err
		}
		cfg.Gateway = gw
	}
	if !cfg.Gateway.Is4() {
		return nil, fmt.Errorf("%w: gateway %s is not IPv4", ErrNoGateway, cfg.Gateway)
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Reprobe <= 0 {
		cfg.Reprobe = DefaultReprobe
	}
	if cfg.Probe == nil {
		cfg.Probe = Discover
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Mapper{cfg: cfg, log: log.Named("portmap"), leases: map[uint16]Lease{}, wake: make(chan struct{}, 1)}, nil
}

// Add maps port now (one request to the gateway, bounded by the request
// timeout) and keeps the lease renewed until Remove. It returns the public
// address to advertise; ErrNoGateway while no gateway has answered.
func (m *Mapper) Add(ctx context.Context, port uint16) (netip.AddrPort, error) {
	m.mu.Lock()
	proto, closed := m.proto, m.closed
	m.mu.Unlock()
	if closed {
		return netip.AddrPort{}, ErrClosed
	}
	if proto == nil {
		return netip.AddrPort{}, ErrNoGateway
	}
	m.req.Lock()
	defer m.req.Unlock()
	l, err := m.request(ctx, proto, port, port)
	if err != nil {
		m.setErr(err)
		return netip.AddrPort{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		// Close ran while we asked: delete what we were just granted
		// (Close waits for m.req, so it has not seen this lease).
		m.mu.Unlock()
		_ = m.unmap(ctx, proto, l)
		m.mu.Lock()
		return netip.AddrPort{}, ErrClosed
	}
	m.leases[port] = l
	m.pending = slices.DeleteFunc(m.pending, func(p Lease) bool { return p.Internal == port })
	m.poke()
	return l.External, nil
}

// request asks proto for internal → wish and makes a lease of the answer.
func (m *Mapper) request(ctx context.Context, proto Protocol, internal, wish uint16) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	var got uint16
	var addr netip.Addr // as the grant names it (PCP), else the gateway's
	var life time.Duration
	var err error
	if g, ok := proto.(addrGranter); ok {
		var ap netip.AddrPort
		ap, life, err = g.MapAddr(ctx, internal, wish, m.cfg.Lifetime)
		got, addr = ap.Port(), ap.Addr()
	} else {
		got, life, err = proto.Map(ctx, internal, wish, m.cfg.Lifetime)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("portmap: %s map %d: %w", proto.Name(), internal, err)
	}
	if got == 0 || life <= 0 {
		return Lease{}, fmt.Errorf("%w: %s map %d: port %d, lifetime %s", ErrNotMapped, proto.Name(), internal, got, life)
	}
	if addr.IsValid() {
		m.setExt(addr)
	}
	m.mu.Lock()
	ext := m.ext
	m.mu.Unlock()
	return Lease{Internal: internal, External: netip.AddrPortFrom(ext, got), Granted: m.cfg.Now(), Lifetime: life}, nil
}

// Remove stops renewing port's lease; Run deletes it at the gateway.
func (m *Mapper) Remove(port uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.leases[port]; ok {
		delete(m.leases, port)
		m.pending = append(m.pending, l)
		m.poke()
	}
}

// Lookup is port's public address while a lease holds it.
func (m *Mapper) Lookup(port uint16) (netip.AddrPort, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.leases[port]
	return l.External, ok
}

// Status is a snapshot for /status.
func (m *Mapper) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Gateway: m.cfg.Gateway.String()}
	if m.proto != nil {
		st.Protocol = m.proto.Name()
		if m.ext.IsValid() { // PCP's comes with its first grant
			st.External = m.ext.String()
		}
		if d, ok := m.proto.(interface{ Dropped() uint64 }); ok {
			st.Dropped = d.Dropped()
		}
	}
	if m.lastErr != nil {
		st.Error = m.lastErr.Error()
	}
	for _, l := range m.leases {
		st.Mappings = append(st.Mappings, Mapping{Internal: l.Internal, External: l.External.String(), Expires: l.Expires()})
	}
	slices.SortFunc(st.Mappings, func(a, b Mapping) int { return int(a.Internal) - int(b.Internal) })
	return st
}

// setExt notes the gateway's public address.
func (m *Mapper) setExt(a netip.Addr) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a != m.ext {
		if m.ext.IsValid() {
			m.log.Info("router's public address changed", zap.Stringer("old", m.ext), zap.Stringer("new", a))
		}
		m.ext = a
	}
}

func (m *Mapper) currentProto() Protocol {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proto
}

func (m *Mapper) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Mapper) setErr(err error) {
	m.mu.Lock()
	m.lastErr = err
	m.mu.Unlock()
}

// Run finds the gateway's protocol (again every Reprobe while none
// answers), maps Config.Ports, renews every lease before it expires and
// deletes removed ones. When ctx ends it deletes every mapping (Close) and
// returns nil.
func (m *Mapper) Run(ctx context.Context) error {
	defer m.Close()
	var nextProbe, retryAfter time.Time
	renewAll := false
	for {
		m.mu.Lock()
		proto, closed := m.proto, m.closed
		m.mu.Unlock()
		if closed {
			return nil
		}
		now := m.cfg.Now()
		if proto == nil && !now.Before(nextProbe) {
			if !m.probe(ctx) {
				nextProbe = now.Add(m.cfg.Reprobe)
			}
		}
		m.deletePending(ctx)
		if m.renew(ctx, now, renewAll) {
			retryAfter = now.Add(retryDelay)
		}
		renewAll = false
		var lost <-chan struct{}
		if sl, ok := m.currentProto().(stateLoser); ok {
			lost = sl.Lost()
		}

		m.mu.Lock()
		at, ok := nextWake(m.leases)
		if m.proto == nil {
			if !ok || nextProbe.Before(at) {
				at, ok = nextProbe, true
			}
		}
		m.mu.Unlock()
		if ok && at.Before(retryAfter) {
			at = retryAfter
		}
		var timer <-chan time.Time
		if ok {
			timer = m.cfg.After(max(at.Sub(m.cfg.Now()), 0))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-timer:
		case <-lost:
			m.log.Warn("the router lost its port mappings (restarted?); mapping them again")
			renewAll = true
		}
	}
}

// probe asks the gateway which protocol it speaks and maps Config.Ports.
func (m *Mapper) probe(ctx context.Context) bool {
	proto, err := m.cfg.Probe(ctx, m.cfg.Gateway, m.cfg.Local, m.cfg.RequestTimeout)
	if err != nil {
		m.mu.Lock()
		first := m.lastErr == nil
		m.lastErr = err
		m.mu.Unlock()
		if first {
			m.log.Info("no port mapping from the router; inbound media behind a symmetric NAT needs a port forward",
				zap.Stringer("gateway", m.cfg.Gateway), zap.Error(err))
		}
		return false
	}
	var ext netip.Addr // PCP's comes with the first grant
	if _, ok := proto.(addrGranter); !ok {
		var err error
		if ext, err = m.externalAddr(ctx, proto); err != nil {
			m.setErr(err)
			return false
		}
	}
	m.mu.Lock()
	m.proto, m.ext, m.lastErr = proto, ext, nil
	m.mu.Unlock()
	m.log.Info("router grants port mappings", zap.String("protocol", proto.Name()), zap.Stringer("gateway", m.cfg.Gateway))
	for _, p := range m.cfg.Ports {
		if a, err := m.Add(ctx, p); err != nil {
			m.log.Warn("port mapping refused", zap.Uint16("port", p), zap.Error(err))
		} else {
			m.log.Info("port mapped", zap.Uint16("port", p), zap.Stringer("external", a))
		}
	}
	return true
}

func (m *Mapper) externalAddr(ctx context.Context, proto Protocol) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	ext, err := proto.ExternalAddr(ctx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: %s external address: %w", proto.Name(), err)
	}
	if !ext.Is4() || ext.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("%w: %s external address %s", ErrBadResponse, proto.Name(), ext)
	}
	return ext.Unmap(), nil
}

// renew renews every due lease (every lease with all: the gateway lost
// them); it reports whether one failed. A lease that could not be renewed
// before it expired is dropped.
func (m *Mapper) renew(ctx context.Context, now time.Time, all bool) (failed bool) {
	m.mu.Lock()
	proto, ports := m.proto, due(m.leases, now)
	if all {
		ports = slices.Sorted(maps.Keys(m.leases))
	}
	m.mu.Unlock()
	if proto == nil || len(ports) == 0 {
		return false
	}
	// The public address may have changed (a redial): read it once per
	// round (PCP's grants name it themselves).
	if _, granter := proto.(addrGranter); !granter {
		if ext, err := m.externalAddr(ctx, proto); err == nil {
			m.setExt(ext)
		}
	}
	for _, p := range ports {
		m.req.Lock()
		m.mu.Lock()
		old, ok := m.leases[p]
		m.mu.Unlock()
		if !ok { // removed meanwhile
			m.req.Unlock()
			continue
		}
		l, err := m.request(ctx, proto, p, old.External.Port())
		m.mu.Lock()
		if _, still := m.leases[p]; still {
			switch {
			case err == nil:
				if l.External != old.External {
					m.log.Warn("mapping moved on renewal", zap.Uint16("port", p),
						zap.Stringer("old", old.External), zap.Stringer("new", l.External))
				}
				m.leases[p] = l
			case !now.Before(old.Expires()):
				delete(m.leases, p)
				m.log.Warn("mapping lost: renewal failed until it expired", zap.Uint16("port", p), zap.Error(err))
			}
		}
		if err != nil {
			m.lastErr, failed = err, true
		}
		m.mu.Unlock()
		m.req.Unlock()
	}
	return failed
}

// deletePending deletes removed leases at the gateway, unless re-added.
func (m *Mapper) deletePending(ctx context.Context) {
	m.mu.Lock()
	proto, pending := m.proto, m.pending
	m.pending = nil
	m.mu.Unlock()
	if proto == nil {
		return
	}
	for i, l := range pending {
		m.req.Lock()
		m.mu.Lock()
		_, readded := m.leases[l.Internal]
		m.mu.Unlock()
		var err error
		if !readded {
			err = m.unmap(ctx, proto, l)
		}
		m.req.Unlock()
		if ctx.Err() != nil {
			// Stopping: the rest go back, and Close (which Run defers)
			// deletes them within its own bound; dropped here, they would
			// stay open at the router for their whole lifetime.
			m.mu.Lock()
			m.pending = append(m.pending, pending[i:]...)
			m.mu.Unlock()
			return
		}
		if err != nil {
			m.log.Debug("deleting a mapping failed; it expires by itself", zap.Uint16("port", l.Internal), zap.Error(err))
		}
	}
}

func (m *Mapper) unmap(ctx context.Context, proto Protocol, l Lease) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.RequestTimeout)
	defer cancel()
	return proto.Unmap(ctx, l.Internal, l.External.Port())
}

// Close deletes every mapping at the gateway (bounded in time) and makes
// Add fail with ErrClosed. It may be called more than once.
func (m *Mapper) Close() error {
	m.mu.Lock()
	m.closed = true
	proto := m.proto
	all := m.pending
	m.pending = nil
	for _, l := range m.leases {
		all = append(all, l)
	}
	clear(m.leases)
	m.mu.Unlock()
	if proto == nil || len(all) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	m.req.Lock()
	defer m.req.Unlock()
	var errs []error
	for _, l := range all {
		if err := m.unmap(ctx, proto, l); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		m.log.Info("port mappings deleted", zap.Int("mappings", len(all)))
	}
	return errors.Join(errs...)
}
