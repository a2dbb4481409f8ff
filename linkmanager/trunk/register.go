package trunk

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// Backoff bounds. A wrong password starts slow: providers ban addresses
// that hammer them with failed REGISTERs (fail2ban and the like).
const (
	retryMin     = 2 * time.Second
	retryMax     = 5 * time.Minute
	authRetryMin = 30 * time.Second
	authRetryMax = 30 * time.Minute
	// How long one REGISTER transaction may take, digest round included.
	registerTimeout = 10 * time.Second
	// Wait this long for a first STUN answer before registering with the
	// LAN address; the registrar's received/rport then corrects it.
	initialPublicWait = 2 * time.Second
)

// TxFunc runs one non-INVITE client transaction to dst and returns its
// final response. The production one is sipgo's Client.Do pinned to the
// shared socket; tests pass a fake registrar.
type TxFunc func(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error)

// targets is where a registration may send its REGISTER, best first,
// and what it tells the trunk about them.
type targets interface {
	hops(ctx context.Context) ([]netip.AddrPort, error)
	failed(netip.AddrPort)
	registeredAt(netip.AddrPort)
}

// PublicAddrs is what the registration needs from the STUN keeper.
type PublicAddrs interface {
	Public() (stunkeeper.Mapping, bool)
	Subscribe() (<-chan stunkeeper.Mapping, func())
	Observe(stunkeeper.Mapping)
}

// RegStatus is a snapshot of one trunk's registration.
type RegStatus struct {
	Trunk      string
	Register   bool // configured to register at all
	Registered bool
	Since      time.Time      // when the current registration was first confirmed
	Contact    netip.AddrPort // the public address in the registered Contact
	Expires    time.Duration  // as granted by the registrar
	LastError  string
	Registrar  netip.AddrPort
	Keepalive  string
	Public     netip.AddrPort // what the registrar saw in its Via received/rport
	Attempts   int            // REGISTER transactions sent, digest rounds included
	Failures   int            // consecutive failures
	ALG        ALGStatus      // whether the router rewrites SIP (alg.go)
}

// registration owns one trunk's REGISTER dialog: refresh before expiry,
// back off on failure, follow the public address, unregister on stop.
// Its single goroutine (run) owns all mutable fields except status, which
// readers get through Status().
type registration struct {
	conf    Options
	do      TxFunc
	targets targets
	keeper  PublicAddrs
	local   netip.AddrPort
	log     *zap.Logger
	now     func() time.Time
	jitter  func() float64 // in [0,1)
	ua      string
	alg     *algDetector // fed by every answer from the registrar

	// observed carries registrar-seen addresses from the keepalive loop.
	observed chan netip.AddrPort
	// revived says the registrar answers again after the keepalive saw it
	// silent: it may have restarted and forgotten us, and a registration
	// in backoff need not wait out its timer (see Revived).
	revived       chan struct{}
	attempted     chan struct{} // closed after the first REGISTER attempt ends
	attemptedOnce sync.Once
	// keepBinding skips the unregister on stop: a reload's successor
	// registers the same binding.
	keepBinding atomic.Bool

	// Owned by run.
	callID  string
	fromTag string
	cseq    uint32
	contact netip.AddrPort // registered Contact, invalid when not registered
	seen    netip.AddrPort // last received/rport from the registrar
	dst     netip.AddrPort
	okAt    time.Time     // last successful REGISTER
	granted time.Duration // what it granted

	mu     sync.Mutex
	status RegStatus // guarded by mu
}

func newRegistration(conf Options, do TxFunc, to targets, keeper PublicAddrs, local netip.AddrPort, log *zap.Logger) *registration {
	return &registration{
		conf:      conf,
		do:        do,
		targets:   to,
		keeper:    keeper,
		local:     local,
		log:       log,
		now:       time.Now,
		jitter:    rand.Float64,
		ua:        "linkmanager",
		alg:       newALGDetector(log),
		observed:  make(chan netip.AddrPort, 4),
		revived:   make(chan struct{}, 1),
		attempted: make(chan struct{}),
		callID:    sip.GenerateTagN(24) + "@linkmanager",
		fromTag:   sip.GenerateTagN(12),
		cseq:      uint32(rand.N(10000)) + 1,
		status:    RegStatus{Trunk: conf.Name, Keepalive: conf.Keepalive},
	}
}

// Status returns a snapshot for the admin API and tests.
func (r *registration) Status() RegStatus {
	r.mu.Lock()
	st := r.status
	r.mu.Unlock()
	st.ALG = r.alg.status()
	return st
}

func (r *registration) setStatus(f func(*RegStatus)) {
	r.mu.Lock()
	f(&r.status)
	r.mu.Unlock()
}

// Observe is fed registrar-seen addresses (Via received/rport) from
// keepalive OPTIONS or STUN to the registrar. It never blocks.
func (r *registration) Observe(a netip.AddrPort) {
	select {
	case r.observed <- a:
	default:
	}
}

// Revived tells run that the registrar answers a keepalive again after
// it had stopped answering. It never blocks.
func (r *registration) Revived() {
	select {
	case r.revived <- struct{}{}:
	default:
	}
}

// run registers, keeps the registration fresh and unregisters when ctx
// ends. It returns only when ctx is done.
func (r *registration) run(ctx context.Context) error {
	defer r.attemptedOnce.Do(func() { close(r.attempted) })
	changes, unsubscribe := r.keeper.Subscribe()
	defer unsubscribe()

	r.waitForPublic(ctx, changes)

	timer := time.NewTimer(0)
	defer timer.Stop()
	failures, quick := 0, 0
	var want netip.AddrPort // a better Contact to register, if any
	for {
		select {
		case <-ctx.Done():
			if !r.keepBinding.Load() {
				r.unregister()
			}
			return nil
		case m := <-changes:
			if c := r.candidate(m); c.IsValid() {
				want = c
				resetTimer(timer, 0)
			}
			continue
		case <-r.revived:
			r.log.Info("registrar answers again: registering now")
			resetTimer(timer, 0)
			continue
		case a := <-r.observed:
			if r.contact.IsValid() && a != r.contact {
				r.log.Info("registrar sees a new public address", zap.Stringer("public_addr", a),
					zap.Stringer("contact", r.contact))
				want = a
				resetTimer(timer, 0)
			}
			continue
		case <-timer.C:
		}

		next, err := r.register(ctx, want)
		r.attemptedOnce.Do(func() { close(r.attempted) })
		want = netip.AddrPort{}
		if ctx.Err() != nil {
			if !r.keepBinding.Load() {
				r.unregister()
			}
			return nil
		}
		var delay time.Duration
		switch {
		case err == nil && next.IsValid() && quick < 2:
			// The registrar sees us elsewhere than our Contact says:
			// fix it now. Bounded, so a NAT that changes the port on
			// every packet cannot make us loop.
			want, delay = next, 0
			quick++
		case err == nil:
			failures, quick = 0, 0
			delay = r.refreshIn(r.Status().Expires)
		default:
			failures++
			quick = 0
			delay = r.retryIn(err, failures)
			r.setStatus(func(s *RegStatus) { s.Failures = failures })
			r.log.Error("registration failed", zap.Error(err),
				zap.Duration("retry_in", delay), zap.Int("failures", failures))
		}
		resetTimer(timer, delay)
	}
}

// waitForPublic gives STUN a moment so the first REGISTER already carries
// the public address.
func (r *registration) waitForPublic(ctx context.Context, changes <-chan stunkeeper.Mapping) {
	if _, ok := r.keeper.Public(); ok {
		return
	}
	t := time.NewTimer(initialPublicWait)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-changes:
	}
}

// candidate turns a keeper event into a Contact worth re-registering with.
func (r *registration) candidate(m stunkeeper.Mapping) netip.AddrPort {
	if !r.contact.IsValid() || m.Addr == r.contact {
		return netip.AddrPort{}
	}
	if m.Via != r.dst && r.seen.IsValid() && m.Addr.Addr() == r.seen.Addr() && m.Addr.Port() != r.seen.Port() {
		// Same IP, other port, seen by a STUN server: the NAT maps per
		// destination (or the STUN flow was re-mapped). The registrar's
		// own view is what matters for inbound calls, so keep it.
		return netip.AddrPort{}
	}
	r.log.Info("public address changed",
		zap.Stringer("old", r.contact), zap.Stringer("new", m.Addr), zap.String("source", string(m.Source)))
	return m.Addr
}

// contactFor picks the address to advertise: an explicit wish, else what
// the registrar reported, else STUN, else the LAN address.
func (r *registration) contactFor(want netip.AddrPort) netip.AddrPort {
	switch {
	case want.IsValid():
		return want
	case r.seen.IsValid():
		return r.seen
	}
	if m, ok := r.keeper.Public(); ok {
		return m.Addr
	}
	return r.local
}

// register runs one REGISTER (with digest) and records the outcome. It
// returns a valid address when the registrar saw us somewhere other than
// the Contact we registered, so the caller re-registers at once.
//
// It tries the targets in order: one that does not answer, or answers
// 408 or 503, is held down and the next one gets the same REGISTER.
// Every attempt starts from the best target, so a refresh returns to the
// primary once its hold-down is over.
func (r *registration) register(ctx context.Context, want netip.AddrPort) (netip.AddrPort, error) {
	hops, err := r.targets.hops(ctx)
	if err != nil {
		r.fail(err)
		if !errors.Is(err, ErrResolve) {
			err = fmt.Errorf("%w: %w", ErrResolve, err)
		}
		return netip.AddrPort{}, err
	}
	for i, dst := range hops {
		next, err := r.registerAt(ctx, dst, want)
		if err == nil {
			r.targets.registeredAt(dst)
			return next, nil
		}
		if !failover(err) || ctx.Err() != nil {
			return netip.AddrPort{}, err
		}
		r.targets.failed(dst)
		if i+1 < len(hops) {
			r.log.Warn("registrar target failed; trying the next", zap.Stringer("target", dst),
				zap.Stringer("next", hops[i+1]), zap.Error(err))
			continue
		}
		return netip.AddrPort{}, err
	}
	return netip.AddrPort{}, fmt.Errorf("%w: no target", ErrResolve)
}

// registerAt is one REGISTER (with digest) at dst; see register.
func (r *registration) registerAt(ctx context.Context, dst netip.AddrPort, want netip.AddrPort) (netip.AddrPort, error) {
	if !want.IsValid() && !r.seen.IsValid() {
		if _, ok := r.keeper.Public(); !ok {
			// Nobody has told us our public address yet (no STUN
			// answer): ask the registrar before registering, so the
			// provider never sees the LAN address in Contact or Via.
			if err := r.learnPublic(ctx, dst); err != nil {
				r.fail(err)
				return netip.AddrPort{}, err
			}
		}
	}
	contact := r.contactFor(want)
	var stale netip.AddrPort
	if r.contact.IsValid() && r.contact != contact {
		stale = r.contact
	}
	req, res, err := r.transact(ctx, dst, contact, stale, r.conf.Expires)
	if err != nil {
		r.fail(err)
		return netip.AddrPort{}, err
	}
	granted := grantedExpires(res, r.conf.Expires, contact, r.local)
	seen := registrarSaw(req, res, r.local)
	if seen.IsValid() {
		r.seen = seen
		r.keeper.Observe(stunkeeper.Mapping{Addr: seen, Via: dst, Source: stunkeeper.SourceRegistrar, At: r.now()})
	}
	wasRegistered := r.contact == contact && r.dst == dst
	r.dst, r.contact, r.okAt, r.granted = dst, contact, r.now(), granted
	r.setStatus(func(s *RegStatus) {
		if !s.Registered || !wasRegistered {
			s.Since = r.now()
		}
		s.Registered, s.Contact, s.Expires, s.LastError = true, contact, granted, ""
		s.Registrar, s.Failures = dst, 0
		if seen.IsValid() || !viaReceived(res).IsValid() {
			s.Public = seen // not replaced by an ALG's rewrite
		}
	})
	r.log.Info("registered", zap.Stringer("contact", contact),
		zap.Duration("expires", granted), zap.Stringer("public_addr", seen), zap.Stringer("registrar", dst))
	if seen.IsValid() && seen != contact {
		return seen, nil
	}
	return netip.AddrPort{}, nil
}

func (r *registration) fail(err error) {
	// A rejected registration is gone now; one that could not be
	// refreshed is gone once its last grant runs out.
	gone := errors.Is(err, ErrRejected) || errors.Is(err, ErrAuth) ||
		(r.contact.IsValid() && r.now().After(r.okAt.Add(r.granted)))
	if gone {
		r.contact = netip.AddrPort{}
	}
	r.setStatus(func(s *RegStatus) {
		s.LastError = err.Error()
		if gone {
			s.Registered = false
		}
	})
}

// unregister removes our binding (Expires 0) on shutdown. It has its own
// short deadline: the process is stopping and must not hang on a dead
// provider.
func (r *registration) unregister() {
	if !r.contact.IsValid() || !r.dst.IsValid() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, _, err := r.transact(ctx, r.dst, r.contact, netip.AddrPort{}, 0); err != nil {
		r.log.Warn("unregister failed", zap.Error(err))
		return
	}
	r.contact = netip.AddrPort{}
	r.setStatus(func(s *RegStatus) { s.Registered = false })
	r.log.Info("unregistered")
}

// transact sends REGISTER and answers one digest challenge. A second
// challenge after valid credentials means they are wrong (unless the
// server says the nonce was merely stale). It returns the 200 and the
// request it answers; every answer goes to the ALG detector.
func (r *registration) transact(ctx context.Context, dst, contact, stale netip.AddrPort, expires time.Duration) (*sip.Request, *sip.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	var auth sip.Header
	for round := 0; round < 3; round++ {
		req := r.buildRegister(contact, stale, expires)
		if auth != nil {
			req.AppendHeader(auth)
		}
		r.setStatus(func(s *RegStatus) { s.Attempts++ })
		res, err := r.do(ctx, req, dst)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrNoAnswer, err)
		}
		r.alg.observe(inspect(req, res, r.local))
		switch res.StatusCode {
		case sip.StatusOK:
			return req, res, nil
		case sip.StatusUnauthorized, sip.StatusProxyAuthRequired:
			chal, hdr, err := challenge(res)
			if err != nil {
				return nil, nil, err
			}
			if auth != nil && !chal.Stale {
				return nil, nil, fmt.Errorf("%w: %d %s after sending credentials for user %q: check username/auth_username and password",
					ErrAuth, res.StatusCode, res.Reason, r.authUser())
			}
			cred, err := digest.Digest(chal, digest.Options{
				Method:   "REGISTER",
				URI:      req.Recipient.String(),
				Username: r.authUser(),
				Password: r.conf.Password,
			})
			if err != nil {
				return nil, nil, fmt.Errorf("%w: %w", ErrAuth, err)
			}
			auth = sip.NewHeader(hdr, cred.String())
		case sip.StatusIntervalToBrief:
			min, err := minExpires(res)
			if err != nil || expires >= min {
				return nil, nil, fmt.Errorf("%w: 423 without a usable Min-Expires", ErrRejected)
			}
			r.log.Warn("registrar wants longer expiry", zap.Duration("min_expires", min))
			r.conf.Expires, expires = min, min
		default:
			return nil, nil, &StatusError{Code: int(res.StatusCode), Reason: res.Reason, RetryAfter: retryAfter(res)}
		}
	}
	return nil, nil, fmt.Errorf("%w: too many challenges", ErrAuth)
}

func (r *registration) authUser() string {
	if r.conf.AuthUsername != "" {
		return r.conf.AuthUsername
	}
	return r.conf.Username
}

// buildRegister builds a REGISTER from scratch each time: a fresh Via
// branch per transaction (RFC 3261 §8.1.1.7), the same Call-ID and a rising
// CSeq for the whole registration (§10.2.4).
func (r *registration) buildRegister(contact, stale netip.AddrPort, expires time.Duration) *sip.Request {
	aor := sip.Uri{Scheme: "sip", User: r.conf.Username, Host: r.conf.Domain}
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: r.conf.Domain})
	req.AppendHeader(sipmsg.NewVia(contact))
	req.AppendHeader(&sip.FromHeader{Address: aor, Params: sipmsg.Params("tag", r.fromTag)})
	req.AppendHeader(&sip.ToHeader{Address: aor, Params: sip.NewParams()})
	cid := sip.CallIDHeader(r.callID)
	req.AppendHeader(&cid)
	r.cseq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: r.cseq, MethodName: sip.REGISTER})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(&sip.ContactHeader{Address: contactURI(r.conf.Username, contact), Params: sip.NewParams()})
	if stale.IsValid() {
		// Remove the binding of our old address in the same request, so
		// the provider never forks calls to a dead address.
		req.AppendHeader(&sip.ContactHeader{Address: contactURI(r.conf.Username, stale),
			Params: sipmsg.Params("expires", "0")})
	}
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(int(expires/time.Second))))
	req.AppendHeader(sip.NewHeader("User-Agent", r.ua))
	req.SetBody(nil)
	return req
}

// refreshIn re-registers well before expiry: at 3/4 of short
// registrations, one minute early for long ones.
func (r *registration) refreshIn(granted time.Duration) time.Duration {
	if granted <= 0 {
		granted = r.conf.Expires
	}
	d := granted - min(granted/4, time.Minute)
	if r.conf.RefreshMax > 0 {
		d = min(d, r.conf.RefreshMax)
	}
	return d
}

// retryIn is exponential backoff with ±25% jitter, honouring Retry-After.
func (r *registration) retryIn(err error, failures int) time.Duration {
	lo, hi := retryMin, retryMax
	if errors.Is(err, ErrAuth) {
		lo, hi = authRetryMin, authRetryMax
	}
	d := lo << min(failures-1, 16)
	if se := (*StatusError)(nil); errors.As(err, &se) && se.RetryAfter > d {
		d = se.RetryAfter
	}
	d = min(d, hi)
	return time.Duration(float64(d) * (0.75 + 0.5*r.jitter()))
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

func contactURI(user string, a netip.AddrPort) sip.Uri {
	return sip.Uri{Scheme: "sip", User: user, Host: a.Addr().String(), Port: int(a.Port())}
}

// unknownHost is the Via sent-by of a probe sent before we know our public
// address: a name that cannot resolve (RFC 6761), so no LAN address leaves
// the house, and rport (RFC 3581) makes the registrar answer to where the
// packet came from and say where that was.
const unknownHost = "linkmanager.invalid"

// learnPublic sends one OPTIONS to the registrar with an unknown sent-by and
// takes its received/rport as the public address. Any answer will do, a
// 405 or 404 too.
func (r *registration) learnPublic(ctx context.Context, dst netip.AddrPort) error {
	req := probeOptions(r.conf, r.local.Port(), r.ua)
	tctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	res, err := r.do(tctx, req, dst)
	if err != nil {
		return fmt.Errorf("%w: learning the public address from %s: %w", ErrNoAnswer, dst, err)
	}
	r.alg.observe(inspect(req, res, r.local))
	seen := registrarSaw(req, res, r.local)
	if !seen.IsValid() {
		return fmt.Errorf("%w: %s did not say where our OPTIONS came from (no received/rport in its Via)", ErrNoAnswer, dst)
	}
	r.seen = seen
	r.keeper.Observe(stunkeeper.Mapping{Addr: seen, Via: dst, Source: stunkeeper.SourceRegistrar, At: r.now()})
	r.log.Info("public address learned from the registrar", zap.Stringer("public_addr", seen), zap.Stringer("registrar", dst))
	return nil
}

// probeTimeout bounds learnPublic: a UDP transaction gives up after 32 s,
// far too long to hold the first REGISTER.
const probeTimeout = 5 * time.Second

// probeOptions is an out-of-dialog OPTIONS whose Via names no address.
func probeOptions(conf Options, port uint16, ua string) *sip.Request {
	via := sipmsg.NewVia(netip.AddrPortFrom(netip.IPv4Unspecified(), port))
	via.Host = unknownHost
	aor := sip.Uri{Scheme: "sip", User: conf.Username, Host: conf.Domain}
	req := sip.NewRequest(sip.OPTIONS, sip.Uri{Scheme: "sip", Host: conf.Domain})
	req.AppendHeader(via)
	req.AppendHeader(&sip.FromHeader{Address: aor, Params: sipmsg.Params("tag", sip.GenerateTagN(12))})
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", Host: conf.Domain}, Params: sip.NewParams()})
	cid := sip.CallIDHeader(sip.GenerateTagN(24) + "@linkmanager")
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: sip.OPTIONS})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.AppendHeader(sip.NewHeader("User-Agent", ua))
	req.SetBody(nil)
	return req
}

// viaReceived is the address the server saw our request come from: the
// received and rport parameters of our own Via (RFC 3261 §18.2.1, RFC
// 3581). A server omits received when it equals the sent-by host.
func viaReceived(res *sip.Response) netip.AddrPort {
	via := res.Via()
	if via == nil {
		return netip.AddrPort{}
	}
	host := via.Host
	if rec, ok := via.Params.Get("received"); ok && rec != "" {
		host = rec
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}
	}
	port := via.Port
	rp, ok := via.Params.Get("rport")
	if !ok || rp == "" {
		// Without rport the server did not tell us our port; the host
		// alone could still be a stale guess of ours.
		return netip.AddrPort{}
	}
	if p, err := strconv.Atoi(rp); err == nil {
		port = p
	}
	if port <= 0 || port > 65535 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port))
}

// grantedExpires reads what the registrar granted for our Contact: its
// expires parameter, else the Expires header, else what we asked for.
// Our Contact is any of ours: a SIP ALG rewrites the one we sent into our
// LAN address on the way back.
func grantedExpires(res *sip.Response, asked time.Duration, ours ...netip.AddrPort) time.Duration {
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || !slices.ContainsFunc(ours, func(a netip.AddrPort) bool { return a.IsValid() && uriIs(c.Address, a) }) {
			continue
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return time.Duration(n) * time.Second
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.Atoi(h.Value()); err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	return asked
}

// challenge is sipmsg.Challenge as an authentication failure.
func challenge(res *sip.Response) (*digest.Challenge, string, error) {
	chal, hdr, err := sipmsg.Challenge(res)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrAuth, err)
	}
	return chal, hdr, nil
}

func minExpires(res *sip.Response) (time.Duration, error) {
	h := res.GetHeader("Min-Expires")
	if h == nil {
		return 0, errors.New("no Min-Expires")
	}
	n, err := strconv.Atoi(h.Value())
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad Min-Expires %q", h.Value())
	}
	return time.Duration(n) * time.Second, nil
}

func retryAfter(res *sip.Response) time.Duration {
	h := res.GetHeader("Retry-After")
	if h == nil {
		return 0
	}
	v := h.Value()
	for i, ch := range v {
		if ch < '0' || ch > '9' {
			v = v[:i]
			break
		}
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0
	}
	return time.Duration(n) * time.Second
}
