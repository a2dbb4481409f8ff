package firewall

import (
	"fmt"
	"strings"
)

// Chains the iptables output creates.
const (
	IPTChain    = "LINKMANAGER"     // filter table, jumped to first from FORWARD
	IPTQoSChain = "LINKMANAGER_QOS" // mangle table, jumped to from FORWARD
)

// IPTables renders a POSIX shell script of iptables commands: a chain
// LINKMANAGER in the filter table, jumped to first from FORWARD, and (when
// rtp.dscp is set) LINKMANAGER_QOS in the mangle table. Running it again
// flushes and refills both chains.
func (rs *Ruleset) IPTables() string {
	d := rs.daemon(`"$` + Placeholder + `"`)
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	rule := func(spec, cmt, target string) {
		w("iptables -A %s %s -m comment --comment %s -j %s\n", IPTChain, spec, shellQuote(ruleComment(cmt)), target)
	}
	w("#!/bin/sh\n")
	b.WriteString(comment(rs.header("iptables", d), ""))
	w("#\n# Run as root on the router (iptables-legacy or iptables-nft). It flushes and\n")
	if rs.DSCP != 0 {
		w("# refills the chain %s, which FORWARD jumps to first, and %s\n", IPTChain, IPTQoSChain)
		w("# in the mangle table. Remove:\n")
	} else {
		w("# refills the chain %s, which FORWARD jumps to first. Remove:\n", IPTChain)
	}
	w("#   iptables -D FORWARD -j %s; iptables -F %s; iptables -X %s\n", IPTChain, IPTChain, IPTChain)
	if rs.DSCP != 0 {
		w("#   iptables -t mangle -D FORWARD -j %s; iptables -t mangle -F %s; iptables -t mangle -X %s\n", IPTQoSChain, IPTQoSChain, IPTQoSChain)
	}
	w("set -e\n")
	if !rs.Daemon.IsValid() {
		w("\n# Set the daemon host's LAN IP here (sip.listen is %s):\n", rs.Listen)
		w("%s=\"${%s:-}\"\n", Placeholder, Placeholder)
		w(": \"${%s:?set %s to the daemon host's LAN IP}\"\n", Placeholder, Placeholder)
	}
	w("\niptables -N %s 2>/dev/null || iptables -F %s\n", IPTChain, IPTChain)
	w("iptables -C FORWARD -j %s 2>/dev/null || iptables -I FORWARD 1 -j %s\n", IPTChain, IPTChain)

	w("\n# 1. STUN and SIP out from the daemon's %d\n", rs.SIPPort)
	for _, r := range rs.Remotes {
		for _, dst := range r.Dests {
			w("# %s\n", destNote(r, dst))
			if !dst.Resolved() {
				w("# UNRESOLVED %s (%s): no rule; add one with its address by hand\n", net2(dst.Host, dst.Port), dst.Err)
				continue
			}
			for _, a := range dst.Addrs {
				rule(fmt.Sprintf("-p udp -s %s --sport %d -d %s --dport %d", d, rs.SIPPort, a, dst.Port),
					fmt.Sprintf("1 %s out to %s", r.Kind, net2(dst.Host, dst.Port)), "ACCEPT")
			}
		}
	}

	w("\n# 2. Their answers and the providers' requests in to %d, from any source port\n", rs.SIPPort)
	for _, r := range rs.Remotes {
		as := r.Addrs()
		if len(as) == 0 {
			w("# UNRESOLVED %s: no rule for its answers\n", r.Name)
			continue
		}
		what := "answers"
		if r.Kind == SIP {
			what = "answers and requests"
		}
		for _, a := range as {
			rule(fmt.Sprintf("-p udp -s %s -d %s --dport %d", a, d, rs.SIPPort),
				fmt.Sprintf("2 %s %s from %s", r.Kind, what, r.Name), "ACCEPT")
		}
	}

	w("\n# 3. RTP out from the daemon's relay pool to anywhere\n")
	rule(fmt.Sprintf("-p udp -s %s --sport %s", d, rs.rtpRange(":")), "3 RTP out to anywhere", "ACCEPT")
	w("\n# 4. RTP in to the daemon's relay pool from anywhere\n")
	rule(fmt.Sprintf("-p udp -d %s --dport %s", d, rs.rtpRange(":")), "4 RTP in from anywhere", "ACCEPT")

	w("\n# Nothing else from or to the daemon's SIP port\n")
	rule(fmt.Sprintf("-p udp -s %s --sport %d", d, rs.SIPPort), "SIP/STUN out to a host not listed above", "DROP")
	rule(fmt.Sprintf("-p udp -d %s --dport %d", d, rs.SIPPort), "SIP/STUN in from a host not listed above", "DROP")
	if rs.Policy == PolicyDrop {
		w("\n# Policy drop: nothing else is forwarded\n")
		w("iptables -A %s -m comment --comment %s -j DROP\n", IPTChain, shellQuote("policy drop: not allowed above"))
	} else {
		w("# Everything else returns to FORWARD and the router's own rules.\n")
	}

	if rs.DSCP == 0 {
		w("\n# rtp.dscp is 0: no DSCP marking.\n")
		return b.String()
	}
	w("\n# QoS: DSCP %s on the RTP range, both directions (the daemon also marks\n", dscpLabel(rs.DSCP))
	w("# what it sends; marking here covers the inbound direction and gear that re-marks).\n")
	w("iptables -t mangle -N %s 2>/dev/null || iptables -t mangle -F %s\n", IPTQoSChain, IPTQoSChain)
	w("iptables -t mangle -C FORWARD -j %s 2>/dev/null || iptables -t mangle -A FORWARD -j %s\n", IPTQoSChain, IPTQoSChain)
	set := fmt.Sprintf("--set-dscp %d", rs.DSCP)
	if n := dscpName(rs.DSCP); n != "" {
		set = "--set-dscp-class " + strings.ToUpper(n)
	}
	w("iptables -t mangle -A %s -p udp -s %s --sport %s -m comment --comment %s -j DSCP %s\n",
		IPTQoSChain, d, rs.rtpRange(":"), shellQuote("RTP out: DSCP "+dscpLabel(rs.DSCP)), set)
	w("iptables -t mangle -A %s -p udp -d %s --dport %s -m comment --comment %s -j DSCP %s\n",
		IPTQoSChain, d, rs.rtpRange(":"), shellQuote("RTP in: DSCP "+dscpLabel(rs.DSCP)), set)
	return b.String()
}

// shellQuote single-quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
