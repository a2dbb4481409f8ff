package firewall

import (
	"fmt"
	"net/netip"
	"strings"
)

// NFTTable is the table the nftables output defines.
const NFTTable = "inet linkmanager"

// NFTables renders a self-contained nftables file for `nft -f`: the table
// inet linkmanager with a forward chain (the four rules) and, when
// rtp.dscp is set, a qos chain that marks the RTP range. Loading it again
// replaces the table in one transaction.
func (rs *Ruleset) NFTables() string {
	d := rs.daemon("$" + Placeholder)
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	w("#!/usr/sbin/nft -f\n")
	b.WriteString(comment(rs.header("nftables", d), ""))
	w("#\n# Load: nft -f FILE. Remove: nft delete table %s.\n", NFTTable)
	w("# An accept here does not override a drop elsewhere: every base chain on\n")
	w("# the forward hook must let a packet pass. If the router's own forward\n")
	w("# chain drops by default, let it accept traffic from and to %s too\n", d)
	w("# (this table then polices it) or copy these rules into that chain.\n")
	if !rs.Daemon.IsValid() {
		w("\n# Set the daemon host's LAN IP here and uncomment (sip.listen is %s):\n", rs.Listen)
		w("# define %s = 192.168.1.10\n", Placeholder)
	}
	w("\n# Declare, delete, define: loading the file again replaces an older version.\n")
	w("table %s\ndelete table %s\n\n", NFTTable, NFTTable)
	w("table %s {\n", NFTTable)
	w("\tchain forward {\n")
	w("\t\ttype filter hook forward priority filter; policy %s;\n", rs.Policy)

	w("\n\t\t# 1. STUN and SIP out from the daemon's %d\n", rs.SIPPort)
	for _, r := range rs.Remotes {
		for _, dst := range r.Dests {
			w("\t\t# %s\n", destNote(r, dst))
			if !dst.Resolved() {
				w("\t\t# UNRESOLVED %s (%s): no rule; add one with its address by hand\n", net2(dst.Host, dst.Port), dst.Err)
				continue
			}
			w("\t\tip saddr %s udp sport %d ip daddr %s udp dport %d accept comment %q\n",
				d, rs.SIPPort, nftAddrs(dst.Addrs), dst.Port,
				ruleComment(fmt.Sprintf("1 %s out to %s", r.Kind, net2(dst.Host, dst.Port))))
		}
	}

	w("\n\t\t# 2. Their answers and the providers' requests in to %d, from any source port\n", rs.SIPPort)
	for _, r := range rs.Remotes {
		as := r.Addrs()
		if len(as) == 0 {
			w("\t\t# UNRESOLVED %s: no rule for its answers\n", r.Name)
			continue
		}
		what := "answers"
		if r.Kind == SIP {
			what = "answers and requests"
		}
		w("\t\tip saddr %s ip daddr %s udp dport %d accept comment %q\n",
			nftAddrs(as), d, rs.SIPPort, ruleComment(fmt.Sprintf("2 %s %s from %s", r.Kind, what, r.Name)))
	}

	w("\n\t\t# 3. RTP out from the daemon's relay pool to anywhere\n")
	w("\t\tip saddr %s udp sport %s accept comment %q\n", d, rs.rtpRange("-"), "3 RTP out to anywhere")
	w("\n\t\t# 4. RTP in to the daemon's relay pool from anywhere\n")
	w("\t\tip daddr %s udp dport %s accept comment %q\n", d, rs.rtpRange("-"), "4 RTP in from anywhere")

	w("\n\t\t# Nothing else from or to the daemon's SIP port\n")
	w("\t\tip saddr %s udp sport %d counter drop comment %q\n", d, rs.SIPPort, "SIP/STUN out to a host not listed above")
	w("\t\tip daddr %s udp dport %d counter drop comment %q\n", d, rs.SIPPort, "SIP/STUN in from a host not listed above")
	w("\t}\n")

	if rs.DSCP == 0 {
		w("\n\t# rtp.dscp is 0: no DSCP marking.\n")
	} else {
		w("\n\t# QoS: DSCP %s on the RTP range, both directions (the daemon also marks\n", dscpLabel(rs.DSCP))
		w("\t# what it sends; marking here covers the inbound direction and gear that\n")
		w("\t# re-marks). Routers with a voice queue can classify on it.\n")
		w("\tchain qos {\n")
		w("\t\ttype filter hook forward priority mangle; policy accept;\n")
		v := dscpName(rs.DSCP)
		if v == "" {
			v = fmt.Sprint(rs.DSCP)
		}
		w("\t\tip saddr %s udp sport %s ip dscp set %s comment %q\n", d, rs.rtpRange("-"), v, "RTP out: DSCP "+dscpLabel(rs.DSCP))
		w("\t\tip daddr %s udp dport %s ip dscp set %s comment %q\n", d, rs.rtpRange("-"), v, "RTP in: DSCP "+dscpLabel(rs.DSCP))
		w("\t}\n")
	}
	w("}\n")
	return b.String()
}

// nftAddrs is one address or an anonymous set.
func nftAddrs(as []netip.Addr) string {
	if len(as) == 1 {
		return as[0].String()
	}
	return "{ " + joinAddrs(as, ", ") + " }"
}
