package linkmanager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// Version is set by the build (-ldflags "-X ...linkmanager.Version=...").
var Version = "dev"

// Options wires a Server. The caller owns the socket inside Conn.
type Options struct {
	Conn     *sharedconn.Conn
	Keeper   *stunkeeper.Keeper
	Trunks   []trunk.Options
	Interval time.Duration // keepalive interval for registrar flows
	Logger   *zap.Logger
	Resolver trunk.Resolver // nil: net.DefaultResolver

	// The B2BUA. Without PBXConn, calls for our DIDs are refused (480).
	PBXConn     *sharedconn.Conn // the LAN socket the PBX talks to
	PBX         b2bua.PBXOptions //
	Media       rtpbridge.Config // relay pools and timers; OnTimeout is set by New
	RingTimeout time.Duration    // 0: b2bua.DefaultRingTimeout

	// NATWatch, if set, is the NAT self-test the caller runs; /status
	// shows its last report with advice for the RTP pool RTPPorts.
	NATWatch *stunkeeper.NATWatch
	RTPPorts [2]int
	// PortMap, if set, holds the router's mappings (nat.portmap auto):
	// the caller runs it. Each call's Internet-side RTP pair is mapped
	// before its SDP goes out, and the mapped addresses are advertised
	// where they differ from the local ports.
	PortMap *portmap.Mapper
}

// Server is the SIP side of the daemon on the shared Internet socket:
// trunk registrations, keepalives and inbound requests from providers.
type Server struct {
	conn     *sharedconn.Conn
	keeper   *stunkeeper.Keeper
	natw     *stunkeeper.NATWatch // nil: no self-test
	portmap  *portmap.Mapper      // nil: nat.portmap off
	rtpPorts [2]int
	log      *zap.Logger
	ua       *sipgo.UserAgent
	srv      *sipgo.Server
	client   *sipgo.Client

	draining atomic.Bool // set by Shutdown: readiness fails, new calls get 503
	trunks   atomic.Pointer[[]*trunk.Trunk]
	tmu      sync.Mutex // serialises starting and stopping trunks (Run, Reload)
	started  bool       // guarded by tmu; Run has started the trunks
	stopped  bool       // guarded by tmu; Run is stopping them
	lookup   trunk.Resolver
	interval time.Duration
	local    netip.AddrPort
	rootLog  *zap.Logger
	metrics  *admin.Metrics

	b2bua  *b2bua.B2BUA // nil without a PBX socket
	media  *rtpbridge.Bridge
	policy *mediaPolicy // nil without a PBX socket
	lan    *sharedconn.Conn
	lanUA  *sipgo.UserAgent
	lanSrv *sipgo.Server
}

// New builds the server; nothing runs until Run.
func New(opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	slogger := SIPGoLogger(log)
	local := opts.Conn.LocalAddrPort()
	s := &Server{conn: opts.Conn, keeper: opts.Keeper, natw: opts.NATWatch, portmap: opts.PortMap, rtpPorts: opts.RTPPorts, log: log.Named("sip"), metrics: admin.NewMetrics()}
	// rport on the Internet side: the provider answers to our NAT
	// mapping and tells us what it is.
	ua, srv, client, err := s.sipStack("sip", local, slogger, sipgo.WithClientNAT())
	if err != nil {
		return nil, err
	}
	s.ua, s.srv, s.client = ua, srv, client
	s.lookup = net.DefaultResolver
	if opts.Resolver != nil {
		s.lookup = opts.Resolver
	}
	s.interval, s.local, s.rootLog = opts.Interval, local, log
	trunks := make([]*trunk.Trunk, 0, len(opts.Trunks))
	for _, to := range opts.Trunks {
		trunks = append(trunks, s.newTrunk(to))
	}
	s.trunks.Store(&trunks)
	opts.Conn.SetRequestFilter(s.allowRequest)
	srv.OnOptions(s.onOptions)
	srv.OnInvite(s.onInvite)
	if opts.PBXConn != nil {
		if err := s.newB2BUA(opts, slogger, log); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// newTrunk builds (but does not start) one provider account on the
// shared socket.
func (s *Server) newTrunk(o trunk.Options) *trunk.Trunk {
	return trunk.New(o, trunk.Deps{Do: s.do, Probe: s.keeper.Probe, Send: s.conn.Send, LastSent: s.conn.LastSent,
		Keeper: s.keeper, Local: s.local, Interval: s.interval, Lookup: s.lookup,
		UserAgent: "linkmanager/" + Version, Logger: s.rootLog})
}

// trunkList is the current trunks; a reload swaps the whole slice.
func (s *Server) trunkList() []*trunk.Trunk { return *s.trunks.Load() }

// sipStack builds a sipgo user agent, server and client for one socket.
// The client is pinned to the exact IP:port: sipgo then finds our
// listening socket in its pool for every request instead of binding an
// ephemeral one.
func (s *Server) sipStack(name string, local netip.AddrPort, slogger *slog.Logger, extra ...sipgo.ClientOption) (
	*sipgo.UserAgent, *sipgo.Server, *sipgo.Client, error) {
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("linkmanager/"+Version),
		sipgo.WithUserAgentHostname(local.Addr().String()),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slogger)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slogger),
			sip.WithTransactionLayerUnhandledResponseHandler(s.strayResponse)),
	)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("linkmanager: %s user agent: %w", name, err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slogger))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("linkmanager: %s server: %w", name, err)
	}
	opts := append([]sipgo.ClientOption{sipgo.WithClientConnectionAddr(local.String()), sipgo.WithClientLogger(slogger)}, extra...)
	client, err := sipgo.NewClient(ua, opts...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("linkmanager: %s client: %w", name, err)
	}
	return ua, srv, client, nil
}

// wanContactOf is the Internet side's Contact for trunks that do not
// register (those that do use what their registrar saw). A router-granted
// mapping of the SIP port is reachable by anyone, what STUN saw only from
// where it was seen, so the mapping comes first, but with STUN's IP when
// STUN sees another: after a redial the lease names the old address until
// its renewal, an hour away. A mapping whose address is not public (a
// router behind carrier-grade or another NAT grants its own WAN address,
// 100.64.x.x or 10.x.x.x) is not used. Without either, the socket's own
// address (no NAT).
func wanContactOf(lease, stun, local netip.AddrPort) netip.AddrPort {
	if lease.IsValid() && routable(lease.Addr()) {
		if stun.IsValid() && stun.Addr() != lease.Addr() {
			return netip.AddrPortFrom(stun.Addr(), lease.Port())
		}
		return lease
	}
	if stun.IsValid() {
		return stun
	}
	return local
}

// carrierNAT is the shared address space of carrier-grade NATs (RFC 6598).
var carrierNAT = netip.MustParsePrefix("100.64.0.0/10")

// routable reports an address the Internet can reach: not private, not
// carrier-grade NAT space, loopback, link-local or unspecified. It is
// asked on every call set-up, so the prefix is parsed once, above.
func routable(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsGlobalUnicast() && !a.IsPrivate() && !carrierNAT.Contains(a)
}

// pbxRejectsPerSecond bounds the stateless 403s to LAN hosts outside
// pbx.allow: enough for a misconfigured PBX to see why, too few to amplify.
const pbxRejectsPerSecond = 5

// newB2BUA sets up the LAN side: its own user agent on the PBX socket, so
// LAN and Internet transactions never share a socket by accident.
func (s *Server) newB2BUA(opts Options, slogger *slog.Logger, log *zap.Logger) error {
	lanAddr := opts.PBXConn.LocalAddrPort()
	ua, srv, client, err := s.sipStack("pbx", lanAddr, slogger)
	if err != nil {
		return err
	}
	wanContact := func() netip.AddrPort {
		var lease netip.AddrPort
		if pm := s.portmap; pm != nil {
			lease, _ = pm.Lookup(s.conn.LocalAddrPort().Port())
		}
		var seen netip.AddrPort
		if m, ok := s.keeper.Public(); ok {
			seen = m.Addr
		}
		return wanContactOf(lease, seen, s.conn.LocalAddrPort())
	}
	pbx := opts.PBX
	pbx.Listen = lanAddr
	// The relay's timeout callback needs the B2BUA, which needs the
	// relay: b is set before any session exists.
	var b *b2bua.B2BUA
	mc := opts.Media
	mc.OnTimeout = func(ms *rtpbridge.Session) { b.OnMediaTimeout(ms.ID()) }
	mc.OnNoInbound = func(ms *rtpbridge.Session, l rtpbridge.Leg) { b.OnNoInbound(ms.ID(), l) }
	if mc.Logger == nil {
		mc.Logger = log
	}
	media, err := rtpbridge.New(mc)
	if err != nil {
		return fmt.Errorf("linkmanager: media relay: %w", err)
	}
	// Calls the providers offer hold a relay pair from their INVITE on;
	// unanswered, at most a quarter of the pool per trunk and half in
	// total, so an INVITE flood from a forged provider address leaves the
	// PBX's calls their pairs (issue 9 item 7).
	capacity := media.Counts().MaxSessions()
	s.policy = newMediaPolicy(pbx, s.local.Addr(), func() (netip.Addr, bool) {
		m, ok := s.keeper.Public()
		return m.Addr.Addr(), ok
	}, s.rtpPorts, log.Named("media"))
	b, err = b2bua.New(b2bua.Config{
		MaxRingingPerTrunk: max(capacity/4, 1),
		MaxRinging:         max(capacity/2, 1),
		Logger:             log.Named("call"),
		LAN:                b2bua.Side{Client: client, Contact: func() netip.AddrPort { return lanAddr }},
		WAN:                b2bua.Side{Client: s.client, Contact: wanContact},
		PBX:                pbx,
		Router:             s,
		Media: bridgeMedia{b: media, watch: &capacityWatch{log: log.Named("media")}, policy: s.policy,
			pm: s.portmap, log: log.Named("portmap")},
		RingTimeout: opts.RingTimeout,
		OnCallEnded: s.metrics.CallEnded,
		Resolve: func(ctx context.Context, host string, port int) ([]netip.AddrPort, error) {
			return trunk.Lookup(ctx, s.lookup, host, port)
		},
	})
	if err != nil {
		media.Close()
		return fmt.Errorf("linkmanager: %w", err)
	}
	// Only pbx.allow may talk to the LAN socket at all. Anyone else gets
	// one stateless 403, a few per second at most, and never a
	// transaction: refused through sipgo, 40k INVITEs from a rogue LAN
	// host once drew 213,430 retransmitted 403s and ~430 MiB of heap.
	opts.PBXConn.SetRequestFilter(func(from netip.AddrPort) bool { return b.AllowsPBX(from.Addr()) })
	opts.PBXConn.SetReject(403, "Forbidden", pbxRejectsPerSecond)
	srv.OnInvite(b.OnPBXInvite)
	srv.OnAck(b.OnAck)
	srv.OnBye(b.OnBye)
	srv.OnUpdate(b.OnUpdate)
	srv.OnPrack(b.OnPrack)
	srv.OnOptions(s.onOptions)
	s.srv.OnAck(b.OnAck)
	s.srv.OnBye(b.OnBye)
	s.srv.OnUpdate(b.OnUpdate)
	s.srv.OnPrack(b.OnPrack)
	s.b2bua, s.media, s.lan, s.lanUA, s.lanSrv = b, media, opts.PBXConn, ua, srv
	return nil
}

// strayResponse is sipgo's hook for responses without a transaction.
func (s *Server) strayResponse(res *sip.Response) {
	if b := s.b2bua; b != nil {
		b.OnStrayResponse(res)
	}
}

// do runs one client transaction from the shared socket.
func (s *Server) do(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
	req.SetDestination(dst.String())
	return s.client.Do(ctx, req)
}

// hangupBudget bounds the hang-up of the calls left at shutdown: a
// BYE's 4 s and a margin. With shutdown.grace before it and the
// unregistration after, the stop stays inside systemd's TimeoutStopSec.
const hangupBudget = 5 * time.Second

// Run serves until ctx ends, then unregisters every trunk and stops. It
// returns nil after a clean stop.
func (s *Server) Run(ctx context.Context) error {
	keeperCtx, stopKeeper := context.WithCancel(context.Background())
	defer stopKeeper()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.srv.ServeUDP(s.conn); err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("linkmanager: sip listener: %w", err)
		}
		if gctx.Err() == nil {
			return fmt.Errorf("linkmanager: sip listener stopped")
		}
		return nil
	})
	g.Go(func() error { return s.keeper.Run(keeperCtx) })
	if s.b2bua != nil {
		g.Go(func() error {
			if err := s.lanSrv.ServeUDP(s.lan); err != nil && !errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("linkmanager: pbx listener: %w", err)
			}
			if gctx.Err() == nil {
				return fmt.Errorf("linkmanager: pbx listener stopped")
			}
			return nil
		})
	}
	if s.b2bua != nil {
		g.Go(func() error { return s.followAddress(gctx) })
	}
	g.Go(func() error {
		// Requests sent before sipgo has the socket in its pool would go
		// out from a fresh ephemeral socket.
		select {
		case <-s.conn.Ready():
		case <-gctx.Done():
		}
		// Trunks have their own lifetimes (a reload adds and removes
		// them); on shutdown they must stay registered until the calls
		// are hung up.
		s.tmu.Lock()
		for _, t := range s.trunkList() {
			t.Start()
		}
		s.started = true
		s.tmu.Unlock()
		<-gctx.Done()
		if s.b2bua != nil {
			// BYE (or CANCEL) what is left; whatever is not answered
			// within hangupBudget the B2BUA's Close ends at once.
			hctx, stop := context.WithTimeout(context.Background(), hangupBudget)
			if err := s.b2bua.Shutdown(hctx); err != nil {
				s.log.Warn("calls hung up without waiting for every answer", zap.Duration("after", hangupBudget))
			}
			stop()
		}
		s.tmu.Lock()
		s.stopped = true
		var wg sync.WaitGroup
		for _, t := range s.trunkList() {
			wg.Add(1)
			go func() { defer wg.Done(); t.Stop(false) }()
		}
		wg.Wait()
		s.tmu.Unlock()
		var err error
		// Trunks have unregistered; now stop STUN and the sockets.
		stopKeeper()
		s.ua.Close()
		s.conn.Close()
		if s.b2bua != nil {
			s.lanUA.Close()
			s.lan.Close()
			s.media.Close()
		}
		return err
	})
	return g.Wait()
}

// WaitStarted returns once the SIP socket is served and every trunk that
// registers has made its first attempt (whatever the outcome): the point
// where systemd may call the service started.
func (s *Server) WaitStarted(ctx context.Context) error {
	select {
	case <-s.conn.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, t := range s.trunkList() {
		if !t.Options().Register {
			continue
		}
		select {
		case <-t.Attempted():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// readerStall is how long sipgo's reader may spend on one message before
// the watchdog calls it wedged. sipgo parses in the read loop and hands
// each message to a goroutine, so a healthy reader is back in well under
// a second even under load; systemd's WatchdogSec (30 s) must exceed it.
const readerStall = 10 * time.Second

// Alive is the watchdog's check: the SIP stack is still reading both
// sockets. sipgo never restarts a listener that stopped.
func (s *Server) Alive() bool {
	if s.draining.Load() {
		return true // stopping on purpose; the stop timeout covers us
	}
	return s.conn.Listening(readerStall) && (s.lan == nil || s.lan.Listening(readerStall))
}

// ReloadOptions is what a configuration reload may change while calls
// are up. The sockets and the relay ranges are not among them.
type ReloadOptions struct {
	Trunks      []trunk.Options
	PBX         b2bua.PBXOptions // Listen is kept
	STUNServers []string
}

// Reload applies a new configuration without dropping a call: STUN
// servers and PBX settings switch at once; a trunk whose settings changed
// is replaced (re-registering), a removed one unregisters, an added one
// starts. It returns what it changed, for the log.
func (s *Server) Reload(o ReloadOptions) ([]string, error) {
	if err := s.keeper.SetServers(o.STUNServers); err != nil {
		return nil, fmt.Errorf("linkmanager: reload stun.servers: %w", err)
	}
	if s.natw != nil && len(o.STUNServers) > 0 {
		if err := s.natw.SetServers(o.STUNServers); err != nil {
			return nil, fmt.Errorf("linkmanager: reload stun.servers (NAT test): %w", err)
		}
	}
	var changed []string
	if b := s.b2bua; b != nil {
		b.SetPBX(o.PBX)
		s.policy.setPBX(o.PBX)
	}
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if s.stopped {
		return nil, ErrServerClosed
	}
	old := map[string]*trunk.Trunk{}
	for _, t := range s.trunkList() {
		old[t.Name()] = t
	}
	next := make([]*trunk.Trunk, 0, len(o.Trunks))
	for _, to := range o.Trunks {
		prev := old[to.Name]
		delete(old, to.Name)
		if prev != nil && prev.Options().Same(to) {
			next = append(next, prev)
			continue
		}
		t := s.newTrunk(to)
		if prev != nil {
			po := prev.Options()
			// The same account at the same registrar: hand the binding
			// over instead of removing and re-adding it.
			same := po.Username == to.Username && po.Domain == to.Domain && po.Host == to.Host && po.Port == to.Port
			if po.Host == to.Host && po.Port == to.Port {
				t.Inherit(prev)
			}
			if s.started {
				prev.Stop(same)
			}
			changed = append(changed, "trunk "+to.Name+" changed")
		} else {
			changed = append(changed, "trunk "+to.Name+" added")
		}
		if s.started {
			t.Start()
		}
		next = append(next, t)
	}
	for name, t := range old {
		if s.started {
			t.Stop(false)
		}
		changed = append(changed, "trunk "+name+" removed")
	}
	s.trunks.Store(&next)
	return changed, nil
}

// Shutdown starts the drain: readiness fails at once, new calls get 503,
// and it returns when the last call has ended, or with ctx's error when
// the grace period runs out. Run then hangs up what remains and
// unregisters once its own context ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	if s.b2bua == nil {
		return nil
	}
	s.b2bua.Drain()
	s.log.Info("draining: new calls get 503", zap.Int("active_calls", s.b2bua.Active()))
	return s.b2bua.WaitIdle(ctx)
}

// Status reports every trunk's registration.
func (s *Server) Status() []trunk.RegStatus {
	out := make([]trunk.RegStatus, 0, len(s.trunkList()))
	for _, t := range s.trunkList() {
		out = append(out, t.Status())
	}
	return out
}

func (s *Server) allowRequest(from netip.AddrPort) bool {
	return s.trunkFor(from.Addr()) != nil
}

func (s *Server) trunkFor(ip netip.Addr) *trunk.Trunk {
	for _, t := range s.trunkList() {
		if t.Allows(ip) {
			return t
		}
	}
	return nil
}

func (s *Server) onOptions(req *sip.Request, tx sip.ServerTransaction) {
	res := sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil)
	res.AppendHeader(sip.NewHeader("Allow", sipmsg.Allowed))
	res.AppendHeader(sip.NewHeader("Supported", sipmsg.Supported))
	if err := tx.Respond(res); err != nil {
		s.log.Debug("options response failed", zap.Error(err))
	}
}

// onInvite answers calls from a provider. Until the B2BUA lands, a call
// for one of our DIDs is refused with 480 so the provider can fail over.
func (s *Server) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	callID := ""
	if h := req.CallID(); h != nil {
		callID = h.Value()
	}
	src, _ := netip.ParseAddrPort(req.Source())
	t := s.trunkFor(src.Addr().Unmap())
	if t == nil {
		// The socket filter already drops strangers; this is defence in depth.
		s.respond(tx, req, sip.StatusForbidden, "Forbidden")
		return
	}
	if s.b2bua != nil && sipmsg.Tag(req.To()) != "" {
		s.b2bua.OnReinvite(req, tx)
		return
	}
	var toUser string
	if to := req.To(); to != nil {
		toUser = to.Address.User
	}
	t, did, ok := s.inboundTrunk(t, src.Addr().Unmap(), req)
	log := s.log.With(zap.String("trunk", t.Name()), zap.String("call_id", callID))
	if !ok {
		log.Info("inbound call for unknown number", zap.String("ruri_user", req.Recipient.User), zap.String("to_user", toUser),
			zap.String("did_from", t.Options().DIDFrom))
		s.respond(tx, req, sip.StatusNotFound, "Not Found")
		return
	}
	log.Info("inbound call", zap.String("did", did), zap.String("from", req.Source()))
	if s.b2bua == nil {
		s.respond(tx, req, sip.StatusTemporarilyUnavailable, "Temporarily Unavailable")
		return
	}
	s.b2bua.OnProviderInvite(b2bua.Inbound{Trunk: t.Name(), DID: did, Contact: t.RegisteredContact, Latching: latchingOf(t),
		Allows: t.Allows}, req, tx)
}

// inboundTrunk picks the trunk a new call from ip is for: of those that
// allow ip (first the one trunkFor found), the first whose DIDs have the
// number. Two accounts at one provider share its SBCs, so the source
// alone does not say which account is called.
func (s *Server) inboundTrunk(first *trunk.Trunk, ip netip.Addr, req *sip.Request) (*trunk.Trunk, string, bool) {
	match := func(t *trunk.Trunk) (string, bool) {
		return t.MatchDID(b2bua.CalledNumbers(req, b2bua.DIDSource(t.Options().DIDFrom))...)
	}
	if did, ok := match(first); ok {
		return first, did, true
	}
	for _, t := range s.trunkList() {
		if t == first || !t.Allows(ip) {
			continue
		}
		if did, ok := match(t); ok {
			return t, did, true
		}
	}
	return first, "", false
}

func (s *Server) respond(tx sip.ServerTransaction, req *sip.Request, code int, reason string) {
	if err := tx.Respond(sip.NewResponseFromRequest(req, code, reason, nil)); err != nil {
		s.log.Debug("response failed", zap.Int("code", code), zap.Error(err))
	}
}

// latchingOf is a trunk's rtp_latching as the relay's rule (validated by
// config; "" is the relay's default).
func latchingOf(t *trunk.Trunk) rtpbridge.Latching {
	l, _ := rtpbridge.ParseLatching(t.Options().Latching)
	return l
}

// bridgeMedia is rtpbridge.Bridge as the B2BUA's Media.
type bridgeMedia struct {
	b      *rtpbridge.Bridge
	watch  *capacityWatch
	policy *mediaPolicy
	pm     *portmap.Mapper // nil: no mappings
	log    *zap.Logger
}

func (m bridgeMedia) NewSession(id string, latching rtpbridge.Latching) (b2bua.Session, error) {
	s, err := m.b.NewSessionWith(id, rtpbridge.SessionOptions{Latching: [2]rtpbridge.Latching{rtpbridge.LegB: latching}})
	if err != nil {
		return nil, err
	}
	m.watch.observe(m.b.Counts())
	var ms b2bua.Session = policedSession{Session: s, policy: m.policy}
	if m.pm != nil {
		ms = newMappedSession(ms, m.pm, m.log)
	}
	return ms, nil
}

// capacityClear is the share of the relay's capacity below which a
// capacity warning is over: between it and admin.CapacityWarn, calls come
// and go without a log line each.
const capacityClear = 0.8

// capacityWatch logs once when a new call takes the relay's pools to
// admin.CapacityWarn and once when a later one finds them below
// capacityClear again. The admin's /status shows the same warning for as
// long as it holds.
type capacityWatch struct {
	log    *zap.Logger
	mu     sync.Mutex
	warned bool // guarded by mu
}

func (w *capacityWatch) observe(c rtpbridge.BridgeCounts) {
	cp := admin.CapacityOf(c)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.warned && cp.Warning != "":
		w.warned = true
		w.log.Warn(cp.Warning, zap.Int("calls", cp.Calls), zap.Int("max_calls", cp.Max))
	case w.warned && float64(cp.Calls) < capacityClear*float64(cp.Max):
		w.warned = false
		w.log.Info("relay ports below 80 % use again", zap.Int("calls", cp.Calls), zap.Int("max_calls", cp.Max))
	}
}

// Route is the B2BUA's Router: the first trunk whose outbound prefixes
// match takes the call.
func (s *Server) Route(dialled string) (b2bua.Route, error) {
	for _, t := range s.trunkList() {
		r, ok, err := t.Route(dialled)
		if !ok {
			continue
		}
		if err != nil {
			return b2bua.Route{}, fmt.Errorf("%w: %w", b2bua.ErrUnresolved, err)
		}
		o := t.Options()
		return b2bua.Route{Trunk: t.Name(), Dst: r.Dst, Alt: r.Alt, Failed: r.Failed, Number: r.Number, Domain: r.Domain, User: r.User,
			Denied: o.Outbound.Check(dialled, r.Number), MaxCalls: o.MaxCalls,
			AuthUser: r.AuthUser, Password: r.Password, Contact: t.RegisteredContact, Latching: latchingOf(t),
			CallerID: callerIDOf(t), Allows: t.Allows}, nil
	}
	return b2bua.Route{}, b2bua.ErrNoRoute
}

// callerIDOf is a trunk's caller_id (validated by config; "" is the
// default: the account in From, no identity header).
func callerIDOf(t *trunk.Trunk) b2bua.CallerID {
	o := t.Options()
	c := b2bua.CallerID{FromNumber: o.CallerFromUser == config.FromUserNumber, Format: t.FormatCaller}
	switch o.CallerAsserted {
	case config.AssertedPAI:
		c.Asserted = b2bua.HeaderPAI
	case config.AssertedPPI:
		c.Asserted = b2bua.HeaderPPI
	}
	return c
}

// readdressWait bounds how long live calls wait after a change of the
// public IP for their trunk to re-register with it before they are
// re-INVITEd anyway.
const readdressWait = 10 * time.Second

// followAddress re-INVITEs the provider leg of every live call when the
// public IP changes (a DSL redial; issue 9 item 9), each trunk's calls
// once that trunk has re-registered with the new address, so that the
// Contact the remote learns is the one the provider knows. Only an IP
// change counts: the port of the SIP flow is the registrar's business, and
// the calls' media ports do not change with it.
func (s *Server) followAddress(ctx context.Context) error {
	changes, stop := s.keeper.Subscribe()
	defer stop()
	last, _ := s.keeper.Public()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-changes:
			if !ok {
				return nil
			}
		}
		cur, ok := s.keeper.Public()
		if !ok || cur.Addr.Addr() == last.Addr.Addr() {
			continue
		}
		prev := last
		last = cur
		if prev.Addr.IsValid() { // the first address learned is no change
			s.readdress(ctx, cur.Addr.Addr())
		}
	}
}

// readdress re-INVITEs each trunk's calls as soon as the trunk is
// registered at ip (at once for one that does not register), and the
// rest after readdressWait. It polls only in that window.
func (s *Server) readdress(ctx context.Context, ip netip.Addr) {
	pending := map[string]*trunk.Trunk{}
	for _, t := range s.trunkList() {
		pending[t.Name()] = t
	}
	deadline := time.NewTimer(readdressWait)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		for name, t := range pending {
			if !t.Options().Register || t.RegisteredContact().Addr() == ip {
				if n := s.b2bua.Readdress(name); n > 0 {
					s.log.Info("public IP changed: re-INVITEd live calls", zap.String("trunk", name), zap.Stringer("ip", ip), zap.Int("calls", n))
				}
				delete(pending, name)
			}
		}
		if len(pending) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			for name := range pending {
				if n := s.b2bua.Readdress(name); n > 0 {
					s.log.Warn("public IP changed and the trunk has not re-registered: re-INVITEd its live calls anyway",
						zap.String("trunk", name), zap.Stringer("ip", ip), zap.Int("calls", n))
				}
			}
			return
		case <-tick.C:
		}
	}
}
