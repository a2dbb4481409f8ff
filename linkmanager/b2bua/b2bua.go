// Package b2bua bridges calls between the PBX and the providers. It sees
// trunks only through Router (outbound) and Inbound (inbound), and media
// only through Media; it publishes the end of every call to OnCallEnded
// and its live state through Snapshot. It needs no root, no lab and no
// Server: two sipgo clients and a fake router and media will do.
package b2bua

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/linkmanager/linkmanager/linkmanager/policy"
	"github.com/linkmanager/linkmanager/linkmanager/sdp"
	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// PBXOptions is the LAN side of the B2BUA.
type PBXOptions struct {
	Listen   netip.AddrPort // our LAN SIP address (Contact, Via, SDP)
	Addr     netip.AddrPort // where inbound calls go
	Allow    []netip.Prefix // who may place calls
	Username string         // optional digest the PBX must present
	Password string
	// Emergency numbers always go out: no deny rule, cap, rate limit or
	// drain stops them (see package policy).
	Emergency []string
	// MaxCallRate is the new calls per second one source may place, in
	// bursts of twice that; 0: no limit.
	MaxCallRate float64
}

// Route is where an outbound call goes, as the trunk that takes the
// number decides it.
type Route struct {
	Trunk string         // name, for logs and metrics
	Dst   netip.AddrPort // next hop
	// Alt are the next hops to try, in order, when Dst does not answer
	// (within the hop timeout) or answers 408 or 503 before ringing
	// (RFC 3263 §4.3). Failed, if set, hears of each such hop.
	Alt      []netip.AddrPort
	Failed   func(netip.AddrPort)
	Number   string // the dialled number in the trunk's format
	Domain   string // the provider's domain: Request-URI, From and To
	User     string // our account: the From user unless CallerID says otherwise
	AuthUser string // digest user for a challenge; empty: none
	Password string
	// Contact is our address as this trunk's registrar knows it; nil:
	// the Internet side's default.
	Contact func() netip.AddrPort
	// Latching is the relay's source rule for the Internet leg (the
	// trunk's rtp_latching); zero: the relay's default.
	Latching rtpbridge.Latching
	// CallerID is how the trunk presents the caller; zero: the account
	// in From, no identity header.
	CallerID CallerID
	// Denied is why the trunk's outbound rules refuse the number (nil:
	// they allow it); an emergency number goes out all the same.
	Denied error
	// MaxCalls caps the trunk's calls at once; 0: no cap.
	MaxCalls int
	// Allows reports whether ip is the trunk's provider (trunk.Allows):
	// the call's in-dialog requests follow its route set and Contact
	// only there. Nil: only to Dst.
	Allows func(netip.Addr) bool
}

// Router picks the trunk for a dialled number. Its errors wrap
// ErrNoRoute or ErrUnresolved.
type Router interface {
	Route(dialled string) (Route, error)
}

// Inbound is what the trunk that accepted a provider's INVITE tells us.
type Inbound struct {
	Trunk    string
	DID      string                // the number called, as configured
	Contact  func() netip.AddrPort // as in Route
	Latching rtpbridge.Latching    // as in Route
	Allows   func(netip.Addr) bool // as in Route; nil: only the INVITE's source
}

// Side is one network's SIP stack: the client that sends from its socket
// and our address there (the public one on the Internet side).
type Side struct {
	Client  *sipgo.Client
	Contact func() netip.AddrPort
}

// CallEnded is published once per call, after it has left the table.
type CallEnded struct {
	Direction string // "outbound" (PBX to provider) or "inbound"
	Trunk     string
	Answered  bool
	Reason    string
	Media     rtpbridge.Stats
	// NATRepaired: the provider leg's media never arrived, so the call
	// moved that leg to a new port and re-INVITEd (repairNAT).
	NATRepaired bool
}

// Config builds a B2BUA.
type Config struct {
	Logger      *zap.Logger
	LAN, WAN    Side
	PBX         PBXOptions
	Router      Router
	Media       Media
	RingTimeout time.Duration   // 0: DefaultRingTimeout
	HopTimeout  time.Duration   // 0: DefaultHopTimeout
	OnCallEnded func(CallEnded) // optional; called without any lock held
	// MaxRinging bounds the calls offered by the providers that are not
	// answered yet, per trunk and in total, so that a flood of INVITEs
	// cannot take every relay pair; more get 503. 0: no bound.
	MaxRingingPerTrunk, MaxRinging int
	// Resolve looks up host names in route sets and Contacts; nil: only
	// numeric hosts are followed, a name goes to the dialog's first hop.
	Resolve Resolve
	// byeTimeout and reinviteTimeout replace the defaults; tests only.
	byeTimeout, reinviteTimeout time.Duration
}

// B2BUA bridges calls between the PBX and the providers. Each call has a
// dialog on each side that shares nothing but the numbers and the
// (rewritten) SDP: the provider never sees a LAN address, the PBX never
// sees the provider's Via, Record-Route or Contact.
type B2BUA struct {
	log         *zap.Logger
	lan         *side
	wan         *side
	pbx         atomic.Pointer[pbxState] // swapped by a reload
	media       Media
	router      Router
	ringTimeout time.Duration
	hopTimeout  time.Duration
	onEnded     func(CallEnded)
	ringing     *ringing
	admit       *admission
	policyLog   rate.Sometimes                 // refusals by the outbound policy: one line a while
	glareDelay  func(owner bool) time.Duration // RFC 3261 §14.1; tests shorten it
	reliableT1  time.Duration                  // RFC 3262 §3 retransmission base (sip.T1); tests shorten it
	hops        *nextHops
	// ctx is the base of every transaction the B2BUA runs, as in
	// net/http: Close cancels it, so each pending one ends at once.
	ctx  context.Context
	stop context.CancelFunc
	// byeTimeout and reinviteTimeout bound a BYE's and a re-INVITE's
	// transaction; tests lengthen them to show Close does not wait for
	// them.
	byeTimeout, reinviteTimeout time.Duration

	mu       sync.Mutex
	calls    map[string]*call       // guarded by mu; by the Call-ID of either leg
	ended    [2]rtpbridge.Direction // guarded by mu; media totals of ended calls, by leg the packets came from
	stopping bool                   // guarded by mu; no new background work
	wg       sync.WaitGroup         // background work per call (hang-ups, 2xx retransmits)
	drain    atomic.Bool
	changed  chan struct{} // guarded by mu; closed and replaced when a call ends
}

// New builds a B2BUA; it does nothing until its handlers are called.
func New(cfg Config) (*B2BUA, error) {
	if cfg.LAN.Client == nil || cfg.WAN.Client == nil || cfg.Router == nil || cfg.Media == nil {
		return nil, ErrConfig
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &B2BUA{
		ctx:             ctx,
		stop:            cancel,
		byeTimeout:      cmp.Or(cfg.byeTimeout, byeTimeout),
		reinviteTimeout: cmp.Or(cfg.reinviteTimeout, reinviteTimeout),
		log:             cmp.Or(cfg.Logger, zap.NewNop()),
		ringTimeout:     cmp.Or(cfg.RingTimeout, DefaultRingTimeout),
		hopTimeout:      cmp.Or(cfg.HopTimeout, DefaultHopTimeout),
		router:          cfg.Router,
		media:           cfg.Media,
		onEnded:         cfg.OnCallEnded,
		ringing:         newRinging(cfg.MaxRingingPerTrunk, cfg.MaxRinging),
		admit:           newAdmission(),
		policyLog:       rate.Sometimes{Interval: 10 * time.Second},
		glareDelay:      glareDelay,
		reliableT1:      sip.T1,
		calls:           map[string]*call{},
		changed:         make(chan struct{}),
		lan:             &side{name: "pbx", leg: rtpbridge.LegA, client: cfg.LAN.Client, contact: cfg.LAN.Contact},
		wan:             &side{name: "provider", leg: rtpbridge.LegB, client: cfg.WAN.Client, contact: cfg.WAN.Contact},
	}
	b.hops = &nextHops{ctx: ctx, resolve: cfg.Resolve, log: b.log, every: rate.Sometimes{Interval: 10 * time.Second}}
	b.lan.hops, b.wan.hops = b.hops, b.hops
	b.lan.trusts = b.AllowsPBX
	b.SetPBX(cfg.PBX)
	return b, nil
}

// Drain refuses new calls with 503 from now on.
func (b *B2BUA) Drain() { b.drain.Store(true) }

// WaitIdle returns when no call is left, or with ctx's error. It logs the
// calls still up every few seconds so an admin sees why a stop waits.
func (b *B2BUA) WaitIdle(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		b.mu.Lock()
		ch := b.changed
		b.mu.Unlock()
		n := b.Active()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-tick.C:
			b.log.Info("draining: waiting for calls to end", zap.Int("active_calls", n))
		}
	}
}

// goCall runs f in the background unless we are stopping, and reports
// whether it did; HangupAll waits for it. Adding under mu keeps Add from
// racing Wait.
func (b *B2BUA) goCall(f func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

// enter counts a transaction that a sipgo handler runs for us (a relayed
// re-INVITE), so that HangupAll waits for it as for our own goroutines;
// call what it returns when the transaction is over. Once we are
// stopping nothing more is counted: the transaction still runs, bounded
// by its timeout and the base context.
func (b *B2BUA) enter() (leave func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return func() {}
	}
	b.wg.Add(1)
	return b.wg.Done
}

func (b *B2BUA) draining() bool { return b.drain.Load() }

// pbxState is the LAN-side settings a reload may change.
type pbxState struct {
	PBXOptions
	auth *pbxAuth // nil: the PBX is trusted by address alone
}

// SetPBX switches the PBX settings (a reload); Listen stays what New got.
func (b *B2BUA) SetPBX(o PBXOptions) {
	if old := b.pbx.Load(); old != nil {
		o.Listen = old.Listen
	}
	st := &pbxState{PBXOptions: o}
	if o.Username != "" {
		st.auth = newPBXAuth(o.Username, o.Password)
	} else {
		// Said at start and on every reload while it stays so: the
		// admin must know what IP-only trust allows.
		b.log.Warn("the PBX is trusted by its address alone: any LAN host that can send from an address in pbx.allow can place calls; set pbx.username and pbx.password_file (digest)",
			zap.Stringers("allow", o.Allow))
	}
	b.pbx.Store(st)
}

// AllowsPBX reports whether ip is in pbx.allow: the only hosts that may
// send the LAN socket anything (the daemon filters them before sipgo).
func (b *B2BUA) AllowsPBX(ip netip.Addr) bool { return b.pbx.Load().allowed(ip) }

func (b *B2BUA) sideOf(l rtpbridge.Leg) *side {
	if l == rtpbridge.LegA {
		return b.lan
	}
	return b.wan
}

// wanFor is the Internet side as seen by one trunk: its Contact is what
// that trunk's registrar sees, which is what the provider can reach, and
// it trusts the trunk's provider addresses (allows).
func (b *B2BUA) wanFor(contact func() netip.AddrPort, allows func(netip.Addr) bool) *side {
	s := *b.wan
	s.trusts = allows
	if contact == nil {
		return &s
	}
	s.contact = func() netip.AddrPort {
		if a := contact(); a.IsValid() {
			return a
		}
		return b.wan.contact()
	}
	return &s
}

// track puts a new call into the table, unless HangupAll has begun: it
// took its list of calls to hang up when it set stopping, so a call
// tracked later would be missed. It reports whether it did.
func (b *B2BUA) track(c *call) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return false
	}
	for _, d := range c.legs {
		if d != nil {
			b.calls[d.callID] = c
		}
	}
	return true
}

// callByID is the call with a leg of this Call-ID.
func (b *B2BUA) callByID(callID string) (*call, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.calls[callID]
	return c, ok
}

// lookup finds the dialog a request we received belongs to: by Call-ID
// and both tags (RFC 3261 §12.2.2), ours in To and the peer's in From.
// While the call rings, that may be one of the early dialogs (forks) of
// our INVITE; once a 2xx picked one, a request naming another fork, or no
// dialog at all, finds nothing.
func (b *B2BUA) lookup(req *sip.Request) (*call, rtpbridge.Leg, *dialog, bool) {
	if req.CallID() == nil {
		return nil, 0, nil, false
	}
	c, ok := b.callByID(req.CallID().Value())
	if !ok {
		return nil, 0, nil, false
	}
	id := dialogID{callID: req.CallID().Value(), local: sipmsg.Tag(req.To()), remote: sipmsg.Tag(req.From())}
	c.mu.Lock()
	defer c.mu.Unlock()
	for l, d := range c.legs {
		if d != nil && d.id() == id {
			return c, rtpbridge.Leg(l), d, true
		}
	}
	if uac := c.legs[c.uac]; uac != nil && !uac.confirmed() {
		if f := c.forks[id.remote]; f != nil && f.id() == id {
			return c, c.uac, f, true
		}
	}
	return nil, 0, nil, false
}

// finish ends a call once: it frees the relay ports and logs one line with
// the media statistics.
func (b *B2BUA) finish(c *call, reason string) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	legs, answer, moved, onEnd := c.legs, c.answer, c.natMoved, c.onEnd
	c.onEnd = nil
	c.mu.Unlock()
	close(c.done)
	// What the call held in the admission counters is free before anyone
	// hears that it ended.
	for _, f := range onEnd {
		f()
	}
	// Close first: the relay stops and the statistics are final. Then
	// move the call from the table to the media totals under one lock,
	// so a Snapshot never sees it twice or not at all.
	c.media.Close()
	st := c.media.Stats()
	b.mu.Lock()
	for _, d := range legs {
		if d != nil && b.calls[d.callID] == c {
			delete(b.calls, d.callID)
		}
	}
	addDirection(&b.ended[0], st.AtoB)
	addDirection(&b.ended[1], st.BtoA)
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
	if b.onEnded != nil {
		b.onEnded(CallEnded{Direction: c.dir, Trunk: c.trunk, Answered: !answer.IsZero(), Reason: reason, Media: st,
			NATRepaired: moved})
	}
	fields := []zap.Field{zap.String("reason", reason), zap.Object("media", st)}
	if !answer.IsZero() {
		fields = append(fields, zap.Duration("duration", time.Since(answer)))
		if st.OneWay() {
			fields = append(fields, zap.Bool("one_way_audio", true))
		}
	}
	c.log.Info("call ended", fields...)
}

// hangup sends BYE on both legs of an answered call and ends it. A call
// still being set up is the INVITE handler's: it is told to give up
// (CANCEL towards the callee, 503 to the caller) and hangup waits until
// it has ended the call. BYE is only for confirmed dialogs (RFC 3261 §15).
func (b *B2BUA) hangup(c *call, reason string) {
	c.mu.Lock()
	legs, ended, setup := c.legs, c.ended, c.setup
	if setup && c.abortReason == "" {
		c.abortReason = reason
	}
	c.mu.Unlock()
	if ended {
		return
	}
	if setup {
		c.abortOnce.Do(func() { close(c.abort) })
		<-c.done
		return
	}
	var wg sync.WaitGroup
	for _, d := range legs {
		if d != nil && d.confirmed() {
			wg.Add(1)
			go func() { defer wg.Done(); b.bye(d) }()
		}
	}
	wg.Wait()
	b.finish(c, reason)
}

// OnMediaTimeout is the media's callback for a call whose media died; id
// is what NewSession got.
func (b *B2BUA) OnMediaTimeout(id string) {
	c, ok := b.callByID(id)
	if !ok {
		return
	}
	b.goCall(func() { b.hangup(c, "media timeout") })
}

// HangupAll ends every call (shutdown) and waits for the BYEs and
// CANCELs to be answered, and for every goroutine and transaction the
// B2BUA started. From its start no new call is set up and no background
// work is started; each transaction is bounded by its timeout, and
// Close ends them all at once.
func (b *B2BUA) HangupAll(reason string) {
	b.mu.Lock()
	b.stopping = true
	seen := map[*call]bool{}
	for _, c := range b.calls {
		seen[c] = true
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for c := range seen {
		wg.Add(1)
		go func() { defer wg.Done(); b.hangup(c, reason) }()
	}
	wg.Wait()
	b.wg.Wait()
}

// Shutdown stops the B2BUA gracefully, like net/http's Server.Shutdown:
// new calls get 503, every call is hung up (BYE, or CANCEL and 503 while
// it rings) and its BYEs and CANCELs are sent and answered, and it
// returns once everything the B2BUA started has ended. If ctx ends
// first, it Closes, so what is still pending ends at once, and returns
// ctx's error once that is done.
func (b *B2BUA) Shutdown(ctx context.Context) error {
	b.Drain()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.HangupAll("shutdown")
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		b.Close()
		<-done
		return ctx.Err()
	}
}

// Close stops the B2BUA at once, like net/http's Server.Close: it cancels
// the base context of every transaction, so each pending one (a re-INVITE
// the peer never answers, a BYE, a CANCEL) ends now; the calls end, their
// last requests sent but not awaited. It returns once every goroutine and
// transaction the B2BUA started has ended.
func (b *B2BUA) Close() error {
	b.Drain()
	b.stop()
	b.HangupAll("closed")
	return nil
}

// Active is the number of calls up or being set up.
func (b *B2BUA) Active() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := map[*call]bool{}
	for _, c := range b.calls {
		seen[c] = true
	}
	return len(seen)
}

// OnPBXInvite handles an INVITE from the LAN: toll fraud starts here, so
// only the PBX's addresses may call out.
func (b *B2BUA) OnPBXInvite(req *sip.Request, tx sip.ServerTransaction) {
	src, err := netip.ParseAddrPort(req.Source())
	pbx := b.pbx.Load()
	if err != nil || !pbx.allowed(src.Addr()) {
		b.log.Warn("call from an address not in pbx.allow refused", zap.String("from", req.Source()),
			zap.String("call_id", req.CallID().Value()))
		b.reply(tx, req, nil, sip.StatusForbidden, "Forbidden", nil)
		return
	}
	if sipmsg.Tag(req.To()) != "" {
		b.OnReinvite(req, tx)
		return
	}
	if pbx.auth != nil {
		src, _, _ := net.SplitHostPort(req.Source())
		if ok, chal := pbx.auth.check(req, src); !ok {
			b.reply(tx, req, nil, sip.StatusProxyAuthRequired, "Proxy Authentication Required", nil,
				sip.NewHeader("Proxy-Authenticate", chal))
			return
		}
	}
	r, err := b.router.Route(req.Recipient.User)
	switch {
	case errors.Is(err, ErrUnresolved):
		b.reply(tx, req, nil, sip.StatusServiceUnavailable, "Trunk Not Resolved", nil, sip.NewHeader("Retry-After", "10"))
		return
	case err != nil:
		b.reply(tx, req, nil, sip.StatusNotFound, "No Trunk For Number", nil)
		return
	}
	emergency := policy.Emergency(pbx.Emergency, req.Recipient.User)
	if !emergency {
		switch {
		case r.Denied != nil:
			b.policyLog.Do(func() {
				b.log.Warn("outbound call refused by the trunk's rules", zap.String("trunk", r.Trunk), zap.Error(r.Denied))
			})
			b.reply(tx, req, nil, sip.StatusForbidden, "Number Not Allowed", nil)
			return
		case !b.admit.rate(src.Addr(), pbx.MaxCallRate):
			b.policyLog.Do(func() {
				b.log.Warn("outbound call refused: too many new calls from one source", zap.Stringer("from", src.Addr()),
					zap.Float64("max_call_rate", pbx.MaxCallRate))
			})
			b.reply(tx, req, nil, sip.StatusServiceUnavailable, "Call Rate Exceeded", nil, sip.NewHeader("Retry-After", "1"))
			return
		}
	}
	// The trunk's cap counts every call, emergency ones too, but never
	// refuses those.
	if !b.admit.reserve(r.Trunk, r.MaxCalls, emergency) {
		b.reply(tx, req, nil, sip.StatusServiceUnavailable, "Trunk Busy", nil, sip.NewHeader("Retry-After", "5"))
		return
	}
	release := sync.OnceFunc(func() { b.admit.unreserve(r.Trunk) })
	defer b.releaseUnlessLive(req.CallID().Value(), release)
	id := outboundIdentity(req, r)
	b.bridge(b.lan, req, tx, bridgeParams{
		emergency: emergency,
		onEnd:     release,
		to:        b.wanFor(r.Contact, r.Allows),
		ruri:      sip.Uri{Scheme: "sip", User: r.Number, Host: r.Domain},
		from:      id.from,
		at:        sip.Uri{Scheme: "sip", User: r.Number, Host: r.Domain},
		headers:   id.headers,
		dst:       r.Dst,
		alt:       r.Alt,
		hopFailed: r.Failed,
		user:      r.AuthUser,
		pass:      r.Password,
		trunk:     r.Trunk,
		latch:     r.Latching,
		dir:       "outbound",
	})
}

// releaseUnlessLive runs release now unless the call bridge set up under
// callID is still up: then the call's end runs it (bridgeParams.onEnd).
// release must be idempotent: a call that ended in between has run it.
func (b *B2BUA) releaseUnlessLive(callID string, release func()) {
	if c, ok := b.callByID(callID); ok {
		c.mu.Lock()
		live := !c.ended
		c.mu.Unlock()
		if live {
			return
		}
	}
	release()
}

// OnProviderInvite bridges a call for one of our DIDs to the PBX. The
// caller (the trunk layer) has checked the source and the number.
func (b *B2BUA) OnProviderInvite(in Inbound, req *sip.Request, tx sip.ServerTransaction) {
	caller := ""
	if f := req.From(); f != nil {
		caller = f.Address.User
	}
	// bridge returns once the call is answered or has failed: until then
	// it counts against the bound.
	if !b.ringing.admit(in.Trunk) {
		b.ringing.refusedLog.Do(func() {
			b.log.Warn("inbound call refused: too many unanswered calls (a flood of INVITEs?)", zap.String("trunk", in.Trunk),
				zap.Int("max_per_trunk", b.ringing.perTrunk), zap.Int("max_total", b.ringing.total))
		})
		b.reply(tx, req, nil, sip.StatusServiceUnavailable, "Service Unavailable", nil, sip.NewHeader("Retry-After", "10"))
		return
	}
	ring := sync.OnceFunc(func() { b.ringing.release(in.Trunk) })
	defer ring()
	b.admit.reserve(in.Trunk, 0, true) // inbound calls count against max_calls, never refused by it
	held := sync.OnceFunc(func() { b.admit.unreserve(in.Trunk) })
	defer b.releaseUnlessLive(req.CallID().Value(), held)
	pbx := b.pbx.Load()
	lanIP := pbx.Listen.Addr().String()
	b.bridge(b.wanFor(in.Contact, in.Allows), req, tx, bridgeParams{
		to:   b.lan,
		ruri: sip.Uri{Scheme: "sip", User: in.DID, Host: pbx.Addr.Addr().String(), Port: int(pbx.Addr.Port())},
		from: sip.Uri{Scheme: "sip", User: caller, Host: lanIP},
		at:   sip.Uri{Scheme: "sip", User: in.DID, Host: pbx.Addr.Addr().String()},
		// A call the provider forwards to us says from where: the PBX
		// may route on it (voicemail of the number forwarded).
		headers: forwardedHeaders(req, lanIP, asSent),
		dst:     pbx.Addr,
		trunk:   in.Trunk,
		latch:   in.Latching,
		dir:     "inbound",
		onEnd:   func() { ring(); held() },
	})
}

func (p *pbxState) allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range p.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// OnBye ends a call from either side: answer, then hang up the other leg.
func (b *B2BUA) OnBye(req *sip.Request, tx sip.ServerTransaction) {
	c, leg, d, ok := b.lookup(req)
	if !ok || d != c.legOf(leg) {
		// A BYE on an early dialog is not the callee's to send (RFC 3261
		// §15); the caller CANCELs instead.
		b.reply(tx, req, nil, sip.StatusCallTransactionDoesNotExists, "Call/Transaction Does Not Exist", nil)
		return
	}
	b.reply(tx, req, nil, sip.StatusOK, "OK", nil)
	// The BYE to the other leg runs on this handler's goroutine:
	// HangupAll and Close wait for it as for their own.
	defer b.enter()()
	// While our 2xx waits for the caller's PRACK, the caller's dialog is
	// early: holdAnswer gives it a final answer, not a BYE.
	c.mu.Lock()
	early := c.holding && leg == c.uac
	c.mu.Unlock()
	if other := c.other(leg); other != nil && other.confirmed() && !early {
		b.bye(other)
	}
	b.finish(c, "bye from "+b.sideOf(leg).name)
}

// OnAck hands the ACK to the 2xx of ours that waits for it: the one
// that answered the call, or a re-INVITE. Its SDP, if any, is the answer
// to an offer we made in that 2xx.
func (b *B2BUA) OnAck(req *sip.Request, tx sip.ServerTransaction) {
	if c, leg, _, ok := b.lookup(req); ok && req.CSeq() != nil {
		c.acked(leg, req)
	}
}

// OnStrayResponse sees responses no transaction wanted. A 2xx to an
// INVITE arriving again means our ACK was lost: send it again, or the
// callee hangs up. A 2xx from another fork of our INVITE (a To tag that is
// not the one we took) opens a dialog we do not want: ACK it, then BYE it
// (RFC 3261 §13.2.2.4).
func (b *B2BUA) OnStrayResponse(res *sip.Response) {
	cs := res.CSeq()
	if cs == nil || cs.MethodName != sip.INVITE || !res.IsSuccess() || res.CallID() == nil {
		return
	}
	c, ok := b.callByID(res.CallID().Value())
	if !ok {
		return
	}
	// In a response our tag is in From.
	id := dialogID{callID: res.CallID().Value(), local: sipmsg.Tag(res.From()), remote: sipmsg.Tag(res.To())}
	d, extra := c.dialogFor(id, res)
	if d == nil {
		return
	}
	d.mu.Lock()
	var ack *sip.Request
	if d.lastAck != nil && d.lastAck.CSeq().SeqNo == cs.SeqNo {
		ack = d.lastAck.Clone()
	}
	drop := extra && d.lastAck == nil && !d.dropped
	if drop {
		d.dropped = true
	}
	d.mu.Unlock()
	if drop {
		c.log.Info("second 2xx from another fork; hanging it up", zap.String("to_tag", id.remote))
		b.ack(d, cs.SeqNo, nil)
		b.goCall(func() { b.bye(d) })
		return
	}
	if ack == nil {
		return
	}
	if err := d.side.client.WriteRequest(ack, sipgo.ClientRequestBuild); err != nil {
		c.log.Debug("re-ACK failed", zap.Error(err))
	}
}

// OnUpdate relays UPDATE (RFC 3311: session timers, early hold) like a
// re-INVITE.
func (b *B2BUA) OnUpdate(req *sip.Request, tx sip.ServerTransaction) {
	b.OnReinvite(req, tx)
}

// OnReinvite relays a mid-call INVITE or UPDATE (hold, resume, codec
// change, RFC 4028 session refresh) to the other leg with its SDP
// rewritten, and the answer back. The relay ports stay the same. Nothing
// of the offer counts until the other leg accepts it: a refusal (488,
// 491, any 3xx-6xx, a timeout) leaves media, hold, o= versions and the
// SDP of both dialogs as they were (RFC 3264 §8).
func (b *B2BUA) OnReinvite(req *sip.Request, tx sip.ServerTransaction) {
	c, leg, in, ok := b.lookup(req)
	if !ok {
		b.reply(tx, req, nil, sip.StatusCallTransactionDoesNotExists, "Call/Transaction Does Not Exist", nil)
		return
	}
	if b.refuseUnsupported(tx, req, in) {
		return
	}
	// A relay runs its transaction on this handler's goroutine:
	// HangupAll and Close wait for it as for their own.
	defer b.enter()()
	out := c.other(leg)
	body := sdpBody(req)
	if len(body) == 0 {
		if req.Method == sip.INVITE {
			b.refresh(c, leg, in, req, tx)
			return
		}
		// An UPDATE without SDP (a session-timer refresh) carries no
		// offer: relay it as it is.
		b.relay(c, leg, in, out, req, tx, nil, nil)
		return
	}
	offer, err := sdp.Parse(body)
	if err != nil {
		code, reason := statusFor(err)
		b.reply(tx, req, in, code, reason, nil)
		return
	}
	if r := c.claimRelay(leg); r.code != 0 {
		c.log.Debug("offer refused: another exchange under way", zap.String("method", string(req.Method)), zap.Int("status", r.code))
		b.refuse(tx, req, in, r)
		return
	}
	b.relay(c, leg, in, out, req, tx, offer, func() { c.release(leg, 1-leg) })
}

// refresh answers an offerless re-INVITE, typically an RFC 4028 session
// refresh: our 2xx must carry an offer and the answer comes in the ACK.
// Offering exactly what this leg already has (same o= version) changes
// nothing, so the other leg need not be asked.
func (b *B2BUA) refresh(c *call, leg rtpbridge.Leg, in *dialog, req *sip.Request, tx sip.ServerTransaction) {
	if r := c.claimOwn(leg); r.code != 0 {
		b.refuse(tx, req, in, r)
		return
	}
	acked := c.expectAck(leg, req.CSeq().SeqNo)
	in.refreshTarget(req.Contact())
	ok := b.reply(tx, req, in, sip.StatusOK, "OK", in.sdp())
	b.goCall(func() {
		defer c.release(leg)
		ack := b.retransmitUntilAck(c, tx, ok, acked)
		var answer []byte
		if ack != nil {
			answer = sdpBody(ack)
		}
		if len(answer) == 0 {
			return
		}
		// The answer to our offer: where the peer wants media now.
		s, err := sdp.Parse(answer)
		if err == nil {
			err = c.takeAnswer(leg, s)
		}
		if err != nil {
			c.log.Warn("bad SDP answer in ACK", zap.Error(err))
		}
	})
}

// relay sends an in-dialog INVITE or UPDATE that arrived on in to out,
// with body offer (nil: none), and relays the final answer back. done,
// if set, ends the exchange; it runs before we answer, so the peer may
// offer again as soon as it has our answer.
func (b *B2BUA) relay(c *call, leg rtpbridge.Leg, in, out *dialog, req *sip.Request, tx sip.ServerTransaction, offer *sdp.Session, done func()) {
	end := func() {
		if done != nil {
			done()
		}
	}
	var body []byte
	var version uint64
	if offer != nil {
		var err error
		if body, version, err = b.rewrite(c, out, sdpBody(req)); err != nil {
			end()
			code, reason := statusFor(err)
			b.reply(tx, req, in, code, reason, nil)
			return
		}
	}
	ctx, stop := context.WithTimeout(b.ctx, b.reinviteTimeout)
	defer stop()
	fwd := out.newRequest(req.Method, body)
	res, err := b.await(ctx, c, out, fwd)
	switch {
	case err != nil:
		end()
		b.reply(tx, req, in, sip.StatusRequestTimeout, "Request Timeout", nil)
		return
	case res.StatusCode >= 300:
		// Refused: nothing of the offer was applied, so nothing to undo.
		end()
		b.reply(tx, req, in, int(res.StatusCode), res.Reason, nil)
		return
	}
	// The 2xx refreshes out's remote target, and the request we accept
	// in's: a peer that moved says so in either.
	out.refreshTarget(res.Contact())
	in.refreshTarget(req.Contact())
	// The answer commits the offer: both remotes, hold, and what we sent
	// on each leg. A new remote address gets its pinhole before our ACK
	// and our answer, as on the initial answer.
	var answer []byte
	if offer != nil {
		if err := c.applyOffer(leg, offer); err != nil {
			c.log.Warn("bad media address in re-offer", zap.Error(err))
		}
		out.commit(body, version)
		if answer, err = b.answerSDP(c, in, out.side.leg, sdpBody(res)); err != nil {
			c.log.Warn("bad SDP in re-INVITE answer", zap.Error(err))
		}
	}
	if req.Method == sip.INVITE {
		b.ack(out, fwd.CSeq().SeqNo, nil)
	}
	end()
	if req.Method != sip.INVITE {
		b.reply(tx, req, in, sip.StatusOK, "OK", answer)
		return
	}
	acked := c.expectAck(leg, req.CSeq().SeqNo)
	ok := b.reply(tx, req, in, sip.StatusOK, "OK", answer)
	b.goCall(func() { b.retransmitUntilAck(c, tx, ok, acked) })
}
