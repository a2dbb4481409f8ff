package trunk

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// The provider is more than its registrar's A record (RFC 3263): a name
// without a port has _sip._udp SRV targets, each with addresses, and
// the provider's SBCs may send from any of them.
const (
	// ResolveEvery is how often the provider's names are looked up
	// again. net.Resolver does not expose TTLs, so this is a fixed
	// interval inside the bounds a TTL would be clamped to (30 s..1 h):
	// a provider that moves its SBCs in DNS is followed within it.
	ResolveEvery = 5 * time.Minute
	// resolveRetry follows a failed lookup; the previous answer stays
	// in use meanwhile.
	resolveRetry = 30 * time.Second
	// HoldDown is how long a target that timed out or answered 408 or
	// 503 goes to the back of the list. After it, the target takes its
	// RFC 2782 place again: the next registration refresh or call tries
	// the primary first.
	HoldDown = 60 * time.Second
	// MaxHops bounds how many targets one request tries, so a provider
	// with many dead targets cannot hold a call or a REGISTER for long.
	MaxHops = 4
	// lookupTimeout bounds one round of DNS lookups.
	lookupTimeout = 5 * time.Second
)

// srvTarget is one SRV target with the addresses its name resolved to,
// or a single host (a configured port or an IP literal) as priority 0.
type srvTarget struct {
	name     string
	priority uint16
	weight   uint16
	addrs    []netip.AddrPort
}

// orderTargets puts the targets' addresses in RFC 2782 order: by
// priority, and within one priority by a weighted random draw, every
// address of a drawn target before the next target. randN(n) is uniform
// in [0, n).
func orderTargets(ts []srvTarget, randN func(int) int) []netip.AddrPort {
	ts = slices.Clone(ts)
	slices.SortStableFunc(ts, func(a, b srvTarget) int { return int(a.priority) - int(b.priority) })
	var out []netip.AddrPort
	for len(ts) > 0 {
		n := 1
		for n < len(ts) && ts[n].priority == ts[0].priority {
			n++
		}
		group := ts[:n]
		// Weight 0 first, so it is picked only when nothing else is
		// left or the draw is 0 (RFC 2782, "Usage rules").
		slices.SortStableFunc(group, func(a, b srvTarget) int {
			return min(int(a.weight), 1) - min(int(b.weight), 1)
		})
		for len(group) > 0 {
			sum := 0
			for _, t := range group {
				sum += int(t.weight)
			}
			r, pick := randN(sum+1), len(group)-1
			run := 0
			for i, t := range group {
				if run += int(t.weight); run >= r {
					pick = i
					break
				}
			}
			out = append(out, group[pick].addrs...)
			group = slices.Delete(group, pick, pick+1)
		}
		ts = ts[n:]
	}
	return out
}

// lookupHost resolves one configured host the RFC 3263 way for UDP: an
// IP literal as is; a name with a port by its A records; a name without
// one by _sip._udp SRV and the A records of every target, else A on
// 5060.
func lookupHost(ctx context.Context, r Resolver, host string, port int) ([]srvTarget, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []srvTarget{{name: host, addrs: []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), uint16(cmpPort(port)))}}}, nil
	}
	if port == 0 {
		if _, srvs, err := r.LookupSRV(ctx, "sip", "udp", host); err == nil && len(srvs) > 0 {
			return lookupTargets(ctx, r, host, srvs)
		}
	}
	addrs, err := lookupAddrs(ctx, r, host, cmpPort(port))
	if err != nil {
		return nil, err
	}
	return []srvTarget{{name: host, addrs: addrs}}, nil
}

// Lookup resolves a host named in a SIP URI (a Record-Route, a Contact)
// the way lookupHost does, best address first: the B2BUA's in-dialog
// requests find their next hop with it.
func Lookup(ctx context.Context, r Resolver, host string, port int) ([]netip.AddrPort, error) {
	ts, err := lookupHost(ctx, r, host, port)
	if err != nil {
		return nil, err
	}
	return orderTargets(ts, rand.IntN), nil
}

// lookupTargets resolves every SRV target; one that does not resolve
// is left out, and only none at all is an error.
func lookupTargets(ctx context.Context, r Resolver, host string, srvs []*net.SRV) ([]srvTarget, error) {
	var out []srvTarget
	var errs []error
	for _, s := range srvs {
		name := strings.TrimSuffix(s.Target, ".")
		if name == "" {
			continue // "." : the service is decidedly not offered here
		}
		addrs, err := lookupAddrs(ctx, r, name, int(s.Port))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, srvTarget{name: name, priority: s.Priority, weight: s.Weight, addrs: addrs})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no usable SRV target for _sip._udp.%s: %w", host, errors.Join(errs...))
	}
	return out, nil
}

func lookupAddrs(ctx context.Context, r Resolver, host string, port int) ([]netip.AddrPort, error) {
	ips, err := r.LookupNetIP(ctx, "ip4", host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("no IPv4 address for %s", host)
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
	}
	return out, nil
}

func cmpPort(p int) int {
	if p == 0 {
		return 5060
	}
	return p
}

// resolve looks the provider up again: where requests go (the proxy,
// else the registrar, all its targets) and who may send to us (those
// and the registrar's). A failed lookup keeps what the last one found.
func (t *Trunk) resolve(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	targets, err := lookupHost(ctx, t.lookup, t.host, t.port)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrResolve, t.host, err)
	}
	found := map[netip.Addr]bool{}
	for _, tg := range targets {
		for _, a := range tg.addrs {
			found[a.Addr()] = true
		}
	}
	if t.also != "" && t.also != t.host {
		more, err := lookupHost(ctx, t.lookup, t.also, 0)
		if err != nil {
			t.log.Warn("cannot resolve registrar; only the proxy may send requests", zap.String("registrar", t.also), zap.Error(err))
		}
		for _, tg := range more {
			for _, a := range tg.addrs {
				found[a.Addr()] = true
			}
		}
	}
	t.mu.Lock()
	// Addresses of the previous answer stay allowed until the next one:
	// a call set up through an SBC that just left DNS still gets its BYE.
	allowed := make(map[netip.Addr]bool, len(found)+len(t.resolved))
	for ip := range t.resolved {
		allowed[ip] = true
	}
	for ip := range found {
		allowed[ip] = true
	}
	t.resolved, t.targets = found, targets
	first := orderTargets(targets, t.randN)[0]
	t.mu.Unlock()
	t.sources.Store(&allowed)
	if d := t.dst.Load(); d == nil || !found[d.Addr()] {
		t.dst.Store(&first)
	}
	return nil
}

// resolveLoop looks the provider up again every ResolveEvery until ctx
// ends; first is the result of the lookup Start made.
func (t *Trunk) resolveLoop(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		next := ResolveEvery
		if err := t.resolve(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			t.log.Warn("provider lookup failed; keeping the previous answer", zap.Error(err), zap.Duration("retry_in", resolveRetry))
			next = resolveRetry
		}
		resetTimer(timer, next)
	}
}

// hops is where the next request goes, best first: the RFC 2782 order
// with targets in hold-down moved to the end. It resolves first if no
// lookup has succeeded yet.
func (t *Trunk) hops(ctx context.Context) ([]netip.AddrPort, error) {
	t.mu.Lock()
	resolved := t.targets != nil
	t.mu.Unlock()
	if !resolved {
		if err := t.resolve(ctx); err != nil {
			return nil, err
		}
	}
	return t.orderedHops(), nil
}

// orderedHops is hops without a lookup: nil until one has succeeded.
func (t *Trunk) orderedHops() []netip.AddrPort {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.targets == nil {
		return nil
	}
	all := orderTargets(t.targets, t.randN)
	now := t.now()
	up := all[:0:0]
	var down []netip.AddrPort
	for _, a := range all {
		if until, ok := t.down[a]; ok && now.Before(until) {
			down = append(down, a)
			continue
		}
		up = append(up, a)
	}
	out := append(up, down...)
	if len(out) > MaxHops {
		out = out[:MaxHops]
	}
	return out
}

// failed holds dst down: it timed out or answered 408 or 503.
func (t *Trunk) failed(dst netip.AddrPort) {
	t.mu.Lock()
	now := t.now()
	was, ok := t.down[dst]
	t.down[dst] = now.Add(HoldDown)
	t.mu.Unlock()
	if ok && now.Before(was) {
		return // said once per hold-down
	}
	t.log.Warn("provider target failed; others go first for a while", zap.Stringer("target", dst),
		zap.Duration("hold_down", HoldDown))
}

// registeredAt records the target the registration now uses: the
// keepalive follows it, and it is no longer held down.
func (t *Trunk) registeredAt(dst netip.AddrPort) {
	t.mu.Lock()
	delete(t.down, dst)
	t.mu.Unlock()
	t.dst.Store(&dst)
}

// failover reports whether err says "try the next target" (RFC 3263
// §4.3: no answer or 503; 408 as well, a proxy that gave up).
func failover(err error) bool {
	if errors.Is(err, ErrNoAnswer) {
		return true
	}
	var se *StatusError
	return errors.As(err, &se) && (se.Code == 408 || se.Code == 503)
}
