package stunkeeper

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// Measuring the binding lifetime as RFC 5780 §4.6 says, on sockets of
// its own: each probe socket X opens a binding by asking the server, then
// idles; after t a separate trigger socket asks the server to answer to
// X's public port (RESPONSE-PORT). The answer comes from the address X
// sent to, so only X's binding decides whether it arrives. A binding
// that expired leaves the NAT's state for that port poisoned (nat-findings
// 3), which is why the SIP socket is never used for this.
//
// The probe sockets open their bindings at once and are asked one after
// the other, at Step, 2*Step, ...: the test stops at the first binding
// that is gone, so it takes about the lifetime plus 3 s, not a sum of
// waits.

const (
	DefaultLifetimeMax  = 120 * time.Second
	DefaultLifetimeStep = 2 * time.Second
	// maxLifetimeProbes caps the sockets one measurement opens; a long
	// Max gets a coarser Step.
	maxLifetimeProbes = 64
	// lifetimeMargin: the keepalive interval stays this share below the
	// longest idle time a binding survived.
	lifetimeMargin = 5 // 1/5 = 20 %
)

// LifetimeConfig configures MeasureLifetime.
type LifetimeConfig struct {
	// Server is an RFC 5780 server's primary address (NATReport.Primary);
	// it must honour RESPONSE-PORT (coturn does).
	Server netip.AddrPort
	// Listen opens one test socket (as NATWatchConfig.Listen). One
	// measurement opens up to 65; it closes them all.
	Listen func() (net.PacketConn, error)
	// Max is the longest lifetime looked for, Step the resolution
	// (defaults DefaultLifetimeMax, DefaultLifetimeStep).
	Max, Step time.Duration
}

// Lifetime is a measured NAT binding lifetime.
type Lifetime struct {
	// Alive is the longest idle time after which a binding still let the
	// server's answer in; Expired the shortest after which it did not.
	// Expired is 0 when every binding survived up to Max.
	Alive, Expired time.Duration
}

// String says it for an admin: "18s–20s", or "more than 2m0s".
func (l Lifetime) String() string {
	if l.Expired == 0 {
		return "more than " + l.Alive.String()
	}
	return fmt.Sprintf("%v–%v", l.Alive, l.Expired)
}

// SafeInterval is the longest keepalive interval the measured lifetime
// allows: 20 % below the longest idle time a binding survived, in whole
// seconds, at least 1 s.
func (l Lifetime) SafeInterval() time.Duration {
	d := (l.Alive - l.Alive/lifetimeMargin).Truncate(time.Second)
	return max(d, time.Second)
}

// MeasureLifetime measures how long the NAT keeps an idle UDP binding.
// It needs an RFC 5780 server that honours RESPONSE-PORT: one that
// answers the trigger socket instead fails it with ErrNoResponsePort.
func MeasureLifetime(ctx context.Context, cfg LifetimeConfig) (Lifetime, error) {
	if !cfg.Server.IsValid() || cfg.Listen == nil {
		return Lifetime{}, ErrLifetimeConfig
	}
	maxIdle, step := cfg.Max, cfg.Step
	if maxIdle <= 0 {
		maxIdle = DefaultLifetimeMax
	}
	if step <= 0 {
		step = DefaultLifetimeStep
	}
	if n := maxIdle / step; n > maxLifetimeProbes {
		step = (maxIdle + maxLifetimeProbes - 1) / maxLifetimeProbes
	}
	n := int(maxIdle / step)

	var probers []*prober
	defer func() {
		for _, p := range probers {
			p.stop()
			_ = p.conn.Close()
		}
	}()
	for range n + 1 {
		c, err := cfg.Listen()
		if err != nil {
			return Lifetime{}, fmt.Errorf("stunkeeper: lifetime test socket: %w", err)
		}
		probers = append(probers, newProber(c))
	}
	trigger, probes := probers[0], probers[1:]

	// Open every binding at once; the clock of each starts with its answer.
	type binding struct {
		p      *prober
		mapped netip.AddrPort
		at     time.Time
	}
	bs := make([]binding, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			if a := p.do(ctx, cfg.Server, 0); a.err == nil {
				bs[i] = binding{p: p, mapped: a.mapped, at: time.Now()}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return Lifetime{}, ctx.Err()
	}

	var res Lifetime
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for i, b := range bs {
		if b.p == nil {
			continue // its binding request got no answer
		}
		idle := time.Duration(i+1) * step
		timer.Reset(time.Until(b.at.Add(idle)))
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-timer.C:
		}
		port := b.mapped.Port()
		msg, err := stun.Build(stun.TransactionID, stun.BindingRequest,
			stun.RawAttribute{Type: stun.AttrResponsePort, Value: []byte{byte(port >> 8), byte(port), 0, 0}}, stun.Fingerprint)
		if err != nil {
			return res, err
		}
		ch := make(chan answer, 2)
		undo := b.p.expect(msg.TransactionID, ch)
		undoTrigger := trigger.expect(msg.TransactionID, ch)
		a := exchange(ctx, trigger.conn, msg.Raw, cfg.Server, ch)
		undo()
		undoTrigger()
		switch {
		case ctx.Err() != nil:
			return res, ctx.Err()
		case a.err == nil && a.by == trigger:
			return res, ErrNoResponsePort
		case a.err != nil:
			res.Expired = idle
			return res, nil
		}
		res.Alive = idle
	}
	if res.Alive == 0 {
		return res, ErrNoAnswer
	}
	return res, nil
}
