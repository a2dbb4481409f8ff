package trunk

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/policy"
)

// Options is one provider account as configured.
type Options struct {
	Name          string
	Host          string // registrar or outbound proxy host: where requests go
	Port          int    // 0: SRV _sip._udp, then 5060
	RegistrarHost string // also allowed to send us requests, if it differs from Host
	Domain        string
	Username      string
	AuthUsername  string
	Password      string
	Expires       time.Duration
	RefreshMax    time.Duration // at most this between two REGISTERs; 0: as granted
	Register      bool
	Keepalive     string
	DIDs          []string
	Prefixes      []string // outbound_prefixes; none: every number
	NumberFormat  string   // e164, e164-no-plus, national or as-is
	CountryCode   string
	Latching      string // rtp_latching for the trunk's media; opaque here, the relay's rule
	// caller_id: the From user (account or number), the identity header
	// (none, pai or ppi) and the calling number's format.
	CallerFromUser string
	CallerAsserted string
	CallerFormat   string
	DIDFrom        string // did_from: auto, ruri, to or header:NAME
	// Outbound is what the PBX may dial on the trunk, MaxCalls its cap
	// on calls at once (0: none); the B2BUA applies them.
	Outbound policy.Rules
	MaxCalls int
	// Allow are the provider's other SBCs: requests and responses from
	// them are this trunk's, besides the registrar's and proxy's.
	Allow []netip.Prefix
}

// Same reports whether a reload may keep a trunk running with b.
func (a Options) Same(b Options) bool {
	return a.Name == b.Name && a.Host == b.Host && a.Port == b.Port && a.RegistrarHost == b.RegistrarHost &&
		a.Domain == b.Domain && a.Username == b.Username && a.AuthUsername == b.AuthUsername &&
		a.Password == b.Password && a.Expires == b.Expires && a.RefreshMax == b.RefreshMax && a.Register == b.Register &&
		a.Keepalive == b.Keepalive && slices.Equal(a.DIDs, b.DIDs) && slices.Equal(a.Prefixes, b.Prefixes) &&
		a.NumberFormat == b.NumberFormat && a.CountryCode == b.CountryCode && a.Latching == b.Latching &&
		a.CallerFromUser == b.CallerFromUser && a.CallerAsserted == b.CallerAsserted && a.CallerFormat == b.CallerFormat &&
		a.DIDFrom == b.DIDFrom && slices.Equal(a.Outbound.Allow, b.Outbound.Allow) &&
		slices.Equal(a.Outbound.Deny, b.Outbound.Deny) && a.MaxCalls == b.MaxCalls &&
		slices.Equal(a.Allow, b.Allow)
}

// Deps is what a trunk needs from the daemon: the shared socket, STUN and
// DNS, all injected so tests can fake them.
type Deps struct {
	Do        TxFunc                             // one transaction from the shared socket
	Probe     Prober                             // STUN to the registrar's SIP port
	Send      func([]byte, netip.AddrPort) error // raw datagram (CRLF keepalive)
	LastSent  func(netip.AddrPort) time.Time     // when the socket last sent to a flow
	Keeper    PublicAddrs
	Local     netip.AddrPort // the shared socket's address
	Interval  time.Duration  // keepalive interval
	Lookup    Resolver
	UserAgent string
	Logger    *zap.Logger
}

// New builds (but does not start) one provider account.
func New(o Options, d Deps) *Trunk {
	log := d.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("trunk").With(zap.String("trunk", o.Name))
	t := &Trunk{
		conf: o, host: o.Host, port: o.Port, also: o.RegistrarHost, prefixes: o.Prefixes,
		format: o.NumberFormat, country: o.CountryCode, interval: d.Interval,
		do: d.Do, probe: d.Probe, send: d.Send, lastSent: d.LastSent,
		log: log, now: time.Now, lookup: d.Lookup, allow: slices.Clone(o.Allow), randN: rand.IntN,
		down: map[netip.AddrPort]time.Time{},
	}
	t.reg = newRegistration(t.conf, d.Do, t, d.Keeper, d.Local, log)
	t.reg.ua = d.UserAgent
	return t
}

// Name is the trunk's configured name.
func (t *Trunk) Name() string { return t.conf.Name }

// Options is the trunk as configured.
func (t *Trunk) Options() Options { return t.conf }

// Start runs the trunk until Stop; Stop waits for it.
func (t *Trunk) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	t.stop, t.done = cancel, make(chan struct{})
	go func() {
		defer close(t.done)
		t.run(ctx)
	}()
}

// Stop stops a started trunk and waits; it unregisters unless
// keepBinding, for a successor that registers the same binding at once.
func (t *Trunk) Stop(keepBinding bool) {
	if t.stop == nil {
		return
	}
	t.reg.keepBinding.Store(keepBinding)
	t.stop()
	<-t.done
}

// Attempted is closed once the first REGISTER attempt has ended, whatever
// its outcome; never for a trunk that does not register.
func (t *Trunk) Attempted() <-chan struct{} { return t.reg.attempted }

// Status is the trunk's registration and keepalive, with the keepalive
// method in use (auto resolved to one).
func (t *Trunk) Status() RegStatus {
	st := t.reg.Status()
	st.Keepalive = t.conf.Keepalive
	if m := t.keepalive.Load(); m != nil {
		st.Keepalive = *m
	}
	st.Register = t.conf.Register
	return st
}

// Inherit takes over prev's view of the provider, for a successor at the
// same host: requests from it stay accepted while this one resolves the
// registrar again.
func (t *Trunk) Inherit(prev *Trunk) {
	prev.mu.Lock()
	t.mu.Lock()
	t.targets, t.resolved = prev.targets, prev.resolved
	for a, until := range prev.down {
		t.down[a] = until
	}
	t.mu.Unlock()
	prev.mu.Unlock()
	t.sources.Store(prev.sources.Load())
	t.dst.Store(prev.dst.Load())
}

// Route is where a call to a number goes on this trunk.
type Route struct {
	Dst netip.AddrPort   // the registrar or outbound proxy: its best target
	Alt []netip.AddrPort // the next targets, in order, for failover
	// Failed is told a target that timed out or answered 408 or 503, so
	// the next calls try others first for a while (HoldDown).
	Failed   func(netip.AddrPort)
	Number   string // the number in the trunk's format
	Domain   string
	User     string // our account: the From user
	AuthUser string // digest user
	Password string
}

// Route says whether this trunk takes number (its outbound prefixes) and
// where the call goes; the error wraps ErrUnresolved while the registrar
// is not resolved yet.
func (t *Trunk) Route(number string) (Route, bool, error) {
	if !t.takes(number) {
		return Route{}, false, nil
	}
	hops := t.orderedHops()
	if len(hops) == 0 {
		return Route{}, true, fmt.Errorf("%w: %s", ErrUnresolved, t.conf.Name)
	}
	return Route{Dst: hops[0], Alt: hops[1:], Failed: t.failed, Number: normalizeNumber(number, t.format, t.country), Domain: t.conf.Domain,
		User: t.conf.Username, AuthUser: t.reg.authUser(), Password: t.conf.Password}, true, nil
}
