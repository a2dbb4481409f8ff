package stunkeeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Source says who observed a Mapping.
type Source string

const (
	// SourceSTUN: a STUN Binding answer (from a STUN server, or from any
	// destination answered via Probe).
	SourceSTUN Source = "stun"
	// SourceRegistrar: the received/rport the registrar wrote into a Via.
	SourceRegistrar Source = "registrar"
)

// Mapping is one observation of our public address.
type Mapping struct {
	Addr   netip.AddrPort // public IP:port as seen by Via
	Via    netip.AddrPort // the destination that observed it (STUN server or registrar)
	Source Source
	At     time.Time
}

// NATBehaviour is the mapping behaviour (RFC 4787) the keeper inferred.
type NATBehaviour string

const (
	NATUnknown             NATBehaviour = "unknown"
	NATEndpointIndependent NATBehaviour = "endpoint-independent"
	// NATSymmetric: different destinations see different public
	// addresses, so an address learned from one is useless to another.
	NATSymmetric NATBehaviour = "symmetric"
)

const (
	// DefaultInterval is what the original LinkManager used.
	DefaultInterval = 10 * time.Second
	// DefaultPort is used for a server given without a port.
	DefaultPort = 3478

	// RFC 5389 section 7.2.1 retransmission, with Rc cut from 7 to 4 so a
	// dead server is given up after 5.5 s instead of 39.5 s: the keeper
	// has other servers to try and a keepalive schedule to keep.
	rto      = 500 * time.Millisecond
	maxTries = 4
	// lastWait plays the role of RFC 5389's Rm*RTO after the last send.
	lastWait = 2 * time.Second

	// maxBackoff caps the pause after every server failed, so a router
	// coming back is noticed within a minute without hammering dead
	// servers.
	maxBackoff = 60 * time.Second
	// natCheckEvery: a second destination is asked only now and then; one
	// answer per this many intervals is enough to notice a NAT change.
	natCheckEvery = 10
	// freshFactor: observations further apart than this many intervals
	// are not compared, a redial may lie between them.
	freshFactor = 2

	// minGap is the least time between two transactions Run starts on
	// its own.
	minGap = time.Second

	subBuffer       = 16
	maxObservations = 64
	resolveTimeout  = 5 * time.Second
)

// Config configures a Keeper. Zero values mean the documented default.
type Config struct {
	// Servers are STUN servers as "host:port" (port defaults to 3478),
	// tried in order; on failure the next one is used (wrapping around).
	// Empty is allowed: the keeper then only records Observe and Probe
	// results.
	Servers []string
	// Interval is the idle time after which a keepalive is sent, and the
	// longest time without any observation (default 10s).
	Interval time.Duration
	// Send writes b to the shared SIP socket. Required. It is called from
	// the keeper's and Probe callers' goroutines and must not block long.
	Send func(b []byte, to netip.AddrPort) error
	// Resolve turns a server's host:port into an address. Nil uses
	// net.DefaultResolver (IPv4). Literal IP servers are never resolved.
	Resolve func(ctx context.Context, hostport string) (netip.AddrPort, error)
	// Now is the clock for timestamps and idle math. Nil uses time.Now.
	Now func() time.Time
	// Logger; nil logs nothing. The keeper names it "stunkeeper".
	Logger *zap.Logger
}

// Stats is a snapshot of the keeper's counters.
type Stats struct {
	Requests       uint64        // Binding requests written, retransmits included
	Retransmits    uint64        // of those, retransmits
	IdleKeepalives uint64        // transactions started because the socket was idle
	Refreshes      uint64        // transactions started because nothing was learned for an Interval
	NATChecks      uint64        // periodic checks (the primary, then a second server if any)
	Probes         uint64        // Probe calls
	Responses      uint64        // success responses matched to a transaction
	ErrorResponses uint64        // error responses (matched or not)
	Timeouts       uint64        // transactions that got no answer
	Malformed      uint64        // packets that are not valid STUN or lack an address
	Unmatched      uint64        // valid STUN that answers none of our transactions
	SendErrors     uint64        // Send returned an error
	ResolveErrors  uint64        // a server name did not resolve
	Failovers      uint64        // switches to the next server
	Changes        uint64        // change events (first observations included)
	LastRTT        time.Duration // of the last transaction answered without retransmit
}

// server is Run-loop state; only the Run goroutine touches it.
type server struct {
	hostport string
	literal  bool
	addr     netip.AddrPort // resolved; zero until resolved or after failure
	failing  bool           // for logging once per state change
}

const (
	stateNew int32 = iota
	stateRunning
	stateClosed
)

// Keeper keeps the NAT mapping of a socket it does not own. All methods
// are safe for concurrent use.
type Keeper struct {
	send     func([]byte, netip.AddrPort) error
	resolve  func(context.Context, string) (netip.AddrPort, error)
	now      func() time.Time
	log      *zap.Logger
	interval time.Duration

	lastSent atomic.Int64 // Now().UnixNano() of the last write on the socket
	idleCap  atomic.Int64 // LimitIdle's cap on the idle keepalive, ns; 0: none
	state    atomic.Int32
	done     chan struct{} // closed when Run returns
	kick     chan struct{} // Refresh asks Run to query now
	wake     chan struct{} // LimitIdle asks Run to recompute its deadline
	reconf   chan []server // SetServers hands Run a new server list
	nServers atomic.Int32  // len(servers), for callers outside Run

	// Owned by the Run goroutine.
	servers      []server
	cur          int
	roundFails   int
	backoffStep  int
	backoffUntil time.Time
	backingOff   bool
	retryNow     bool
	notBefore    time.Time
	nextNATCheck time.Time

	mu        sync.Mutex
	txs       waiters[result]
	obs       map[netip.AddrPort]Mapping // last observation per destination
	lastLearn time.Time
	lastShift time.Time      // last time a destination saw a different address
	primary   netip.AddrPort // the server Run last got an answer from
	nat       NATBehaviour
	subs      map[chan Mapping]struct{}
	stats     Stats
	// sendFailing logs Send errors once per state change.
	sendFailing bool
}

// New validates cfg and returns a Keeper. Nothing is sent before Run or
// Probe is called.
func New(cfg Config) (*Keeper, error) {
	if cfg.Send == nil {
		return nil, ErrNoSend
	}
	k := &Keeper{
		send:     cfg.Send,
		resolve:  cfg.Resolve,
		now:      cfg.Now,
		log:      cfg.Logger,
		interval: cfg.Interval,
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		wake:     make(chan struct{}, 1),
		reconf:   make(chan []server, 1),
		obs:      make(map[netip.AddrPort]Mapping),
		nat:      NATUnknown,
		subs:     make(map[chan Mapping]struct{}),
	}
	if k.interval <= 0 {
		k.interval = DefaultInterval
	}
	if k.now == nil {
		k.now = time.Now
	}
	if k.log == nil {
		k.log = zap.NewNop()
	}
	k.log = k.log.Named("stunkeeper")
	if k.resolve == nil {
		k.resolve = resolveIPv4
	}
	for _, s := range cfg.Servers {
		srv, err := parseServer(s)
		if err != nil {
			return nil, err
		}
		k.servers = append(k.servers, srv)
	}
	k.nServers.Store(int32(len(k.servers)))
	return k, nil
}

func parseServer(s string) (server, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// A bare host is common in configs; STUN has a well-known port.
		var ae *net.AddrError
		if !errors.As(err, &ae) || ae.Err != "missing port in address" {
			return server{}, fmt.Errorf("%w: %q: %v", ErrBadServer, s, err)
		}
		host, port = strings.Trim(s, "[]"), strconv.Itoa(DefaultPort)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || host == "" {
		return server{}, fmt.Errorf("%w: %q", ErrBadServer, s)
	}
	srv := server{hostport: net.JoinHostPort(host, port)}
	if ip, err := netip.ParseAddr(host); err == nil {
		srv.literal = true
		srv.addr = netip.AddrPortFrom(ip.Unmap(), uint16(p))
	}
	return srv, nil
}

func resolveIPv4(ctx context.Context, hostport string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("no IPv4 address for %s", host)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(p)), nil
}

// NoteSent records that the socket just wrote a packet (SIP or STUN).
// The socket owner calls it on every write; it is a single atomic store.
// The destination is not used yet: the NAT mapping is kept per local
// port, which any write refreshes.
func (k *Keeper) NoteSent(to netip.AddrPort) {
	k.lastSent.Store(k.now().UnixNano())
}

// Observe records the address a registrar saw (Via received/rport).
// Source defaults to SourceRegistrar and At to now. It counts as having
// learned the address for this interval.
func (k *Keeper) Observe(m Mapping) {
	if !m.Addr.IsValid() || !m.Via.IsValid() {
		k.log.Debug("ignoring observation without address", zap.Stringer("public_addr", m.Addr), zap.Stringer("via", m.Via))
		return
	}
	m.Addr = unmap(m.Addr)
	m.Via = unmap(m.Via)
	if m.Source == "" {
		m.Source = SourceRegistrar
	}
	if m.At.IsZero() {
		m.At = k.now()
	}
	k.record(m)
}

// Public returns the best current public address: the answer of the
// server Run currently uses while it is fresh (two intervals), else the
// freshest STUN answer, else the freshest registrar observation. A STUN
// answer older than two intervals loses to a newer registrar observation,
// so a redial during a STUN outage still shows. Preferring Run's server
// keeps Public steady behind a symmetric NAT, where the occasional
// NAT-check server sees another address.
func (k *Keeper) Public() (Mapping, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.publicLocked()
}

func (k *Keeper) publicLocked() (Mapping, bool) {
	fresh := freshFactor * k.interval
	now := k.now()
	if p, ok := k.obs[k.primary]; ok && k.primary.IsValid() && now.Sub(p.At) <= fresh {
		return p, true
	}
	newer := func(o, than Mapping) bool {
		// Ties (same instant) are broken by address so Public is stable.
		return !than.Addr.IsValid() || o.At.After(than.At) || (o.At.Equal(than.At) && o.Via.Compare(than.Via) < 0)
	}
	var st, reg Mapping
	for _, o := range k.obs {
		if o.Source == SourceRegistrar {
			if newer(o, reg) {
				reg = o
			}
		} else if newer(o, st) {
			st = o
		}
	}
	stale := now.Sub(st.At) > fresh
	switch {
	case st.Addr.IsValid() && (!reg.Addr.IsValid() || !stale || !reg.At.After(st.At)):
		return st, true
	case reg.Addr.IsValid():
		return reg, true
	}
	return Mapping{}, false
}

// Observations returns the last observation per destination.
func (k *Keeper) Observations() []Mapping {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Mapping, 0, len(k.obs))
	for _, o := range k.obs {
		out = append(out, o)
	}
	return out
}

// Subscribe returns a channel of change events and a func that ends the
// subscription (and closes the channel). The keeper never blocks on a
// slow reader: when the buffer is full the oldest event is dropped, so a
// reader should treat events as "look again" and may call Public. The
// channel is closed when Run returns.
func (k *Keeper) Subscribe() (<-chan Mapping, func()) {
	ch := make(chan Mapping, subBuffer)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state.Load() == stateClosed {
		close(ch)
		return ch, func() {}
	}
	k.subs[ch] = struct{}{}
	return ch, func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if _, ok := k.subs[ch]; ok {
			delete(k.subs, ch)
			close(ch)
		}
	}
}

// NAT returns the mapping behaviour inferred so far. It keeps the last
// verdict until two fresh observations from different destinations allow
// a new one.
func (k *Keeper) NAT() NATBehaviour {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.nat
}

// Stats returns a snapshot of the counters.
func (k *Keeper) Stats() Stats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stats
}

// SetServers replaces the STUN servers (a config reload). Run switches at
// once, starting with the first new server; observations already made
// stay valid. A server that does not parse rejects the whole list.
func (k *Keeper) SetServers(servers []string) error {
	list := make([]server, 0, len(servers))
	for _, s := range servers {
		srv, err := parseServer(s)
		if err != nil {
			return err
		}
		list = append(list, srv)
	}
	if k.state.Load() == stateClosed {
		return ErrClosed
	}
	// Replace a list Run has not taken yet: the newest one wins.
	for {
		select {
		case k.reconf <- list:
			k.nServers.Store(int32(len(list)))
			return nil
		default:
		}
		select {
		case <-k.reconf:
		default:
		}
	}
}

// LimitIdle caps the idle time after which a keepalive is sent below
// Config.Interval: a NAT that forgets idle mappings sooner (a measured
// binding lifetime, see MeasureLifetime) would otherwise lose the trunk's
// mapping between keepalives. Only the idle keepalive follows the cap;
// how often the address is re-learned stays at Interval. 0 removes it.
func (k *Keeper) LimitIdle(d time.Duration) {
	k.idleCap.Store(int64(max(d, 0)))
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// KeepaliveInterval is the idle time after which Run sends a keepalive:
// Interval, or LimitIdle's cap when that is shorter.
func (k *Keeper) KeepaliveInterval() time.Duration {
	if c := time.Duration(k.idleCap.Load()); c > 0 && c < k.interval {
		return c
	}
	return k.interval
}

// Refresh asks Run to query the current server now, ignoring idle time
// and backoff; use it when SIP suggests the address changed (a REGISTER
// timed out, say). It does not wait: the answer shows in Public and as a
// change event.
func (k *Keeper) Refresh() error {
	if k.nServers.Load() == 0 {
		return ErrNoServers
	}
	if k.state.Load() == stateClosed {
		return ErrClosed
	}
	select {
	case k.kick <- struct{}{}:
	default:
	}
	return nil
}

// Probe runs one Binding transaction to any destination (a STUN server,
// or a registrar that answers STUN on its SIP port, which also keeps that
// NAT flow alive) and returns the address it saw. Successful probes are
// recorded as observations with Via = to. It can be called concurrently
// with Run, and before it; after Run returns it fails with ErrClosed.
func (k *Keeper) Probe(ctx context.Context, to netip.AddrPort) (netip.AddrPort, error) {
	if k.state.Load() == stateClosed {
		return netip.AddrPort{}, ErrClosed
	}
	if !to.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("stunkeeper: probe: invalid destination %v", to)
	}
	k.mu.Lock()
	k.stats.Probes++
	k.mu.Unlock()
	addr, err := k.transact(ctx, to)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("stunkeeper: probe %s: %w", to, err)
	}
	k.record(Mapping{Addr: addr, Via: unmap(to), Source: SourceSTUN, At: k.now()})
	return addr, nil
}

// unmap keeps 4in6 forms (as net.UDPAddr often yields) from splitting one
// destination into two map keys.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
