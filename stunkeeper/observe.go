package stunkeeper

import (
	"fmt"
	"net/netip"

	"go.uber.org/zap"
)

// record stores an observation, publishes a change event when this
// destination now sees another address (or saw none before), and
// re-evaluates the NAT behaviour.
func (k *Keeper) record(m Mapping) {
	k.mu.Lock()
	prev, had := k.obs[m.Via]
	k.obs[m.Via] = m
	if len(k.obs) > maxObservations {
		k.pruneOldestLocked()
	}
	if m.At.After(k.lastLearn) {
		k.lastLearn = m.At
	}
	changed := !had || prev.Addr != m.Addr
	if had && changed {
		// Older observations from elsewhere may predate a redial; do not
		// compare against them (see evalNATLocked).
		k.lastShift = m.At
	}
	if changed {
		k.stats.Changes++
		k.publishLocked(m)
	}
	verdict, other, decided := k.evalNATLocked(m)
	natChanged := decided && verdict != k.nat
	if natChanged {
		k.nat = verdict
	}
	best, _ := k.publicLocked()
	k.mu.Unlock()

	switch {
	case !had:
		k.log.Info("public address learned", zap.Stringer("public_addr", m.Addr),
			zap.Stringer("via", m.Via), zap.String("source", string(m.Source)))
	case changed && best.Via == m.Via:
		// This is what a DSL redial or a lost NAT mapping looks like; SIP
		// must re-register.
		k.log.Warn("public address changed", zap.Stringer("public_addr", m.Addr),
			zap.Stringer("previous", prev.Addr), zap.Stringer("via", m.Via), zap.String("source", string(m.Source)))
	case changed:
		// Behind a symmetric NAT the rarely asked NAT-check server sees a
		// new port every time; that is no news worth a warning.
		k.log.Info("address seen by destination changed", zap.Stringer("public_addr", m.Addr),
			zap.Stringer("previous", prev.Addr), zap.Stringer("via", m.Via), zap.String("source", string(m.Source)))
	}
	if !natChanged {
		return
	}
	switch verdict {
	case NATSymmetric:
		a, b := m, other
		if a.Source == SourceRegistrar && b.Source != SourceRegistrar {
			a, b = b, a
		}
		k.log.Warn(fmt.Sprintf("NAT maps per destination (symmetric): %s sees %s, %s sees %s; inbound calls rely on registration",
			describe(a), a.Addr, describe(b), b.Addr),
			zap.Stringer("public_addr", a.Addr), zap.Stringer("via", a.Via),
			zap.Stringer("other_addr", b.Addr), zap.Stringer("other_via", b.Via))
	case NATEndpointIndependent:
		k.log.Info("NAT mapping is endpoint-independent", zap.Stringer("public_addr", m.Addr),
			zap.Stringer("via", m.Via), zap.Stringer("other_via", other.Via))
	}
}

func describe(m Mapping) string {
	if m.Source == SourceRegistrar {
		return "registrar " + m.Via.String()
	}
	return "STUN server " + m.Via.String()
}

// evalNATLocked compares m with fresh observations from other destination
// IPs. Mapping behaviour is about the destination address (RFC 4787), so
// two ports of one host say nothing.
func (k *Keeper) evalNATLocked(m Mapping) (NATBehaviour, Mapping, bool) {
	fresh := freshFactor * k.interval
	var agree Mapping
	found := false
	for via, o := range k.obs {
		if via.Addr() == m.Via.Addr() || o.At.Before(k.lastShift) {
			continue
		}
		d := m.At.Sub(o.At)
		if d < 0 {
			d = -d
		}
		if d > fresh {
			continue
		}
		if o.Addr != m.Addr {
			return NATSymmetric, o, true
		}
		agree, found = o, true
	}
	if found {
		return NATEndpointIndependent, agree, true
	}
	return NATUnknown, Mapping{}, false
}

func (k *Keeper) pruneOldestLocked() {
	var oldest netip.AddrPort
	first := true
	for via, o := range k.obs {
		if first || o.At.Before(k.obs[oldest].At) {
			oldest, first = via, false
		}
	}
	delete(k.obs, oldest)
}

// publishLocked never blocks: a full subscriber loses its oldest event.
func (k *Keeper) publishLocked(m Mapping) {
	for ch := range k.subs {
		select {
		case ch <- m:
			continue
		default:
		}
		select {
		case <-ch:
		default:
		}
		select {
		case ch <- m:
		default:
		}
	}
}
