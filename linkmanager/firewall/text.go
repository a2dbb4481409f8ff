package firewall

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// Text renders the rules as a plain table for router admins who click
// them into a web interface: the four rules (host names as given in the
// config), optional port forwards and the QoS setting.
func (rs *Ruleset) Text() string {
	d := rs.daemon("<daemon LAN IP>")
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	w("linkmanager firewall rules for the router in front of the daemon\n")
	if rs.Source != "" {
		w("Generated from %s.\n", rs.Source)
	}
	w("\nDaemon (LinkManager) LAN address: %s", d)
	switch {
	case !rs.Daemon.IsValid():
		w("\n  sip.listen is %s: use the LAN IP of the daemon host's default-route\n  interface (or rerun with --address IP).\n", rs.Listen)
	case rs.AddressFrom == "--address":
		w(" (--address; sip.listen is %s)\n", rs.Listen)
	default:
		w(" (sip.listen %s)\n", rs.Listen)
	}
	w("  SIP and STUN: UDP %d    RTP: UDP %s\n", rs.SIPPort, rs.rtpRange("-"))

	w("\nFirewall rules (all UDP; allow, in this order):\n\n")
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	row := func(cols ...string) { fmt.Fprintln(tw, "  "+strings.Join(cols, "\t")) }
	row("Rule", "Direction", "Source", "Destination", "Purpose")
	row("----", "---------", "------", "-----------", "-------")
	src := d + ":" + fmt.Sprint(rs.SIPPort)
	for _, r := range rs.Remotes {
		for _, dst := range r.Dests {
			purpose := fmt.Sprintf("%s (%s)", r.Kind, r.roleText())
			if dst.Why != "" {
				purpose += ", " + dst.Why
			}
			row("1", "out", src, net2(dst.Host, dst.Port), purpose)
		}
	}
	for _, r := range rs.Remotes {
		what := "STUN answers"
		if r.Kind == SIP {
			what = "SIP answers and the provider's requests"
		}
		row("2", "in", hostOnly(r.Name)+":any", src, what)
	}
	row("3", "out", d+":"+rs.rtpRange("-"), "any:any", "RTP (voice) out")
	row("4", "in", "any:any", d+":"+rs.rtpRange("-"), "RTP (voice) in")
	row("-", "deny", "anything else", src, "and the same out from "+src)
	_ = tw.Flush()

	var notes []string
	for _, r := range rs.Remotes {
		if r.Note != "" {
			notes = append(notes, r.Name+": "+r.Note+".")
		}
		if r.Literal() {
			continue
		}
		for _, dst := range r.Dests {
			switch {
			case dst.Resolved():
				notes = append(notes, fmt.Sprintf("%s resolved to %s when this was generated.", dst.Host, joinAddrs(dst.Addrs, ", ")))
			case dst.Err != "not looked up":
				notes = append(notes, fmt.Sprintf("%s did not resolve: %s.", dst.Host, dst.Err))
			}
		}
	}
	notes = append(notes,
		"On a stateful firewall \"allow established/related\" covers the answers of rules 2 and 4; keep the explicit rules anyway: they admit the provider's own requests (incoming calls) and early media.")
	w("\nNotes:\n")
	seen := map[string]bool{}
	for _, n := range notes {
		if !seen[n] {
			seen[n] = true
			w("%s", wrap(n, "  - ", "    ", 78))
		}
	}

	w("\nPort forwards (optional):\n")
	w("%s", wrap(fmt.Sprintf("None are needed: keep the router's NAT (masquerading) as it is. The daemon keeps its mappings open (STUN every %s, a keepalive to each registrar) and sends first to every call's remote media address. Routers that forget UDP mappings quickly, or remotes whose media comes from another address than they announce, may add:", rs.Interval), "  ", "  ", 78))
	w("\n")
	tw = tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	row("Protocol", "Public port", "Forward to", "Allow from")
	row("--------", "-----------", "----------", "----------")
	var from []string
	for _, r := range rs.Remotes {
		from = append(from, hostOnly(r.Name))
	}
	row("UDP", fmt.Sprint(rs.SIPPort), src, strings.Join(from, ", "))
	row("UDP", rs.rtpRange("-"), d+":"+rs.rtpRange("-"), "any")
	_ = tw.Flush()
	w("%s", wrap("Forward each port to the same port: the daemon announces the public port its STUN server reports.", "  ", "  ", 78))

	w("\nQoS:\n")
	if rs.DSCP == 0 {
		w("  rtp.dscp is 0: the daemon leaves its media unmarked; no marking asked for.\n")
	} else {
		w("%s", wrap(fmt.Sprintf("Mark or prioritise UDP %s from and to %s as DSCP %s (voice queue). The daemon marks what it sends itself.", rs.rtpRange("-"), d, dscpLabel(rs.DSCP)), "  ", "  ", 78))
	}
	return b.String()
}

// hostOnly strips the port from host:port (names as given in the config).
func hostOnly(name string) string {
	if strings.HasPrefix(name, "[") {
		if i := strings.IndexByte(name, ']'); i > 0 {
			return name[1:i]
		}
	}
	if i := strings.LastIndexByte(name, ':'); i >= 0 && strings.Count(name, ":") == 1 {
		return name[:i]
	}
	return name
}

// wrap fills words into lines of at most width columns.
func wrap(s, first, rest string, width int) string {
	var b strings.Builder
	line := first
	empty := true
	for _, word := range strings.Fields(s) {
		if !empty && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line, empty = rest, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	b.WriteString(line + "\n")
	return b.String()
}
