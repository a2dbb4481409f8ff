// Package firewall turns a linkmanager config into the firewall rules the
// original LinkManager manual asks of the router in front of the daemon:
//
//  1. STUN and SIP out from the daemon's SIP port (65002) to the STUN
//     servers and to the providers' registrars and proxies;
//  2. their answers (and the providers' own requests) back in to 65002;
//  3. RTP out from the daemon's Internet relay pool (rtp.port_min..port_max)
//     to anywhere;
//  4. RTP in to that pool from anywhere;
//
// plus DSCP marking of the RTP range where the format has it. Output comes
// as an nftables table, an iptables script, or a plain table for router
// admins (see NFTables, IPTables, Text).
//
// The package is pure: it does no DNS and no I/O. Host names in the config
// are looked up by the caller (cmd/linkmanager), which lists what to look
// up with Names and passes the answers in Input.
package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

// DefaultSIPPort is the port for a registrar or proxy given without one
// when its name has no _sip._udp SRV record (and the fallback the daemon
// always keeps).
const DefaultSIPPort = 5060

// Placeholder names the daemon's LAN IP when the config only says 0.0.0.0
// and no --address was given: the nftables and iptables output then use a
// variable of this name that the admin must set (nft and the script refuse
// to run until then), and the text output asks for the address.
const Placeholder = "LAN_IP"

// Policy values for Input.Policy: what the generated forward chain does
// with traffic that none of its rules match.
const (
	// PolicyAccept polices only the daemon's SIP port and RTP range (what
	// the rules do not allow there is dropped) and leaves every other
	// forwarded packet to the router's own rules.
	PolicyAccept = "accept"
	// PolicyDrop makes the table the router's whole forward policy: a
	// router that forwards nothing but the daemon's traffic.
	PolicyDrop = "drop"
)

// Name is one host name of the config that the caller should look up.
type Name struct {
	Host string
	// SRV: also look up _sip._udp.Host (a registrar or proxy without a
	// port) and then the A records of the SRV targets.
	SRV bool
}

// Lookup is the answer for one host name: its IPv4 addresses, or why
// there are none. The daemon's SIP code resolves IPv4 only ("ip4").
type Lookup struct {
	Addrs []netip.Addr
	Err   string
}

// SRVTarget is one answer of a _sip._udp SRV lookup.
type SRVTarget struct {
	Host string // target name; its addresses go in Input.Hosts
	Port uint16
}

// SRVLookup is the answer of a _sip._udp SRV lookup. No targets and no
// error means the name has no SRV record (the daemon then uses port 5060).
type SRVLookup struct {
	Targets []SRVTarget
	Err     string
}

// Input is what Build needs besides the config.
type Input struct {
	// Source names the config file in the header comments.
	Source string
	// Address overrides the IP of sip.listen (the --address flag). Needed
	// when sip.listen is 0.0.0.0.
	Address netip.Addr
	// Policy of the forward chain: PolicyAccept (default) or PolicyDrop.
	Policy string
	// Hosts holds the caller's lookups of Names (and of SRV targets).
	// A name missing here was not looked up (e.g. --no-resolve).
	Hosts map[string]Lookup
	// SRV holds the _sip._udp lookups of the Names with SRV set.
	SRV map[string]SRVLookup
}

// Kind is what a remote is to the daemon.
type Kind string

// Kinds of remotes.
const (
	STUN Kind = "STUN"
	SIP  Kind = "SIP"
)

// Dest is one destination port on a set of addresses, all from one name.
type Dest struct {
	Host  string       // the name (or IP literal) the addresses came from
	Addrs []netip.Addr // IPv4; empty when Host could not be resolved
	Port  uint16
	Why   string // why this port, e.g. "SRV _sip._udp.example.net"; "" for a port from the config
	Err   string // why Addrs is empty
}

// Resolved reports whether the destination has addresses.
func (d Dest) Resolved() bool { return len(d.Addrs) > 0 }

// Remote is one STUN server, registrar or proxy of the config.
type Remote struct {
	Kind  Kind
	Name  string   // as written in the config (host or host:port)
	Roles []string // where the config uses it, e.g. "stun.servers[0]", "trunk office: registrar"
	Dests []Dest
	Note  string // e.g. how a port-less registrar is resolved
}

// Addrs returns every address of the remote, sorted and without duplicates.
func (r Remote) Addrs() []netip.Addr {
	var all []netip.Addr
	for _, d := range r.Dests {
		all = append(all, d.Addrs...)
	}
	slices.SortFunc(all, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(all)
}

// Literal reports whether the remote is an IP address in the config (no
// name to resolve).
func (r Remote) Literal() bool {
	return len(r.Dests) > 0 && isIP(r.Dests[0].Host)
}

// Ruleset is the firewall for one config, ready to be rendered.
type Ruleset struct {
	Source string
	// Daemon is the LAN IP of the daemon's Internet-facing socket; invalid
	// when the config says 0.0.0.0 and no Address was given (then the
	// output carries Placeholder).
	Daemon      netip.Addr
	Listen      string // sip.listen as configured
	AddressFrom string // "sip.listen" or "--address"
	SIPPort     uint16
	Remotes     []Remote // STUN servers first, then the trunks' proxies and registrars
	RTPMin      uint16
	RTPMax      uint16
	DSCP        int // 0: no marking
	Policy      string
	Interval    string // stun.interval, for the comments
}

// Names lists the host names in cfg that need a DNS lookup, in config
// order and without duplicates. IP literals are left out.
func Names(cfg *config.Config) []Name {
	var out []Name
	seen := map[Name]bool{}
	add := func(host string, port int) {
		if host == "" || isIP(host) {
			return
		}
		n := Name{Host: strings.ToLower(host), SRV: port == 0}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, s := range cfg.STUN.ServerAddrs {
		add(s.Host, s.Port)
	}
	for _, t := range cfg.Trunks {
		for _, hp := range trunkHosts(t) {
			add(hp.Host, hp.Port)
		}
	}
	return out
}

// trunkHosts returns where the trunk's requests go (the proxy, which
// defaults to the registrar) and, when it differs, the registrar, which
// may send requests to us.
func trunkHosts(t config.Trunk) []config.HostPort {
	hs := []config.HostPort{t.ProxyAddr}
	if t.ProxyAddr.Host == "" {
		hs[0] = t.RegistrarAddr
	}
	if !strings.EqualFold(t.RegistrarAddr.String(), hs[0].String()) {
		hs = append(hs, t.RegistrarAddr)
	}
	return hs
}

// Build computes the rules for a loaded (defaulted and validated) config.
// It fails when the daemon's address is not an IPv4 address.
func Build(cfg *config.Config, in Input) (*Ruleset, error) {
	rs := &Ruleset{
		Source:      in.Source,
		Listen:      cfg.SIP.Listen,
		AddressFrom: "sip.listen",
		SIPPort:     cfg.SIP.ListenAddr.Port(),
		RTPMin:      uint16(cfg.RTP.PortMin),
		RTPMax:      uint16(cfg.RTP.PortMax),
		Policy:      in.Policy,
		Interval:    cfg.STUN.Interval.String(),
	}
	if rs.SIPPort == 0 {
		rs.SIPPort = config.DefaultSIPPort
	}
	if rs.Policy == "" {
		rs.Policy = PolicyAccept
	}
	if rs.Policy != PolicyAccept && rs.Policy != PolicyDrop {
		return nil, fmt.Errorf("policy %q: want %s or %s", rs.Policy, PolicyAccept, PolicyDrop)
	}
	if cfg.RTP.DSCP != nil {
		rs.DSCP = *cfg.RTP.DSCP
	}
	switch a := cfg.SIP.ListenAddr.Addr(); {
	case in.Address.IsValid():
		rs.Daemon, rs.AddressFrom = in.Address.Unmap(), "--address"
	case a.IsValid() && !a.IsUnspecified():
		rs.Daemon = a.Unmap()
	}
	if rs.Daemon.IsValid() {
		if !rs.Daemon.Is4() {
			return nil, fmt.Errorf("daemon address %s: only IPv4 is supported (the daemon's SIP and STUN are IPv4)", rs.Daemon)
		}
		if rs.Daemon.IsUnspecified() || rs.Daemon.IsMulticast() {
			return nil, fmt.Errorf("daemon address %s: give the daemon host's own LAN IP", rs.Daemon)
		}
	}

	index := map[string]int{} // kind + lower-case name -> Remotes index
	add := func(kind Kind, hp config.HostPort, defPort int, role string) {
		name := hp.String()
		key := string(kind) + " " + strings.ToLower(name)
		if i, ok := index[key]; ok {
			if !slices.Contains(rs.Remotes[i].Roles, role) {
				rs.Remotes[i].Roles = append(rs.Remotes[i].Roles, role)
			}
			return
		}
		r := Remote{Kind: kind, Name: name, Roles: []string{role}}
		host := strings.ToLower(hp.Host)
		port := hp.Port
		if port == 0 && kind == STUN {
			port = defPort
		}
		switch {
		case port != 0:
			r.Dests = []Dest{dest(host, uint16(port), "", in.Hosts)}
		case isIP(host):
			r.Dests = []Dest{dest(host, DefaultSIPPort, "no port in the config", in.Hosts)}
		default:
			r.Dests, r.Note = srvDests(host, in)
		}
		index[key] = len(rs.Remotes)
		rs.Remotes = append(rs.Remotes, r)
	}
	for i, s := range cfg.STUN.ServerAddrs {
		add(STUN, s, config.DefaultSTUNPort, fmt.Sprintf("stun.servers[%d]", i))
	}
	for _, t := range cfg.Trunks {
		hs := trunkHosts(t)
		for j, hp := range hs {
			role := "trunk " + t.Name + ": registrar"
			if len(hs) > 1 {
				role = "trunk " + t.Name + ": proxy"
				if j == 1 {
					role = "trunk " + t.Name + ": registrar (may send requests)"
				}
			}
			add(SIP, hp, 0, role)
		}
	}
	return rs, nil
}

// dest builds one destination; an IP literal is its own address.
func dest(host string, port uint16, why string, hosts map[string]Lookup) Dest {
	d := Dest{Host: host, Port: port, Why: why}
	if a, err := netip.ParseAddr(host); err == nil {
		d.Addrs = []netip.Addr{a.Unmap()}
		return d
	}
	l, ok := hosts[host]
	switch {
	case !ok:
		d.Err = "not looked up"
	case len(l.Addrs) == 0 && l.Err == "":
		d.Err = "no IPv4 address"
	default:
		d.Err = l.Err
		for _, a := range l.Addrs {
			if a = a.Unmap(); a.Is4() && !slices.Contains(d.Addrs, a) {
				d.Addrs = append(d.Addrs, a)
			}
		}
		slices.SortFunc(d.Addrs, func(a, b netip.Addr) int { return a.Compare(b) })
		if len(d.Addrs) > 0 {
			d.Err = ""
		} else if d.Err == "" {
			d.Err = "no IPv4 address"
		}
	}
	return d
}

// srvDests covers a registrar or proxy without a port the way the daemon
// resolves it: _sip._udp SRV first, else the name itself on 5060. The
// SRV answer can change, so the 5060 fallback is always allowed too.
func srvDests(host string, in Input) ([]Dest, string) {
	ds := []Dest{dest(host, DefaultSIPPort, "no port: fallback when _sip._udp."+host+" has no SRV record", in.Hosts)}
	s, ok := in.SRV[host]
	switch {
	case !ok:
		return ds, "no port in the config: the daemon looks up SRV _sip._udp." + host + " (not looked up here), else uses port 5060"
	case s.Err != "":
		return ds, "no port in the config: SRV _sip._udp." + host + " failed (" + s.Err + "); the daemon then uses port 5060"
	case len(s.Targets) == 0:
		return ds, "no port in the config and no SRV _sip._udp." + host + " record: port 5060"
	}
	var ts []string
	for _, t := range s.Targets {
		th := strings.ToLower(strings.TrimSuffix(t.Host, "."))
		ts = append(ts, net2(th, t.Port))
		d := dest(th, t.Port, "SRV _sip._udp."+host, in.Hosts)
		if i := slices.IndexFunc(ds, func(x Dest) bool { return x.Host == d.Host && x.Port == d.Port }); i >= 0 {
			continue
		}
		ds = append(ds, d)
	}
	return ds, "no port in the config: SRV _sip._udp." + host + " -> " + strings.Join(ts, ", ") + "; port 5060 on " + host + " kept as the fallback"
}

// Unresolved lists the destinations without addresses ("host:port (why)").
// nftables and iptables output leave their rules out.
func (rs *Ruleset) Unresolved() []string {
	var out []string
	for _, r := range rs.Remotes {
		for _, d := range r.Dests {
			if !d.Resolved() {
				out = append(out, fmt.Sprintf("%s (%s, %s): %s", net2(d.Host, d.Port), r.Kind, r.Name, d.Err))
			}
		}
	}
	return out
}

// Problems lists what makes the nftables and iptables output incomplete or
// unloadable: a placeholder address, unresolved names.
func (rs *Ruleset) Problems() []string {
	var out []string
	if !rs.Daemon.IsValid() {
		out = append(out, fmt.Sprintf("sip.listen is %s: the rules say %s; rerun with --address set to the daemon host's LAN IP", rs.Listen, Placeholder))
	}
	for _, u := range rs.Unresolved() {
		out = append(out, "no rule for "+u)
	}
	return out
}

// ErrFormat is returned by Render for an unknown format.
var ErrFormat = errors.New("unknown format")

// Formats are the names Render accepts.
var Formats = []string{"nftables", "iptables", "text"}

// Render returns the ruleset in one of Formats.
func (rs *Ruleset) Render(format string) (string, error) {
	switch format {
	case "nftables", "nft":
		return rs.NFTables(), nil
	case "iptables":
		return rs.IPTables(), nil
	case "text":
		return rs.Text(), nil
	}
	return "", fmt.Errorf("%w %q: want one of %s", ErrFormat, format, strings.Join(Formats, ", "))
}

// daemon is the daemon's address as written in the rules, or the
// placeholder (e.g. "$LAN_IP") when there is none.
func (rs *Ruleset) daemon(placeholder string) string {
	if !rs.Daemon.IsValid() {
		return placeholder
	}
	return rs.Daemon.String()
}

// rtpRange is "min-max".
func (rs *Ruleset) rtpRange(sep string) string {
	return strconv.Itoa(int(rs.RTPMin)) + sep + strconv.Itoa(int(rs.RTPMax))
}

// dscpName is the class name of a DSCP value where it has one ("ef").
func dscpName(v int) string {
	switch {
	case v == 46:
		return "ef"
	case v%8 == 0 && v <= 56:
		return "cs" + strconv.Itoa(v/8)
	case v >= 10 && v <= 38 && v%8 != 0 && v%2 == 0 && (v%8)/2 <= 3:
		return "af" + strconv.Itoa(v/8) + strconv.Itoa((v%8)/2)
	}
	return ""
}

// dscpLabel is "46 (EF)" or "26 (AF31)" or "5".
func dscpLabel(v int) string {
	if n := dscpName(v); n != "" {
		return fmt.Sprintf("%d (%s)", v, strings.ToUpper(n))
	}
	return strconv.Itoa(v)
}

func isIP(h string) bool {
	_, err := netip.ParseAddr(h)
	return err == nil
}

// net2 is host:port.
func net2(host string, port uint16) string {
	return host + ":" + strconv.Itoa(int(port))
}

// roleText joins a remote's roles for comments.
func (r Remote) roleText() string { return strings.Join(r.Roles, "; ") }
