package linkmanager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"golang.org/x/sync/errgroup"

	"github.com/linkmanager/linkmanager/stunkeeper"
)

// Version is set by the build (-ldflags "-X ...linkmanager.Version=...").
var Version = "dev"

// Options wires a Server. The caller owns the socket inside Conn.
type Options struct {
	Conn     *SharedConn
	Keeper   *stunkeeper.Keeper
	Trunks   []TrunkOptions
	Interval time.Duration // keepalive interval for registrar flows
	Logger   *zap.Logger
	Resolver resolver // nil: net.DefaultResolver
}

// TrunkOptions is one provider account.
type TrunkOptions struct {
	Name          string
	Host          string // registrar or outbound proxy host: where requests go
	Port          int    // 0: SRV _sip._udp, then 5060
	RegistrarHost string // also allowed to send us requests, if it differs from Host
	Domain        string
	Username      string
	AuthUsername  string
	Password      string
	Expires       time.Duration
	Register      bool
	Keepalive     string
	DIDs          []string
}

// Server is the SIP side of the daemon on the shared Internet socket:
// trunk registrations, keepalives and inbound requests from providers.
type Server struct {
	conn   *SharedConn
	keeper *stunkeeper.Keeper
	log    *zap.Logger
	ua     *sipgo.UserAgent
	srv    *sipgo.Server
	client *sipgo.Client
	trunks []*trunk
}

// New builds the server; nothing runs until Run.
func New(opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	slogger := slog.New(zapslog.NewHandler(log.Named("sipgo").Core()))
	local := opts.Conn.LocalAddrPort()
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("linkmanager/"+Version),
		sipgo.WithUserAgentHostname(local.Addr().String()),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slogger)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slogger)),
	)
	if err != nil {
		return nil, fmt.Errorf("linkmanager: sip user agent: %w", err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slogger))
	if err != nil {
		return nil, fmt.Errorf("linkmanager: sip server: %w", err)
	}
	// The exact IP:port: sipgo then finds our listening socket in its
	// pool for every request instead of binding an ephemeral one.
	client, err := sipgo.NewClient(ua, sipgo.WithClientConnectionAddr(local.String()),
		sipgo.WithClientNAT(), sipgo.WithClientLogger(slogger))
	if err != nil {
		return nil, fmt.Errorf("linkmanager: sip client: %w", err)
	}
	s := &Server{conn: opts.Conn, keeper: opts.Keeper, log: log.Named("sip"), ua: ua, srv: srv, client: client}
	var lookup resolver = net.DefaultResolver
	if opts.Resolver != nil {
		lookup = opts.Resolver
	}
	for _, to := range opts.Trunks {
		tl := log.Named("trunk").With(zap.String("trunk", to.Name))
		t := &trunk{
			conf: trunkConf{Name: to.Name, Domain: to.Domain, Username: to.Username, AuthUsername: to.AuthUsername,
				Password: to.Password, Expires: to.Expires, Register: to.Register, Keepalive: to.Keepalive, DIDs: to.DIDs},
			host: to.Host, port: to.Port, also: to.RegistrarHost, interval: opts.Interval,
			do: s.do, probe: opts.Keeper.Probe, send: opts.Conn.Send, lastSent: opts.Conn.LastSent,
			log: tl, now: time.Now, lookup: lookup, sources: map[netip.Addr]bool{},
		}
		t.reg = newRegistration(t.conf, s.do, t.resolveRegistrar, opts.Keeper, local, tl)
		t.reg.ua = "linkmanager/" + Version
		s.trunks = append(s.trunks, t)
	}
	opts.Conn.SetRequestFilter(s.allowRequest)
	srv.OnOptions(s.onOptions)
	srv.OnInvite(s.onInvite)
	return s, nil
}

// do runs one client transaction from the shared socket.
func (s *Server) do(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
	req.SetDestination(dst.String())
	return s.client.Do(ctx, req)
}

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
	g.Go(func() error {
		// Requests sent before sipgo has the socket in its pool would go
		// out from a fresh ephemeral socket.
		select {
		case <-s.conn.Ready():
		case <-gctx.Done():
		}
		tg, tctx := errgroup.WithContext(gctx)
		for _, t := range s.trunks {
			tg.Go(func() error { return t.Run(tctx) })
		}
		err := tg.Wait()
		// Trunks have unregistered; now stop STUN and the socket.
		stopKeeper()
		s.ua.Close()
		s.conn.Close()
		return err
	})
	return g.Wait()
}

// Status reports every trunk's registration.
func (s *Server) Status() []RegStatus {
	out := make([]RegStatus, 0, len(s.trunks))
	for _, t := range s.trunks {
		st := t.reg.Status()
		if m := t.keepalive.Load(); m != nil {
			st.Keepalive = *m
		}
		out = append(out, st)
	}
	return out
}

func (s *Server) allowRequest(from netip.AddrPort) bool {
	return s.trunkFor(from.Addr()) != nil
}

func (s *Server) trunkFor(ip netip.Addr) *trunk {
	for _, t := range s.trunks {
		if t.Allows(ip) {
			return t
		}
	}
	return nil
}

func (s *Server) onOptions(req *sip.Request, tx sip.ServerTransaction) {
	res := sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil)
	res.AppendHeader(sip.NewHeader("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"))
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
	var toUser string
	if to := req.To(); to != nil {
		toUser = to.Address.User
	}
	did, ok := t.MatchDID(req.Recipient.User, toUser)
	log := s.log.With(zap.String("trunk", t.conf.Name), zap.String("call_id", callID))
	if !ok {
		log.Info("inbound call for unknown number", zap.String("ruri_user", req.Recipient.User), zap.String("to_user", toUser))
		s.respond(tx, req, sip.StatusNotFound, "Not Found")
		return
	}
	log.Info("inbound call", zap.String("did", did), zap.String("from", req.Source()))
	s.respond(tx, req, sip.StatusTemporarilyUnavailable, "Temporarily Unavailable")
}

func (s *Server) respond(tx sip.ServerTransaction, req *sip.Request, code int, reason string) {
	if err := tx.Respond(sip.NewResponseFromRequest(req, code, reason, nil)); err != nil {
		s.log.Debug("response failed", zap.Int("code", code), zap.Error(err))
	}
}
