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
      hairpinning  whether a packet to our own public address comes back.

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
    --timeout DURATION    give up after this long (default 10s)

EXIT STATUS
    0 a verdict was printed (whatever it is); 1 no STUN server answered, or
    none is configured; 2 a usage error or a config that does not load.
`

func cmdNATTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nat-test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/linkmanager/linkmanager.yaml", "config file")
	timeout := fs.Duration("timeout", stunkeeper.DefaultNATTestTimeout, "give up after this long")
	// The manual goes to stdout on --help only; a usage error gets the
	// synopsis on stderr.
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: linkmanager nat-test [--config FILE] [--timeout DURATION]\n")
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
	var conns [2]net.PacketConn
	for i := range conns {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen.Addr(), 0)))
		if err != nil {
			fmt.Fprintf(stderr, "linkmanager nat-test: open a test socket on %s: %v\n", listen.Addr(), err)
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
	printNATReport(stdout, r, cfg.RTP.PortMin, cfg.RTP.PortMax)
	if err != nil {
		return 1
	}
	return 0
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
