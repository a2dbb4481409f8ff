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
	"strings"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/firewall"
)

const firewallHelp = `NAME
    linkmanager firewall - print the router's firewall rules for this config

SYNOPSIS
    linkmanager firewall [--config FILE] [--format nftables|iptables|text]
                         [--address IP] [--policy accept|drop] [--no-resolve]

DESCRIPTION
    Reads FILE as the daemon would (passwords are not needed and not read)
    and prints the rules a firewall/NAT
    router in front of the daemon needs (the LinkManager manual's four
    rules), for traffic the router forwards to and from the daemon:

      1. STUN and SIP out from the daemon's sip.listen port (65002) to the
         STUN servers (stun.servers; port 3478 unless given) and to every
         trunk's proxy and registrar (port 5060 unless given; without a
         port the daemon looks up _sip._udp SRV first, so both 5060 and the
         SRV ports are allowed);
      2. their answers, and the providers' own requests, back in to 65002;
      3. RTP out from rtp.port_min..rtp.port_max to anywhere;
      4. RTP in to that range from anywhere.

    Anything else to or from the daemon's SIP port is dropped. Where the
    format can, the RTP range is marked with rtp.dscp (46, EF, by default).

    The daemon's address is the IP of sip.listen. When that is 0.0.0.0 the
    daemon uses its default-route interface; give that LAN IP with
    --address, or the output carries a placeholder (LAN_IP) that must be
    filled in before it loads.

    nftables and iptables rules need addresses: host names are resolved
    (IPv4, as the daemon does) when the rules are printed, and each rule
    says which name its addresses came from. Regenerate them when a
    provider changes its addresses. The text format shows the names as
    written in the config.

    No port forward is needed: the daemon keeps its NAT mappings open with
    STUN and per-registrar keepalives, and sends first on every media
    port. The text format lists optional port forwards for routers that
    want them.

FORMATS
    nftables  A self-contained file for nft -f: table inet linkmanager with
              a forward chain (the rules) and a qos chain (DSCP). Loading it
              again replaces the table. Other tables keep working; note that
              an accept here cannot override a drop in another chain on the
              forward hook.
    iptables  A sh script of iptables commands: chain LINKMANAGER in the
              filter table, jumped to first from FORWARD, and
              LINKMANAGER_QOS in the mangle table. Re-running it refills
              both chains.
    text      A plain table of rules, optional port forwards and QoS, for
              router web interfaces.

OPTIONS
    --config FILE      the daemon's config (default
                       /etc/linkmanager/linkmanager.yaml)
    --format FORMAT    nftables, iptables or text (default text)
    --address IP       the daemon host's LAN IP, instead of sip.listen's IP
                       (needed when sip.listen is 0.0.0.0)
    --policy POLICY    what the forward chain does with traffic no rule
                       matches: accept (default; only the daemon's SIP port
                       is policed, the router's own rules decide the rest)
                       or drop (the rules are the router's whole forward
                       policy)
    --no-resolve       do not use DNS; rules for host names are left out
                       (nftables, iptables) and marked UNRESOLVED

EXIT STATUS
    0 the rules are complete; 1 they were printed but are incomplete (a
    name did not resolve, or the address is the LAN_IP placeholder; the
    reasons go to stderr; text output is complete without addresses); 2 a
    usage error or a config that does not load.

EXAMPLES
    Check and load the rules on an nftables router:
        linkmanager firewall --config lm.yaml --format nftables > lm.nft
        nft -c -f lm.nft && nft -f lm.nft

    A router that runs iptables, daemon configured with 0.0.0.0:
        linkmanager firewall --config lm.yaml --format iptables \
            --address 192.168.100.2 > lm-fw.sh && sh lm-fw.sh

    A table to click into a router's web interface:
        linkmanager firewall --config lm.yaml --format text
`

func cmdFirewall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("firewall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/linkmanager/linkmanager.yaml", "config file")
	format := fs.String("format", "text", "nftables, iptables or text")
	address := fs.String("address", "", "the daemon host's LAN IP (default: the IP of sip.listen)")
	policy := fs.String("policy", firewall.PolicyAccept, "forward chain policy: accept or drop")
	noResolve := fs.Bool("no-resolve", false, "do not look up host names")
	fs.Usage = func() { fmt.Fprint(stderr, firewallHelp) }
	if code, ok := parseFlags(fs, args, firewallHelp, stdout, stderr); !ok {
		return code
	}
	in := firewall.Input{Source: *path, Policy: *policy}
	if *address != "" {
		a, err := netip.ParseAddr(*address)
		if err != nil {
			fmt.Fprintf(stderr, "linkmanager firewall: --address %q: not an IP address\n", *address)
			return 2
		}
		in.Address = a
	}
	cfg, err := loadWithoutSecrets(*path)
	if err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintln(stderr, p)
		}
		return 2
	}
	if !*noResolve {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		in.Hosts, in.SRV = resolveNames(ctx, net.DefaultResolver, firewall.Names(cfg))
		cancel()
	}
	rs, err := firewall.Build(cfg, in)
	if err != nil {
		fmt.Fprintf(stderr, "linkmanager firewall: %v\n", err)
		return 2
	}
	out, err := rs.Render(*format)
	if err != nil {
		fmt.Fprintf(stderr, "linkmanager firewall: --format: %v\n", err)
		return 2
	}
	fmt.Fprint(stdout, out)
	if *format == "text" {
		return 0
	}
	if ps := rs.Problems(); len(ps) > 0 {
		for _, p := range ps {
			fmt.Fprintf(stderr, "linkmanager firewall: %s\n", p)
		}
		return 1
	}
	return 0
}

// loadWithoutSecrets is config.Load, except that passwords are neither
// needed nor read: the rules do not depend on them, and the firewall is
// often printed on another machine than the daemon's (the router admin's),
// where neither the environment variables nor the password files exist.
func loadWithoutSecrets(path string) (*config.Config, error) {
	return config.Loader{
		Getenv: func(string) string { return "unused" },
		ReadFile: func(name string) ([]byte, error) {
			if name == path {
				return os.ReadFile(name)
			}
			return []byte("unused"), nil // a password_file
		},
	}.Load(path)
}

// dnsResolver is the part of net.Resolver the firewall lookups use.
type dnsResolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// resolveNames looks up what firewall.Names asks for: IPv4 addresses (the
// daemon's SIP code resolves "ip4") and, for registrars and proxies
// without a port, _sip._udp SRV and the targets' addresses.
func resolveNames(ctx context.Context, r dnsResolver, names []firewall.Name) (map[string]firewall.Lookup, map[string]firewall.SRVLookup) {
	hosts := map[string]firewall.Lookup{}
	srv := map[string]firewall.SRVLookup{}
	lookup := func(h string) {
		if _, done := hosts[h]; done {
			return
		}
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		as, err := r.LookupNetIP(c, "ip4", h)
		l := firewall.Lookup{Addrs: as}
		if err != nil {
			l.Err = dnsReason(err)
		}
		hosts[h] = l
	}
	for _, n := range names {
		lookup(n.Host)
		if !n.SRV {
			continue
		}
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, recs, err := r.LookupSRV(c, "sip", "udp", n.Host)
		cancel()
		var s firewall.SRVLookup
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			// no SRV record: the daemon uses the name on 5060
		case err != nil:
			s.Err = dnsReason(err)
		}
		for _, rec := range recs {
			t := strings.ToLower(strings.TrimSuffix(rec.Target, "."))
			if t == "" {
				continue
			}
			s.Targets = append(s.Targets, firewall.SRVTarget{Host: t, Port: rec.Port})
			lookup(t)
		}
		srv[n.Host] = s
	}
	return hosts, srv
}

func dnsReason(err error) string {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound {
			return "no such host"
		}
		return dnsErr.Err
	}
	return err.Error()
}
