package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"

	"github.com/linkmanager/linkmanager/linkmanager"
	"github.com/linkmanager/linkmanager/linkmanager/admin"
	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/policy"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

const runHelp = `NAME
    linkmanager run - run the SIP trunk daemon in the foreground

SYNOPSIS
    linkmanager run [--config FILE]

DESCRIPTION
    Binds sip.listen (the Internet-facing SIP+STUN socket, 65002 by
    default) and pbx.listen, registers every trunk, keeps the NAT open with
    STUN and keepalives, bridges calls between the PBX and the providers
    and relays their media. Logs go to stderr (log.format console or json).
    With systemd (Type=notify) it reports READY once the sockets are served
    and every trunk has tried to register, and pings the watchdog.

SIGNALS
    SIGTERM, SIGINT  drain: /readyz fails at once, new calls get 503, calls
                     may go on for shutdown.grace; then the rest get BYE,
                     every trunk unregisters and it exits 0. A second
                     signal skips the rest of the grace period.
    SIGHUP           reload FILE: trunks, PBX allow-list and credentials,
                     STUN servers and the log level change live; sockets
                     and port ranges are reported and kept; a bad file is
                     rejected and the running config stays.

EXIT STATUS
    0 after a clean stop, 1 on a start-up or runtime error (a port in use,
    say), 2 on a usage or configuration error.

OPTIONS
`

// gcPercent is the daemon's GOGC unless the environment sets one. Its
// heap is small and mostly call state that lives as long as the call, and
// the default of 100 lets the heap grow to twice the live data before a
// collection, so RSS per call was about twice the ~22 KB a call keeps
// alive. At 50 a call costs about 41 KB of RSS (bench/README.md); the
// extra collections are paid almost only by call set-up and signalling,
// since the packet path allocates nothing.
const gcPercent = 50

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/linkmanager/linkmanager.yaml", "config file")
	fs.Usage = func() { fmt.Fprint(stderr, runHelp); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintln(stderr, p)
		}
		return 2
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	level := zap.NewAtomicLevel()
	log, err := newLogger(cfg.Log, level, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "linkmanager: %v\n", err)
		return 2
	}
	defer log.Sync()
	// Signals are read by serve: the first SIGTERM/SIGINT drains, a
	// second one stops at once, SIGHUP reloads.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := serve(*path, cfg, level, log, sigs); err != nil {
		log.Error("linkmanager stopped", zap.Error(err))
		return 1
	}
	log.Info("linkmanager stopped")
	return 0
}

// serve opens the sockets, wires the components and runs them until a
// signal stops them or one of them fails.
func serve(path string, cfg *config.Config, level zap.AtomicLevel, log *zap.Logger, sigs <-chan os.Signal) error {
	// sipgo refuses to send messages above 1300 bytes by default; INVITEs
	// with rich SDP exceed that. UDP fragments fine on the LAN and on
	// every provider we know.
	sip.UDPMTUSize = 9000

	listen, err := resolveListen(cfg.SIP.ListenAddr)
	if err != nil {
		return fmt.Errorf("sip.listen %s: %w", cfg.SIP.Listen, err)
	}
	pbxListen, err := resolveListen(cfg.PBX.ListenAddr)
	if err != nil {
		return fmt.Errorf("pbx.listen %s: %w", cfg.PBX.Listen, err)
	}
	udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(listen))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("sip.listen %s: port %d is already in use: stop the other SIP software (or linkmanager instance) on this host, or choose another sip.listen port: %w",
				listen, listen.Port(), err)
		}
		return fmt.Errorf("sip.listen %s: %w", listen, err)
	}
	// Most of sipgo takes our logger through options; the rest logs via
	// its package default, so point that at zap too.
	sip.SetDefaultLogger(linkmanager.SIPGoLogger(log))

	conn := sharedconn.New(udp, log, nil)
	defer conn.Close()

	keeper, err := stunkeeper.New(stunkeeper.Config{
		Servers:  cfg.STUN.Servers,
		Interval: time.Duration(cfg.STUN.Interval),
		Send:     conn.Send,
		Logger:   log,
	})
	if err != nil {
		return err
	}
	conn.SetSTUNHandler(keeper.HandlePacket)
	conn.SetOnSend(keeper.NoteSent)

	// The NAT self-test (RFC 5780) at start and after every change of the
	// public address, on ephemeral sockets of its own: never 65002, whose
	// mapping its probes could poison. It logs its verdict as one line.
	var natw *stunkeeper.NATWatch
	if len(cfg.STUN.Servers) > 0 {
		ip := listen.Addr()
		natw, err = stunkeeper.NewNATWatch(stunkeeper.NATWatchConfig{
			Keeper:  keeper,
			Servers: cfg.STUN.Servers,
			Listen: func() (net.PacketConn, error) {
				return net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
			},
			PortMin: cfg.RTP.PortMin, PortMax: cfg.RTP.PortMax, PortForward: cfg.NAT.PortForward,
			Logger: log,
		})
		if err != nil {
			return fmt.Errorf("stun.servers: %w", err)
		}
	}

	pbxUDP, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(pbxListen))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("pbx.listen %s: port %d is already in use: stop the other SIP software on this host, or choose another pbx.listen port: %w",
				pbxListen, pbxListen.Port(), err)
		}
		return fmt.Errorf("pbx.listen %s: %w", pbxListen, err)
	}
	pbxConn := sharedconn.New(pbxUDP, log, nil)
	defer pbxConn.Close()

	pm := newPortMapper(cfg, listen, log)
	srv, err := linkmanager.New(linkmanager.Options{
		Conn:        conn,
		Keeper:      keeper,
		Trunks:      trunkOptions(cfg.Trunks),
		Interval:    time.Duration(cfg.STUN.Interval),
		Logger:      log,
		PBXConn:     pbxConn,
		PBX:         pbxOptions(cfg.PBX),
		Media:       mediaConfig(cfg.RTP, pbxListen.Addr(), listen.Addr()),
		RingTimeout: time.Duration(cfg.PBX.RingTimeout),
		NATWatch:    natw,
		PortMap:     pm,
		RTPPorts:    [2]int{cfg.RTP.PortMin, cfg.RTP.PortMax},
	})
	if err != nil {
		return err
	}
	log.Info("linkmanager starting", zap.String("version", versionString()),
		zap.Stringer("sip_listen", listen), zap.Strings("stun_servers", cfg.STUN.Servers),
		zap.Int("trunks", len(cfg.Trunks)))

	running := cfg
	reload := func() {
		next, err := reloadConfig(path, running, level, srv, log)
		if err != nil {
			log.Error("reload rejected; the running configuration stays in force", zap.Error(err))
			return
		}
		running = next
	}

	var adminLn net.Listener
	if cfg.Admin.ListenAddr.IsValid() {
		if adminLn, err = net.Listen("tcp", cfg.Admin.ListenAddr.String()); err != nil {
			return fmt.Errorf("admin.listen %s: %w (set admin.listen to a free port, or \"off\")", cfg.Admin.ListenAddr, err)
		}
	}

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	g, gctx := errgroup.WithContext(runCtx)
	// The mappings outlive the drain: calls that finish during it keep
	// their media. They are deleted once the server has stopped.
	pmCtx, stopPM := context.WithCancel(context.Background())
	defer stopPM()
	g.Go(func() error {
		err := srv.Run(gctx)
		stopPM()
		return err
	})
	if pm != nil {
		g.Go(func() error { return pm.Run(pmCtx) })
	}
	if natw != nil {
		g.Go(func() error { return natw.Run(gctx) })
	}
	if adminLn != nil {
		adm := admin.New(srv, srv.Metrics(), log)
		g.Go(func() error { return adm.Serve(adminLn) })
		g.Go(func() error {
			<-gctx.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return adm.Shutdown(ctx)
		})
	}
	g.Go(func() error {
		if err := srv.WaitStarted(gctx); err != nil {
			return nil
		}
		notifyReady()
		notifyStatus("registered trunks: " + strings.Join(registeredNames(srv), ", "))
		return nil
	})
	g.Go(func() error { return watchdog(gctx, srv.Alive) })
	g.Go(func() error {
		defer stopRun()
		return handleSignals(gctx, srv, time.Duration(cfg.Shutdown.Grace), log, sigs, reload)
	})
	return g.Wait()
}

// handleSignals waits for a stop signal, then drains in two phases:
// readiness fails and new calls get 503 while calls may finish for the
// grace period; then Run hangs up what is left and unregisters. A second
// stop signal cuts the grace period short.
func handleSignals(ctx context.Context, srv *linkmanager.Server, grace time.Duration, log *zap.Logger, sigs <-chan os.Signal, reload func()) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				notifyReloading()
				reload()
				notifyReady()
				continue
			}
			notifyStopping()
			log.Info("stopping: draining calls", zap.Stringer("signal", sig), zap.Duration("grace", grace))
			graceCtx, cancel := context.WithTimeout(context.Background(), grace)
			done := make(chan error, 1)
			go func() { done <- srv.Shutdown(graceCtx) }()
			for waiting := true; waiting; {
				select {
				case err := <-done:
					if err != nil {
						log.Info("grace period over; hanging up the remaining calls")
					}
					waiting = false
				case sig := <-sigs:
					if sig != syscall.SIGHUP {
						log.Warn("second stop signal: hanging up now", zap.Stringer("signal", sig))
						cancel()
					}
				case <-ctx.Done():
					cancel()
					<-done
					waiting = false
				}
			}
			cancel()
			return nil
		}
	}
}

func registeredNames(srv *linkmanager.Server) []string {
	var out []string
	for _, st := range srv.Status() {
		if st.Registered {
			out = append(out, st.Trunk)
		}
	}
	if len(out) == 0 {
		out = []string{"none yet"}
	}
	return out
}

// reloadConfig reads path again and applies what can change live. A bad
// file changes nothing. Settings that need new sockets are reported and
// kept.
func reloadConfig(path string, running *config.Config, level zap.AtomicLevel, srv *linkmanager.Server, log *zap.Logger) (*config.Config, error) {
	next, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%s", strings.Join(config.Problems(err), "; "))
	}
	for _, k := range []struct {
		key        string
		was, would string
	}{
		{"sip.listen", running.SIP.ListenAddr.String(), next.SIP.ListenAddr.String()},
		{"pbx.listen", running.PBX.ListenAddr.String(), next.PBX.ListenAddr.String()},
		{"rtp ranges", fmt.Sprint(running.RTP.PortMin, running.RTP.PortMax, running.RTP.LANPortMin, running.RTP.LANPortMax),
			fmt.Sprint(next.RTP.PortMin, next.RTP.PortMax, next.RTP.LANPortMin, next.RTP.LANPortMax)},
		{"admin.listen", running.Admin.ListenAddr.String(), next.Admin.ListenAddr.String()},
		{"stun.interval", running.STUN.Interval.String(), next.STUN.Interval.String()},
		{"rtp timers, dscp, lan_latching and io", fmt.Sprint(running.RTP.MediaTimeout, running.RTP.HoldTimeout, running.RTP.RelatchAfter, *running.RTP.DSCP, running.RTP.LANLatching, running.RTP.IO),
			fmt.Sprint(next.RTP.MediaTimeout, next.RTP.HoldTimeout, next.RTP.RelatchAfter, *next.RTP.DSCP, next.RTP.LANLatching, next.RTP.IO)},
	} {
		if k.was != k.would {
			log.Warn("cannot change on reload; restart to apply", zap.String("key", k.key),
				zap.String("running", k.was), zap.String("file", k.would))
		}
	}
	// Keep what cannot change, so the next reload compares against what
	// actually runs.
	next.SIP, next.RTP, next.Admin = running.SIP, running.RTP, running.Admin
	next.STUN.Interval = running.STUN.Interval
	next.PBX.Listen, next.PBX.ListenAddr = running.PBX.Listen, running.PBX.ListenAddr

	changed, err := srv.Reload(linkmanager.ReloadOptions{
		Trunks:      trunkOptions(next.Trunks),
		PBX:         pbxOptions(next.PBX),
		STUNServers: next.STUN.Servers,
	})
	if err != nil {
		return nil, err
	}
	if l, err := zapcore.ParseLevel(next.Log.Level); err == nil {
		level.SetLevel(l)
	}
	log.Info("configuration reloaded", zap.String("config", path), zap.Strings("changes", changed))
	return next, nil
}

// mediaConfig sizes the relay: the LAN pool on the PBX-facing address, the
// Internet pool on the provider-facing one.
func mediaConfig(c config.RTP, lan, wan netip.Addr) rtpbridge.Config {
	// Config's dscp 0 means "unmarked"; rtpbridge's 0 means "default".
	dscp := -1
	if c.DSCP != nil && *c.DSCP != 0 {
		dscp = *c.DSCP
	}
	return rtpbridge.Config{
		LAN:          &rtpbridge.Pool{Address: lan.String(), MinPort: uint16(c.LANPortMin), MaxPort: uint16(c.LANPortMax), DSCP: dscp},
		WAN:          &rtpbridge.Pool{Address: wan.String(), MinPort: uint16(c.PortMin), MaxPort: uint16(c.PortMax), DSCP: dscp},
		MediaTimeout: time.Duration(c.MediaTimeout),
		HoldTimeout:  time.Duration(c.HoldTimeout),
		Latching:     [2]rtpbridge.Latching{rtpbridge.LegA: latching(c.LANLatching), rtpbridge.LegB: latching(c.Latching)},
		RelatchAfter: time.Duration(c.RelatchAfter),
		IO:           c.IO,
	}
}

// latching maps a config value, which Validate has checked, to the relay's
// rule; "" is the relay's default.
func latching(s string) rtpbridge.Latching {
	l, _ := rtpbridge.ParseLatching(s)
	return l
}

// pbxOptions is the PBX section as the B2BUA takes it, at start and on
// a reload.
func pbxOptions(p config.PBX) b2bua.PBXOptions {
	return b2bua.PBXOptions{Addr: p.Addr, Allow: p.AllowPrefixes, Username: p.Username, Password: p.Password,
		Emergency: p.EmergencyNumbers, MaxCallRate: *p.MaxCallRate}
}

func trunkOptions(ts []config.Trunk) []trunk.Options {
	out := make([]trunk.Options, 0, len(ts))
	for _, t := range ts {
		out = append(out, trunk.Options{
			Name: t.Name, Host: t.ProxyAddr.Host, Port: t.ProxyAddr.Port, RegistrarHost: t.RegistrarAddr.Host,
			Domain: t.Domain, Username: t.Username, AuthUsername: t.AuthUsername, Password: t.Password,
			Expires: time.Duration(t.Expires), RefreshMax: time.Duration(t.RefreshMax), Register: *t.Register, Keepalive: t.Keepalive, DIDs: t.DIDs,
			Prefixes: t.OutboundPrefixes, NumberFormat: t.NumberFormat, CountryCode: t.CountryCode,
			Latching: t.RTPLatching, Allow: t.AllowPrefixes,
			CallerFromUser: t.CallerID.FromUser, CallerAsserted: t.CallerID.Asserted, CallerFormat: t.CallerID.NumberFormat,
			DIDFrom:  t.DIDFrom,
			Outbound: policy.Rules{Allow: t.OutboundAllow, Deny: t.OutboundDeny}, MaxCalls: t.MaxCalls,
		})
	}
	return out
}

// resolveListen turns 0.0.0.0 into the address of the interface that
// holds the default route. Binding the wildcard would let replies leave
// from another address than the one we advertise, and sipgo needs the exact
// IP to find the socket again for outgoing requests.
func resolveListen(ap netip.AddrPort) (netip.AddrPort, error) {
	if !ap.Addr().IsUnspecified() {
		return ap, nil
	}
	// A connected UDP socket sends nothing; the kernel just picks the
	// source address for the route. The target is a documentation address
	// that is never contacted.
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("0.0.0.0 means the default-route interface, but there is no default route: set sip.listen to this host's LAN IP: %w", err)
	}
	defer c.Close()
	ip := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	return netip.AddrPortFrom(ip, ap.Port()), nil
}

func newLogger(c config.Log, level zap.AtomicLevel, w io.Writer) (*zap.Logger, error) {
	l, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	level.SetLevel(l)
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	enc := zapcore.NewConsoleEncoder(ec)
	if c.Format == "json" {
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)), nil
}

func versionString() string {
	v := linkmanager.Version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return "linkmanager " + v
}

// newPortMapper is nat.portmap: with auto, a mapper of the default
// gateway for sip.listen's port (call pairs are added per call); nil with
// off, or when there is no default route to ask.
func newPortMapper(cfg *config.Config, listen netip.AddrPort, log *zap.Logger) *portmap.Mapper {
	if cfg.NAT.Portmap != config.PortmapAuto {
		return nil
	}
	pm, err := portmap.New(portmap.Config{Local: listen.Addr(), Ports: []uint16{listen.Port()}, Logger: log})
	if err != nil {
		log.Info("nat.portmap: no router to ask", zap.Error(err))
		return nil
	}
	return pm
}
