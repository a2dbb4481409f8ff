package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

const natTestHelp = `NAME
    linkmanager nat-test - find out which NAT the daemon sits behind

SYNOPSIS
    linkmanager nat-test [--config FILE] [--timeout DURATION]
                         [--lifetime [--lifetime-max DURATION]]

DESCRIPTION
    Runs the NAT self-test of RFC 5780 against the STUN servers of FILE
    (stun.servers) and prints what the router in front of this host does
    and what that means for calls, in one line at the end, e.g.

        NAT: port-restricted cone: works; no port forward needed
        NAT: symmetric: inbound media needs a port forward of 55000–56000
             or a router that offers PCP/UPnP; run ` + "`linkmanager firewall`" + `

    It tests:
      mapping      whether the router keeps one public address and port for
                   a socket whatever it sends to (endpoint-independent), or
                   hands out another per destination address
                   (address-dependent) or per address and port
                   (address-and-port-dependent): then it is "symmetric", and
                   a remote that sends media to the port in our SDP without
                   waiting for ours is never let in;
      filtering    whom the router lets in to a public port: anyone
                   (endpoint-independent), hosts we sent to
                   (address-dependent), or only the address and port we sent
                   to (address-and-port-dependent);
      hairpinning  whether a packet to our own public address comes back;
      lifetime     with --lifetime: how long the router keeps an idle UDP
                   mapping (RFC 5780 section 4.6), and so the longest
                   stun.interval that keeps the trunk reachable. Bindings
                   are opened on up to 64 more sockets and asked after 2 s,
                   4 s, ... of silence; the test stops at the first that is
                   gone, so it takes the lifetime plus about 3 s (at most
                   --lifetime-max). It needs an RFC 5780 server that honours
                   RESPONSE-PORT (coturn does).

    The test opens two UDP sockets of its own on an ephemeral port of
    sip.listen's IP (never the SIP port), so a running daemon and its NAT
    mapping are not disturbed; run it on the daemon's host, while the
    daemon runs or not. It needs a STUN server that offers RFC 5780 (it
    answers from two addresses, with OTHER-ADDRESS and CHANGE-REQUEST; coturn
    does when it listens on two IPs). When no configured server does, it
    says so and only compares the public address two servers see, as the
    daemon does; filtering is then not tested.

    The test takes about 3 s: the filtering probes wait that long for
    answers the router may rightly drop. Passwords are not needed and not
    read.

OPTIONS
    --config FILE         the daemon's config (default
                          /etc/linkmanager/linkmanager.yaml)
    --timeout DURATION    give up after this long (default 10s; the
                          lifetime test has its own bound)
    --lifetime            also measure the binding lifetime
    --lifetime-max DURATION
                          the longest lifetime looked for (default 2m)

EXIT STATUS
    0 a verdict was printed (whatever it is); 1 no STUN server answered, or
    none is configured; 2 a usage error or a config that does not load.
`

func cmdNATTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nat-test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/linkmanager/linkmanager.yaml", "config file")
	timeout := fs.Duration("timeout", stunkeeper.DefaultNATTestTimeout, "give up after this long")
	lifetime := fs.Bool("lifetime", false, "also measure the binding lifetime")
	lifetimeMax := fs.Duration("lifetime-max", stunkeeper.DefaultLifetimeMax, "the longest lifetime looked for")
	// The manual goes to stdout on --help only; a usage error gets the
	// synopsis on stderr.
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: linkmanager nat-test [--config FILE] [--timeout DURATION] [--lifetime [--lifetime-max DURATION]]\n")
	}
	if code, ok := parseFlags(fs, args, natTestHelp, stdout, stderr); !ok {
		return code
	}
	cfg, err := loadWithoutSecrets(*path)
	if err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintln(stderr, p)
		}
		return 2
	}
	servers := make([]string, 0, len(cfg.STUN.ServerAddrs))
	for _, hp := range cfg.STUN.ServerAddrs {
		servers = append(servers, hp.String())
	}
	if len(servers) == 0 {
		fmt.Fprintf(stderr, "linkmanager nat-test: %s has no stun.servers: there is nothing to test against\n", *path)
		return 1
	}
	listen, err := resolveListen(cfg.SIP.ListenAddr)
	if err != nil {
		fmt.Fprintf(stderr, "linkmanager nat-test: %v\n", err)
		return 1
	}
	// Test sockets: ephemeral ports on the SIP socket's IP, so they leave
	// through the same route and NAT as SIP.
	open := func() (net.PacketConn, error) {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen.Addr(), 0)))
		if err != nil {
			return nil, fmt.Errorf("open a test socket on %s: %w", listen.Addr(), err)
		}
		return c, nil
	}
	var conns [2]net.PacketConn
	for i := range conns {
		c, err := open()
		if err != nil {
			fmt.Fprintf(stderr, "linkmanager nat-test: %v\n", err)
			return 1
		}
		defer c.Close()
		conns[i] = c
	}
	fmt.Fprintf(stdout, "STUN servers: %s (test sockets %s, %s)\n", strings.Join(servers, ", "),
		conns[0].LocalAddr(), conns[1].LocalAddr())
	r, err := stunkeeper.NATTest(context.Background(), stunkeeper.NATTestConfig{
		Servers: servers, Mapping: conns[0], Filtering: conns[1], Timeout: *timeout,
	})
	if err != nil && !errors.Is(err, stunkeeper.ErrNoAnswer) {
		fmt.Fprintf(stderr, "linkmanager nat-test: %v\n", err)
		return 1
	}
	r.PortForward = cfg.NAT.PortForward
	printNATReport(stdout, r, cfg.RTP.PortMin, cfg.RTP.PortMax)
	if err != nil {
		return 1
	}
	if *lifetime {
		printLifetime(stdout, r, open, *lifetimeMax, time.Duration(cfg.STUN.Interval))
	}
	return 0
}

// printLifetime measures the binding lifetime against the RFC 5780
// server the test used and says what it means for stun.interval.
func printLifetime(w io.Writer, r stunkeeper.NATReport, open func() (net.PacketConn, error), maxIdle, interval time.Duration) {
	if r.Server == "" {
		fmt.Fprintln(w, "binding lifetime: not measured (it needs an RFC 5780 server)")
		return
	}
	lt, err := stunkeeper.MeasureLifetime(context.Background(), stunkeeper.LifetimeConfig{Server: r.Primary, Listen: open, Max: maxIdle})
	if err != nil {
		fmt.Fprintf(w, "binding lifetime: not measured: %v\n", err)
		return
	}
	safe := lt.SafeInterval()
	verdict := fmt.Sprintf("stun.interval %v: fine", interval)
	if interval > safe {
		verdict = fmt.Sprintf("stun.interval %v is too long: set it to %v or less", interval, safe)
	}
	fmt.Fprintf(w, "binding lifetime: %v; a keepalive every %v at most keeps a mapping (%s)\n", lt, safe, verdict)
}

func printNATReport(w io.Writer, r stunkeeper.NATReport, portMin, portMax int) {
	if r.Server != "" {
		fmt.Fprintf(w, "RFC 5780 server: %s (answers on %s, other address %s)\n", r.Server, r.Primary, r.Other)
	} else if len(r.Seen) > 0 {
		fmt.Fprintln(w, "RFC 5780 server: none (no OTHER-ADDRESS in any server's answer)")
	}
	for _, m := range r.Seen {
		fmt.Fprintf(w, "  %s sees %s\n", m.Via, m.Addr)
	}
	if r.Public.IsValid() {
		fmt.Fprintf(w, "public address: %s\n", r.Public)
	}
	fmt.Fprintf(w, "mapping:     %s\nfiltering:   %s\nhairpinning: %s\n", r.Mapping, r.Filtering, r.Hairpin)
	fmt.Fprintf(w, "test took %v\n", r.Took.Round(time.Millisecond))
	fmt.Fprintf(w, "NAT: %s\n", r.Advice(portMin, portMax))
}

// parseFlags parses a command's flags: --help prints the manual to stdout
// (exit 0); a bad flag or a stray argument is a usage error (exit 2). It
// returns ok when the command should go on.
func parseFlags(fs *flag.FlagSet, args []string, help string, stdout, stderr io.Writer) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, help)
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "linkmanager %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}
