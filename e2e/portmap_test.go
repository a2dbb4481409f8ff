//go:build linux

package e2e

// Router-granted port mappings (issue 11 item 3). The lab router runs
// MASQUERADE --random-fully (symmetric NAT: the relay's public port is
// random per destination) and Debian's miniupnpd, which grants NAT-PMP and
// UPnP IGD mappings. sipp at the phone does not latch: it sends its RTP to
// the SDP's address and nowhere else. With nat.portmap auto the daemon maps
// the call's relay pair before its SDP goes out and the phone's audio
// reaches the PBX; with off it is dropped at the router, as before
// (nat-findings 7).

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
)

// StartMiniUPnPd runs miniupnpd in the router namespace (lab.sh
// run-miniupnpd) and waits until it has passed its STUN check and serves
// UPnP IGD and, unless mode is "upnp-only", PCP and NAT-PMP ("no-pcp":
// PCP requests are dropped on the way, a NAT-PMP-only router). It is
// stopped by PID on cleanup.
func (l *Lab) StartMiniUPnPd(t *testing.T, mode string) *Proc {
	t.Helper()
	args := []string{l.script, "run-miniupnpd", l.Prefix, l.Dir}
	ready := []string{"Port forwarding is now enabled", "HTTP listening on port", "Listening for NAT-PMP/PCP traffic"}
	if mode != "" {
		args = append(args, mode)
	}
	if mode == "upnp-only" {
		ready = ready[:2]
	}
	p := l.startRoot("miniupnpd", "miniupnpd.log", args...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(p.LogPath)
		log := string(b)
		if strings.Contains(log, "Port forwarding is now disabled") {
			t.Fatalf("miniupnpd refuses to map (its STUN check failed):\n%s", tail(log, 20))
		}
		if containsAll(log, ready...) {
			return p
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("miniupnpd not serving (exited: %v):\n%s", p.Exited(), tail(log, 20))
		}
		select {
		case <-p.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// checkRouterRestart restarts miniupnpd, which forgets every mapping and
// starts a new PCP epoch. The daemon's next request (a call's pair) gets an
// answer whose epoch went back (RFC 6887 §8.5), and it maps 65002 again at
// once instead of at its renewal an hour later. It returns the new
// miniupnpd.
func checkRouterRestart(t *testing.T, l *Lab, d *Daemon, mu *Proc) *Proc {
	t.Helper()
	mu.Stop(5 * time.Second)
	if err := os.Rename(mu.LogPath, mu.LogPath+".1"); err != nil { // the new one's readiness is read from a new log
		t.Fatal(err)
	}
	// miniupnpd 2.3.1 leaves its rules when it stops; a rebooted router
	// has none.
	for _, c := range [][]string{{"nat", "MINIUPNPD"}, {"nat", "MINIUPNPD-POSTROUTING"}, {"filter", "MINIUPNPD"}, {"mangle", "MINIUPNPD"}} {
		if out, err := l.Exec(NSRouter, "iptables-legacy", "-t", c[0], "-F", c[1]); err != nil {
			t.Fatalf("flush %v: %v: %s", c, err, out)
		}
	}
	mu = l.StartMiniUPnPd(t, "")
	r := placeCall(t, l, outbound, "uac-cancel.xml", "uas-cancel.xml", 0, 0)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 487)
	d.WaitSeen(t, 10*time.Second, Msg("the router lost its port mappings (restarted?); mapping them again"))
	if b, _ := os.ReadFile(mu.LogPath); !pcpMapped65002.Match(b) {
		t.Errorf("the restarted miniupnpd got no PCP MAP of 65002:\n%s", tail(string(b), 20))
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if r := routerRedirects(t, l); len(r) == 1 && strings.Contains(r[0], "--dport 65002") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the router's restart it redirects %q, want 65002 again (and the cancelled call's pair gone)", routerRedirects(t, l))
		}
	}
	return mu
}

var pcpMapped65002 = regexp.MustCompile(`PCP MAP: .* 65002->`)

// checkForwardedAudio is checkTwoWay through a static port forward under
// --random-fully: the forward rewrites only what comes in, so the relay's
// pinhole packet, when it leaves before the phone's first packet (an
// inbound call: the relay knows the phone's SDP from its INVITE), goes out
// from a random public port; the phone, which does not latch, ignores it.
// The rest of the phone's audio must come from the SDP's pool port.
func checkForwardedAudio(t *testing.T, r *CallRun, dir callDir) {
	t.Helper()
	for _, at := range []Endpoint{dir.caller, dir.callee} {
		if at.NS != NSPhone {
			r.CheckAudio(t, relayAudio(at))
			continue
		}
		pool, other := 0, 0
		for a, n := range BySource(Select(r.Pkts[NSPhone], To(PhoneIP), RTPWithPT(PTPCMA))) {
			if a.Addr().String() == WANIP1 && int(a.Port()) >= PoolMin && int(a.Port()) <= PoolMax {
				pool += n
			} else {
				other += n
			}
		}
		t.Logf("the phone got %d RTP packets from the pool's forwarded port, %d from elsewhere", pool, other)
		if pool < MinDelivered(G711Packets) || other > 2 {
			t.Errorf("the phone got %d RTP packets from %s on a pool port and %d from elsewhere; want %d or more, and at most the pinhole's from elsewhere",
				pool, WANIP1, other, MinDelivered(G711Packets))
		}
	}
}

// routerGrants is which protocols miniupnpd's log shows mapping requests
// of.
func routerGrants(log string) []string {
	var by []string
	for _, p := range []struct{ name, line string }{
		{"pcp", "PCP MAP: "},
		{"nat-pmp", "NAT-PMP port mapping request"},
		{"upnp", "AddPortMapping"},
	} {
		if strings.Contains(log, p.line) {
			by = append(by, p.name)
		}
	}
	return by
}

// routerRedirects is the DNAT rules miniupnpd holds in the router.
func routerRedirects(t *testing.T, l *Lab) []string {
	t.Helper()
	out, err := l.Exec(NSRouter, "iptables-legacy", "-t", "nat", "-S", "MINIUPNPD")
	if err != nil {
		t.Fatalf("iptables-legacy: %v: %s", err, out)
	}
	var rules []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "DNAT") {
			rules = append(rules, line)
		}
	}
	return rules
}

// labStatus is the daemon's /status.
func labStatus(t *testing.T, l *Lab) admin.Status {
	t.Helper()
	body, err := l.AdminGet("/status")
	if err != nil {
		t.Fatalf("/status: %v", err)
	}
	var st admin.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v: %s", err, body)
	}
	return st
}

// TestPortMapSymmetricNAT: through a symmetric NAT, a call to a phone that
// does not latch has two-way audio when the router grants mappings: by
// PCP against miniupnpd as it is (it speaks PCP and NAT-PMP on one port,
// and PCP is tried first), by NAT-PMP when the router drops PCP, by UPnP
// IGD with both off at the router; the PBX hears nothing from the phone
// without them (the control). The daemon deletes its mappings when it
// stops.
func TestPortMapSymmetricNAT(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, portmap string
		router        string // miniupnpd's mode (lab.sh run-miniupnpd)
		proto         string // "": nothing mapped
		dir           callDir
	}{
		{"pcp", "auto", "", "pcp", outbound},
		{"nat-pmp inbound", "auto", "no-pcp", "nat-pmp", inbound},
		{"upnp", "auto", "upnp-only", "upnp", outbound},
		{"off", "off", "", "", outbound},
		// No miniupnpd: a static forward of 65002 and the pool, declared.
		{"port forward", "forward", "-", "", inbound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mapped, forward := tc.proto != "", tc.portmap == "forward"
			l := newLab(t)
			if err := l.SetNATMode(NATRandomFully); err != nil {
				t.Fatal(err)
			}
			var mu *Proc
			if tc.router != "-" {
				mu = l.StartMiniUPnPd(t, tc.router)
			}
			extra := "nat: {portmap: " + tc.portmap + "}\n"
			if forward {
				for _, ports := range []string{"65002", "55000:56000"} {
					if err := l.RouterRule("port-forward", ports); err != nil {
						t.Fatal(err)
					}
				}
				extra = "nat: {port_forward: true}\n"
			}
			d := l.StartDaemon(DaemonConfig{Extra: extra}.YAML())
			d.WaitLog(t, regTimeout, Msg("registered", "trunk", "provider"))
			if mapped {
				d.WaitSeen(t, 30*time.Second, Msg("port mapped", "port", "65002"))
				st := labStatus(t, l)
				if pm := st.PortMap; pm == nil || pm.Protocol != tc.proto || pm.External != WANIP1 ||
					len(pm.Mappings) != 1 || pm.Mappings[0].External != WANIP1+":65002" {
					t.Fatalf("/status portmap = %+v, want %s, %s, 65002 mapped", st.PortMap, tc.proto, WANIP1)
				}
				// The router's own word for which protocol it granted by.
				b, _ := os.ReadFile(mu.LogPath)
				if got := routerGrants(string(b)); !slices.Equal(got, []string{tc.proto}) {
					t.Fatalf("miniupnpd granted by %v, want only %s:\n%s", got, tc.proto, tail(string(b), 20))
				}
			} else if st := labStatus(t, l); st.PortMap != nil {
				t.Fatalf("/status portmap with portmap off = %+v, want none", st.PortMap)
			}

			r := placeCall(t, l, tc.dir, "uac-pcap.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
			defer r.ExplainOnFailure(t)
			if a := r.Caller.Answer(); a != 200 {
				t.Fatalf("the caller's INVITE was answered %d, want 200", a)
			}
			sent := len(Select(r.Pkts[NSPhone], From(PhoneIP), RTPWithPT(PTPCMA)))
			if mapped || forward {
				if mapped {
					e := d.WaitSeen(t, 5*time.Second, Msg("call's RTP pair mapped"))
					t.Logf("the call's pair %v was mapped to %v in %v", e["port"], e["external"], e["took"])
				}
				requireCompleted(t, r, 200)
				if forward {
					checkForwardedAudio(t, r, tc.dir)
				} else {
					checkTwoWay(t, r, tc.dir, 1)
				}
				checkLegs(t, r)
			} else {
				// Today's failure: the phone's RTP dies at the router, the
				// daemon sees no media from the provider leg and tries its
				// NAT-race repair (a re-INVITE to a new port, which this
				// sipp scenario does not take, so it stops sending early).
				heard := len(Select(r.Pkts[NSPBX], To(PBXIP), RTPWithPT(PTPCMA)))
				if sent == 0 || heard != 0 {
					t.Errorf("without a mapping the PBX heard %d of the phone's %d RTP packets; want 0 of some (the symmetric NAT drops them)", heard, sent)
				}
				d.WaitSeen(t, 10*time.Second, Msg("no media from leg B while we send"))
			}
			if mapped {
				// The call's pair goes with the call (its BYE may still be
				// in flight when sipp is done); only 65002 stays.
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
					pm := labStatus(t, l).PortMap
					if pm != nil && len(pm.Mappings) == 1 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("/status portmap after the call = %+v, want only 65002", pm)
					}
				}
			}
			if mapped {
				if r := routerRedirects(t, l); len(r) != 1 || !strings.Contains(r[0], "--dport 65002") {
					t.Errorf("the router redirects %q, want only 65002", r)
				}
			}
			if tc.proto == "pcp" {
				mu = checkRouterRestart(t, l, d, mu)
			}
			stopDaemon(t, d)
			if mu == nil {
				return
			}
			if r := routerRedirects(t, l); len(r) != 0 {
				t.Errorf("after the daemon stopped the router still redirects %q", r)
			}
		})
	}
}
