//go:build linux

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// statusJSON fetches /status from the daemon's admin API.
func (l *Lab) statusJSON(t *testing.T) map[string]any {
	t.Helper()
	body, err := l.AdminGet("/status")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status: %v\n%s", err, body)
	}
	return st
}

// Issue 11 item 1 in the daemon: the NAT self-test runs at start on its
// own sockets and says, in one line and in /status, what the router is
// and what to do. The lab's port-preserving MASQUERADE is a
// port-restricted cone; with --random-fully the same router is symmetric,
// and the advice names the pool's port forward; with that forward in
// place and declared (nat.port_forward) it is reachable and nothing is
// left to do. A router that hairpins is seen to (the others do not).
func TestNATVerdictInTheDaemon(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, mode, verdict, advice string
		works                       bool
		forward, hairpin            bool // router rules (lab.sh port-forward, hairpin)
	}{
		{"preserve", "preserve", "port-restricted cone", "no port forward needed", true, false, false},
		{"random-fully", "random-fully", "symmetric", "inbound media needs a port forward of 55000–56000", false, false, false},
		{"random-fully port forward", "random-fully", "symmetric", "reachable; no further action", true, true, false},
		{"preserve hairpin", "preserve", "port-restricted cone", "no port forward needed", true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			if tc.mode != "preserve" {
				if err := l.SetNATMode(tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			extra := ""
			if tc.forward {
				for _, ports := range []string{"65002", "55000:56000"} {
					if err := l.RouterRule("port-forward", ports); err != nil {
						t.Fatal(err)
					}
				}
				extra = "nat: {port_forward: true}\n"
			}
			if tc.hairpin {
				if err := l.RouterRule("hairpin"); err != nil {
					t.Fatal(err)
				}
			}
			d := l.StartDaemon(DaemonConfig{LogLevel: "info", Extra: extra}.YAML())
			e := d.WaitSeen(t, 30*time.Second, func(e map[string]any) bool {
				m, _ := e["msg"].(string)
				return strings.HasPrefix(m, "NAT: ")
			})
			t.Logf("daemon: %v (mapping %v, filtering %v, hairpin %v)", e["msg"], e["mapping"], e["filtering"], e["hairpin"])
			if msg, _ := e["msg"].(string); !strings.Contains(msg, tc.verdict) || !strings.Contains(msg, tc.advice) {
				t.Errorf("the daemon's NAT line is %q; want %q with %q", msg, tc.verdict, tc.advice)
			}
			hairpin := map[bool]string{true: "yes", false: "no"}[tc.hairpin]
			st := l.statusJSON(t)
			nt, _ := st["nat_test"].(map[string]any)
			if nt == nil || nt["verdict"] != tc.verdict || nt["works"] != tc.works || nt["hairpin"] != hairpin {
				t.Errorf("/status nat_test = %v; want verdict %q, works %v, hairpin %s", nt, tc.verdict, tc.works, hairpin)
			}
			if m, err := l.AdminGet("/metrics"); err != nil {
				t.Errorf("/metrics: %v", err)
			} else if w, want := metricValue(m, "linkmanager_nat_works"), map[bool]float64{true: 1, false: 0}[tc.works]; w != want ||
				!strings.Contains(m, "\nlinkmanager_nat_works ") || metricValue(m, "linkmanager_nat_tests_total") < 1 {
				t.Errorf("linkmanager_nat_works = %v, want %v; nat tests %v", w, want, metricValue(m, "linkmanager_nat_tests_total"))
			}
			// The trunk's address views (issue 11 item 4): behind the
			// symmetric router the registrar and STUN see different ports,
			// and /status says what that means; behind the cone they agree.
			var addrs map[string]any
			deadline := time.Now().Add(30 * time.Second)
			for {
				st = l.statusJSON(t)
				if trunks, _ := st["trunks"].([]any); len(trunks) == 1 {
					tr, _ := trunks[0].(map[string]any)
					addrs, _ = tr["addresses"].(map[string]any)
					if tr["registered"] == true && addrs["registrar_sees"] != nil && addrs["stun_sees"] != nil {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no registered trunk with both address views in /status within 30 s: %v", addrs)
				}
				time.Sleep(200 * time.Millisecond)
			}
			note, _ := addrs["note"].(string)
			t.Logf("trunk addresses: %v", addrs)
			// The top-level public_addr is the provider's view (issue 9
			// item 14), not the STUN server's.
			if st["public_addr"] != addrs["registrar_sees"] {
				t.Errorf("public_addr %v, want what the registrar sees, %v", st["public_addr"], addrs["registrar_sees"])
			}
			if tc.forward && !strings.Contains(note, "declared port forward") {
				t.Errorf("trunk addresses note %q, want it to name the declared port forward", note)
			}
			if symmetric := tc.verdict == "symmetric"; !symmetric && note != "" || symmetric && !strings.Contains(note, "symmetric") {
				t.Errorf("trunk addresses %v: want a note naming a symmetric NAT only behind one", addrs)
			}
			stopDaemon(t, d)
		})
	}
}
