package stunkeeper

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"time"

	"go.uber.org/zap"
)

type reason int

const (
	reasonIdle reason = iota
	reasonLearn
	reasonNATCheck
	reasonKick
)

// Run keeps the mapping alive until ctx is done, then returns nil. STUN
// failures never end it. Run does all its work on the calling goroutine,
// so nothing of it is left once it returns; afterwards Probe fails with
// ErrClosed and subscriber channels are closed. A Keeper runs once.
func (k *Keeper) Run(ctx context.Context) error {
	if !k.state.CompareAndSwap(stateNew, stateRunning) {
		if k.state.Load() == stateClosed {
			return ErrClosed
		}
		return ErrRunning
	}
	defer k.shutdown()

	k.logServers("stun keeper started")

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	forced := false
	for ctx.Err() == nil {
		if len(k.servers) == 0 {
			// Nothing to ask: the registrar's Via tells us our address
			// until a reload brings servers.
			select {
			case <-ctx.Done():
			case list := <-k.reconf:
				k.setServers(list)
				forced = len(list) > 0
			}
			continue
		}
		why := reasonKick
		if !forced {
			now := k.now()
			due, r := k.nextDue(now)
			if wait := due.Sub(now); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
				case <-timer.C:
				case <-k.kick:
					forced = true
				case <-k.wake:
				case list := <-k.reconf:
					k.setServers(list)
					forced = len(list) > 0
				}
				// Re-evaluate: NoteSent and Observe move deadlines
				// without waking us, so an expired timer may be early.
				continue
			}
			why = r
		}
		forced = false
		k.refresh(ctx, why)
	}
	return nil
}

func (k *Keeper) setServers(list []server) {
	k.servers, k.cur, k.roundFails, k.backoffStep, k.backingOff, k.retryNow = list, 0, 0, 0, false, false
	k.logServers("stun servers changed")
}

func (k *Keeper) logServers(msg string) {
	if len(k.servers) == 0 {
		k.log.Info(msg+"; none configured: relying on registrar observations and probes", zap.Duration("interval", k.interval))
		return
	}
	names := make([]string, len(k.servers))
	for i, s := range k.servers {
		names[i] = s.hostport
	}
	k.log.Info(msg, zap.Strings("servers", names), zap.Duration("interval", k.interval))
}

func (k *Keeper) shutdown() {
	k.state.Store(stateClosed)
	close(k.done)
	k.mu.Lock()
	for ch := range k.subs {
		close(ch)
	}
	clear(k.subs)
	k.mu.Unlock()
	k.log.Info("stun keeper stopped")
}

// nextDue is the earliest of: the socket idle for a KeepaliveInterval (rule 1),
// nothing learned for an Interval although the socket is busy (rule 2),
// and the periodic second-destination check; all pushed back while
// backing off.
func (k *Keeper) nextDue(now time.Time) (time.Time, reason) {
	idle := time.Unix(0, k.lastSent.Load()).Add(k.KeepaliveInterval())
	k.mu.Lock()
	learn := k.lastLearn.Add(k.interval)
	k.mu.Unlock()

	due, why := idle, reasonIdle
	if learn.Before(due) {
		due, why = learn, reasonLearn
	}
	if k.nextNATCheck.Before(due) {
		due, why = k.nextNATCheck, reasonNATCheck
	}
	// Classify by what is actually overdue, preferring idle: an idle
	// socket is the case the keepalive exists for.
	switch {
	case !idle.After(now):
		why = reasonIdle
	case !learn.After(now):
		why = reasonLearn
	}
	switch {
	case k.retryNow:
		// Failing over: the failed transaction took seconds already.
		due = now
	case k.notBefore.After(due):
		// Whatever goes wrong with the deadlines (an owner that reports
		// sends oddly, a strange clock), Run must not spin.
		due = k.notBefore
	}
	if k.backoffUntil.After(due) {
		due = k.backoffUntil
	}
	return due, why
}

// refresh asks the current server; on failure it moves to the next one
// and, once every server failed in a row, backs off.
func (k *Keeper) refresh(ctx context.Context, why reason) {
	k.count(func(s *Stats) {
		switch why {
		case reasonIdle:
			s.IdleKeepalives++
		case reasonLearn, reasonKick:
			s.Refreshes++
		}
	})
	k.retryNow = false
	defer func() { k.notBefore = k.now().Add(min(minGap, k.interval)) }()
	srv := &k.servers[k.cur]
	mapped, via, err := k.query(ctx, srv)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		k.failover(srv)
		return
	}
	k.roundFails, k.backoffStep, k.backoffUntil = 0, 0, time.Time{}
	if k.backingOff {
		k.backingOff = false
		k.log.Info("stun service restored", zap.String("server", srv.hostport))
	}
	k.mu.Lock()
	k.primary = via
	k.mu.Unlock()
	k.record(Mapping{Addr: mapped, Via: via, Source: SourceSTUN, At: k.now()})

	if now := k.now(); !now.Before(k.nextNATCheck) {
		k.nextNATCheck = now.Add(natCheckEvery * k.interval)
		k.count(func(s *Stats) { s.NATChecks++ })
		if len(k.servers) > 1 {
			// A second destination is the only way to see whether the
			// NAT maps per destination. Its failure is no reason to fail
			// over: the primary just answered.
			other := &k.servers[(k.cur+1)%len(k.servers)]
			if m, v, err := k.query(ctx, other); err == nil {
				k.record(Mapping{Addr: m, Via: v, Source: SourceSTUN, At: k.now()})
			}
		}
	}
}

// query resolves srv if needed and runs one transaction, keeping the
// per-server "answering" state and logging only when it flips.
func (k *Keeper) query(ctx context.Context, srv *server) (mapped, via netip.AddrPort, err error) {
	if !srv.addr.IsValid() {
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		srv.addr, err = k.resolve(rctx, srv.hostport)
		cancel()
		if err != nil {
			srv.addr = netip.AddrPort{}
			if ctx.Err() == nil {
				k.count(func(s *Stats) { s.ResolveErrors++ })
				k.serverDown(srv, err)
			}
			return mapped, via, err
		}
	}
	via = srv.addr
	mapped, err = k.transact(ctx, via)
	if ctx.Err() != nil {
		return mapped, via, ctx.Err()
	}
	if err != nil {
		if !srv.literal {
			// DNS may point elsewhere by now.
			srv.addr = netip.AddrPort{}
		}
		k.serverDown(srv, err)
		return mapped, via, err
	}
	if srv.failing {
		srv.failing = false
		k.log.Info("stun server answering again", zap.String("server", srv.hostport), zap.Stringer("addr", via))
	}
	return mapped, via, nil
}

func (k *Keeper) serverDown(srv *server, err error) {
	if srv.failing {
		return
	}
	srv.failing = true
	k.log.Warn("stun server not answering", zap.String("server", srv.hostport), zap.Error(err))
}

func (k *Keeper) failover(srv *server) {
	n := len(k.servers)
	k.roundFails++
	if n > 1 {
		k.cur = (k.cur + 1) % n
		k.count(func(s *Stats) { s.Failovers++ })
		k.log.Debug("stun failover", zap.String("from", srv.hostport), zap.String("server", k.servers[k.cur].hostport))
	}
	if k.roundFails < n {
		// The next server gets its turn right away.
		k.retryNow = true
		return
	}
	k.roundFails = 0
	k.backoffStep++
	d := k.backoff(k.backoffStep)
	k.backoffUntil = k.now().Add(d)
	if !k.backingOff {
		k.backingOff = true
		k.log.Warn("no stun server answering; backing off", zap.Duration("retry_in", d))
	} else {
		k.log.Debug("stun servers still not answering", zap.Duration("retry_in", d))
	}
}

// backoff grows from Interval to max(Interval, 60s), jittered by ±20% so
// many daemons behind one outage do not retry in lockstep.
func (k *Keeper) backoff(step int) time.Duration {
	limit := max(maxBackoff, k.interval)
	d := k.interval
	for i := 1; i < step && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
