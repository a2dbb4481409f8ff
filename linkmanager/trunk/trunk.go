// Package trunk is one provider account: its registration, the keepalive
// of the NAT flow to its registrar, who may send us requests for it, and
// which numbers it takes, in what form. The daemon sees it only through
// its methods: Status, Allows, MatchDID, Route.
package trunk

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

// Prober sends one STUN Binding request to dst and returns the mapping
// it reports.
type Prober func(ctx context.Context, dst netip.AddrPort) (netip.AddrPort, error)

// Trunk is one provider account: its registration and the keepalive of
// the NAT flow to its registrar. Linux NAT times each 5-tuple on its own,
// so STUN to a STUN server does not keep the registrar's flow open; without
// this the provider's INVITEs die at the router after the UDP timeout.
type Trunk struct {
	conf     Options  // as configured; a reload compares them
	host     string   // where requests go: the outbound proxy, else the registrar
	port     int      // 0: SRV, then 5060
	also     string   // the registrar's host when a proxy is used: it may send to us too
	prefixes []string // dialled-number prefixes this trunk takes; none: all
	format   string   // number_format: e164, national or as-is
	country  string   // country calling code for format
	interval time.Duration

	reg      *registration
	do       TxFunc
	probe    Prober
	send     func([]byte, netip.AddrPort) error
	lastSent func(netip.AddrPort) time.Time
	log      *zap.Logger
	now      func() time.Time
	lookup   Resolver

	allow     []netip.Prefix                      // the provider's other SBCs (trunks[].allow)
	randN     func(int) int                       // RFC 2782 weighted draws
	dst       atomic.Pointer[netip.AddrPort]      // the target the registration (or keepalive) uses
	keepalive atomic.Pointer[string]              // method in use (auto resolves to one)
	sources   atomic.Pointer[map[netip.Addr]bool] // resolved addresses allowed to send; replaced whole, never written

	mu       sync.Mutex
	targets  []srvTarget                  // guarded by mu; where requests go, from the last good lookup
	resolved map[netip.Addr]bool          // guarded by mu; every address that lookup found
	down     map[netip.AddrPort]time.Time // guarded by mu; targets held down until

	stop func()        // set by Start
	done chan struct{} // closed when Run has returned
}

// Resolver is the DNS the trunk needs; net.Resolver satisfies it.
type Resolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// run registers (if configured) and keeps the registrar flow alive until
// ctx ends, then unregisters.
func (t *Trunk) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return t.resolveLoop(ctx) })
	if t.conf.Register {
		g.Go(func() error { return t.reg.run(ctx) })
	}
	g.Go(func() error { return t.keepaliveLoop(ctx) })
	return g.Wait()
}

// Allows reports whether a request or response from ip belongs to this
// trunk's provider: an address of its registrar or proxy (every SRV
// target) or one of its allow prefixes. It runs per packet and
// allocates nothing.
func (t *Trunk) Allows(ip netip.Addr) bool {
	if s := t.sources.Load(); s != nil && (*s)[ip] {
		return true
	}
	for _, p := range t.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// MatchDID returns the configured DID that user (from the Request-URI or
// To) hits: exactly, or as a prefix ending in "*" followed by extension
// digits.
func (t *Trunk) MatchDID(users ...string) (string, bool) {
	for _, u := range users {
		if u == "" {
			continue
		}
		for _, did := range t.conf.DIDs {
			if p, ok := strings.CutSuffix(did, "*"); ok {
				if rest, ok := strings.CutPrefix(u, p); ok && allDigits(rest) {
					return u, true
				}
			} else if u == did {
				return u, true
			}
		}
	}
	return "", false
}

func allDigits(s string) bool {
	for _, ch := range s {
		if ch < '0' || ch > '9' {
			return false
		}
	}
	return true
}

// setKeepalive publishes the method in use. It stores a pointer to its
// own copy: the loop keeps assigning its local variable, so a pointer to
// that would be read and written at once.
func (t *Trunk) setKeepalive(m string) { t.keepalive.Store(&m) }

// keepaliveLoop sends a keepalive to the registrar whenever the socket has
// sent it nothing for one interval.
func (t *Trunk) keepaliveLoop(ctx context.Context) error {
	method := t.conf.Keepalive
	t.setKeepalive(method)
	if method == config.KeepaliveOff {
		return nil
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	stunFailures := 0
	// silent: the last keepalive went unanswered. When the registrar
	// answers again it may have restarted (and forgotten us) or the link
	// was down (and the REGISTER is in backoff): re-register at once.
	silent := false
	answered := func(ok bool) {
		if ok && silent {
			t.log.Info("registrar answers the keepalive again")
			t.reg.Revived()
		}
		silent = !ok
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		dst := t.dst.Load()
		if dst == nil {
			if _, err := t.hops(ctx); err != nil {
				resetTimer(timer, t.interval)
				continue
			}
			dst = t.dst.Load()
		}
		if idle := t.now().Sub(t.lastSent(*dst)); idle < t.interval {
			resetTimer(timer, t.interval-idle)
			continue
		}
		switch method {
		case config.KeepaliveAuto, config.KeepaliveSTUN:
			mapped, err := t.probe(ctx, *dst)
			if err == nil {
				stunFailures = 0
				if method == config.KeepaliveAuto {
					method = config.KeepaliveSTUN
					t.setKeepalive(method)
					t.log.Info("keepalive method chosen",
						zap.String("keepalive", method), zap.String("why", "registrar answers STUN on its SIP port"))
				}
				t.reg.Observe(mapped)
				answered(true)
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			stunFailures++
			if method == config.KeepaliveSTUN {
				answered(false)
			}
			// A registrar that never answered STUN, or stopped doing so,
			// gets OPTIONS instead: unless the admin insisted on STUN.
			if t.conf.Keepalive == config.KeepaliveAuto && (method == config.KeepaliveAuto || stunFailures >= 3) {
				method = config.KeepaliveOptions
				t.setKeepalive(method)
				t.log.Info("keepalive method chosen",
					zap.String("keepalive", method), zap.String("why", "registrar does not answer STUN"))
				answered(t.optionsPing(ctx, *dst))
			}
		case config.KeepaliveOptions:
			answered(t.optionsPing(ctx, *dst))
		case config.KeepaliveCRLF:
			// RFC 5626 §4.4.1 double CRLF: cheap, but tells us nothing.
			if err := t.send([]byte("\r\n\r\n"), *dst); err != nil {
				t.log.Warn("keepalive send failed", zap.Error(err))
			}
		}
		resetTimer(timer, t.interval)
	}
}

// optionsPing sends OPTIONS and reports whether it was answered; the
// response's Via tells us what the registrar sees.
func (t *Trunk) optionsPing(parent context.Context, dst netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(parent, 5*time.Second)
	defer cancel()
	req := t.buildOptions(dst)
	res, err := t.do(ctx, req, dst)
	if err != nil {
		if parent.Err() == nil { // not just stopping
			t.log.Warn("keepalive OPTIONS unanswered", zap.Error(err))
		}
		return false
	}
	t.reg.alg.observe(inspect(req, res, t.reg.local))
	if a := registrarSaw(req, res, t.reg.local); a.IsValid() {
		t.reg.Observe(a)
	}
	return true
}

func (t *Trunk) buildOptions(dst netip.AddrPort) *sip.Request {
	// The keepalive goroutine must not read the registration's own
	// fields; its status snapshot is locked.
	req := probeOptions(t.conf, t.reg.local.Port(), t.reg.ua)
	var from netip.AddrPort
	if s := t.reg.Status(); s.Contact.IsValid() {
		from = s.Contact
	} else if s.Public.IsValid() {
		from = s.Public
	} else if m, ok := t.reg.keeper.Public(); ok {
		from = m.Addr
	}
	// Unknown: the probe's unresolvable sent-by, never the LAN address.
	if from.IsValid() {
		via := req.Via()
		via.Host, via.Port = from.Addr().String(), int(from.Port())
	}
	return req
}

// normalizeNumber rewrites a dialled number into the form a trunk wants.
// National numbers start with one 0, international ones with 00 or +.
func normalizeNumber(number, format, cc string) string {
	digits := number
	switch {
	case strings.HasPrefix(number, "+"):
		digits = number[1:]
	case strings.HasPrefix(number, "00"):
		digits = number[2:]
	case strings.HasPrefix(number, "0"):
		digits = cc + number[1:]
	default:
		return number // an extension or a short code: leave it alone
	}
	switch format {
	case config.NumberE164:
		return "+" + digits
	case config.NumberE164NoPlus:
		return digits
	case config.NumberNational:
		if rest, ok := strings.CutPrefix(digits, cc); ok && cc != "" {
			return "0" + rest
		}
		return "00" + digits
	}
	return number
}

// FormatCaller writes a calling or forwarding number the way this trunk's
// caller_id.number_format says.
func (t *Trunk) FormatCaller(number string) string {
	return normalizeNumber(number, t.conf.CallerFormat, t.country)
}

// takes reports whether this trunk's outbound prefixes match number; a
// trunk without prefixes takes every number.
func (t *Trunk) takes(number string) bool {
	if len(t.prefixes) == 0 {
		return true
	}
	for _, p := range t.prefixes {
		if strings.HasPrefix(number, p) {
			return true
		}
	}
	return false
}

// RegisteredContact is our address as the registrar knows it; invalid
// when not registered.
func (t *Trunk) RegisteredContact() netip.AddrPort { return t.reg.Status().Contact }
