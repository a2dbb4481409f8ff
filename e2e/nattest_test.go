//go:build linux

package e2e

// `linkmanager nat-test` (issue 11, item 1) through the lab router: the
// default port-preserving MASQUERADE is a port-restricted cone that needs
// no port forward, --random-fully is symmetric and gets the port-forward
// advice; with plain STUN servers the test says it could not test
// filtering and compares two servers.

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	natVerdictCone      = "NAT: port-restricted cone: works; no port forward needed\n"
	natVerdictSymmetric = "NAT: symmetric: inbound media needs a port forward of 55000–56000 or a router that offers PCP/UPnP; run `linkmanager firewall`\n"
)

// natTest runs `linkmanager nat-test` in the lm namespace with the lab
// config and returns its output; it must exit 0.
func natTest(t *testing.T, l *Lab, cfgPath string, args ...string) string {
	t.Helper()
	if cfgPath == "" {
		cfgPath = filepath.Join(l.Dir, "nattest.yaml")
		if err := os.WriteFile(cfgPath, []byte(DaemonConfig{}.YAML()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := runCommand(t, l, append([]string{"nat-test", "--config", cfgPath}, args...)...)
	t.Logf("nat-test:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("nat-test exited %d", code)
	}
	// Bounded: the filtering probes' 3 s, not a retransmit schedule's 39 s.
	m := natTook.FindStringSubmatch(out)
	if m == nil {
		t.Fatal("no 'test took' line")
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d > 4*time.Second {
		t.Errorf("the test took %s", m[1])
	}
	return out
}

var natTook = regexp.MustCompile(`\ntest took (\S+)\n`)

func wantLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("output lacks %q", l)
		}
	}
}

var natPublic = regexp.MustCompile(`public address: ` + regexp.QuoteMeta(WANIP1) + `:(\d+)\n`)

// (a) The lab's default NAT, with the daemon registered and running: a
// port-restricted cone, no port forward needed. The test runs beside the
// daemon on sockets of its own and leaves the trunk's mapping alone.
func TestNATTestLabPortRestrictedCone(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	d, _ := startRegistered(t, l, DaemonConfig{})
	out := natTest(t, l, d.ConfigPath)
	wantLines(t, out,
		"RFC 5780 server: "+STUN1Addr+" (answers on "+STUN1Addr+", other address "+STUN2IP+":3479)\n",
		"mapping:     endpoint-independent\n",
		"filtering:   address-and-port-dependent\n",
		"hairpinning: no\n",
		natVerdictCone)
	m := natPublic.FindStringSubmatch(out)
	if m == nil || m[1] == "65002" {
		t.Errorf("public address %v: want %s on the test socket's own (preserved, ephemeral) port", m, WANIP1)
	}
	// The trunk's mapping is untouched: the provider still has
	// 198.51.100.1:65002, the keeper saw no change, and an inbound call
	// still reaches the daemon.
	if _, err := l.WaitKamailioContact(TrunkUser, 5*time.Second, func(c ULContact) bool { return c.Received == daemonPublic }); err != nil {
		t.Error(err)
	}
	for _, e := range d.Entries() {
		if e["msg"] == "public address changed" {
			t.Errorf("the daemon's public address changed during the NAT test: %v", e)
		}
	}
	// Why the test needs sockets of its own: the router dropped the
	// answers from the server's other port and address, and each left an
	// UNREPLIED conntrack entry that would move the next mapping of that
	// port (nat-findings 3). They are all on the filtering socket's port.
	sm := natSockets.FindStringSubmatch(out)
	if sm == nil {
		t.Fatal("no test sockets line")
	}
	es, err := l.ConntrackList()
	if err != nil {
		t.Fatal(err)
	}
	// The daemon runs the same test at start on sockets of its own, so
	// its dropped answers are there too, on other ephemeral ports: what
	// matters is that none is on 65002 and that this run's are all on its
	// filtering socket.
	poison := 0
	for _, e := range es {
		if !e.Unreplied || (e.Orig.Src != STUN1IP && e.Orig.Src != STUN2IP) {
			continue
		}
		switch strconv.Itoa(e.Orig.Dport) {
		case sm[2]:
			poison++
		case sm[1], strconv.Itoa(DaemonSIPPort):
			t.Errorf("a dropped STUN answer to port %d, not the filtering socket's %s: %s", e.Orig.Dport, sm[2], e.Raw)
		}
	}
	if poison != 2 {
		t.Errorf("%d dropped answers on the filtering socket's port in conntrack, want filtering tests II and III's", poison)
	}
	if code := d.Stop(); code != 0 {
		t.Errorf("daemon exited %d", code)
	}
}

var natSockets = regexp.MustCompile(`\(test sockets ` + regexp.QuoteMeta(DaemonIP) + `:(\d+), ` + regexp.QuoteMeta(DaemonIP) + `:(\d+)\)`)

// (b) MASQUERADE --random-fully: a new public port per destination, so
// symmetric, with the port-forward advice for the configured RTP pool, or,
// with that forward declared, reachable.
func TestNATTestLabSymmetric(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	if err := l.SetNATMode(NATRandomFully); err != nil {
		t.Fatal(err)
	}
	out := natTest(t, l, "")
	wantLines(t, out,
		"RFC 5780 server: "+STUN1Addr,
		"mapping:     address-and-port-dependent\n",
		"filtering:   address-and-port-dependent\n",
		natVerdictSymmetric)
	// With a forward of the pool declared (nat.port_forward), the same
	// router is reachable: nothing left to do.
	fwd := filepath.Join(l.Dir, "nattest-forward.yaml")
	if err := os.WriteFile(fwd, []byte(DaemonConfig{Extra: "nat: {port_forward: true}\n"}.YAML()), 0o600); err != nil {
		t.Fatal(err)
	}
	wantLines(t, natTest(t, l, fwd),
		"NAT: symmetric, with the declared port forward of the SIP port and 55000–56000 (nat.port_forward): reachable; no further action\n")
	// The control: back to port-preserving, the same lab is a cone again.
	if err := l.SetNATMode(NATPreserve); err != nil {
		t.Fatal(err)
	}
	wantLines(t, natTest(t, l, ""), natVerdictCone)
}

// Plain STUN servers (no OTHER-ADDRESS): the test says so, compares the
// public address two servers see as the daemon does, and leaves
// filtering untested.
func TestNATTestLabWithoutRFC5780(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, mode, mapping, verdict string
	}{
		{"preserve", NATPreserve, "endpoint-independent", "NAT: cone (filtering not tested: no STUN server in stun.servers offers RFC 5780, none sent OTHER-ADDRESS; mapping compared between two servers): works; no port forward needed\n"},
		{"random-fully", NATRandomFully, "endpoint-dependent", "NAT: symmetric: inbound media needs a port forward of 55000–56000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t, WithoutRFC5780())
			if err := l.SetNATMode(tc.mode); err != nil {
				t.Fatal(err)
			}
			out := natTest(t, l, "")
			wantLines(t, out,
				"RFC 5780 server: none (no OTHER-ADDRESS in any server's answer)\n",
				"  "+STUN1Addr+" sees "+WANIP1+":",
				"  "+STUN2Addr+" sees "+WANIP1+":",
				"mapping:     "+tc.mapping+"\n",
				"filtering:   unknown\n",
				tc.verdict)
		})
	}
}

var natLifetime = regexp.MustCompile(`\nbinding lifetime: (\S+)–(\S+); a keepalive every (\S+) at most keeps a mapping \((.*)\)\n`)

// The measured binding lifetime is the router's conntrack UDP timeout
// (±2 s), and the advice for stun.interval follows it: 10 s is fine with
// the lab's 20 s; after the timeout is cut to 12 s it is too long.
func TestNATTestLabBindingLifetime(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	for _, tc := range []struct {
		timeout time.Duration
		advice  string
	}{
		{NATUDPTimeout, "stun.interval 10s: fine"},
		{12 * time.Second, "stun.interval 10s is too long: set it to 8s or less"},
	} {
		if tc.timeout != NATUDPTimeout {
			secs := strconv.Itoa(int(tc.timeout / time.Second))
			for _, k := range []string{"net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"} {
				if out, err := l.Exec(NSRouter, "sysctl", "-qw", k+"="+secs); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			}
		}
		out := natTest(t, l, "", "--lifetime", "--lifetime-max", "40s")
		m := natLifetime.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("timeout %v: no binding lifetime line", tc.timeout)
		}
		alive, err1 := time.ParseDuration(m[1])
		expired, err2 := time.ParseDuration(m[2])
		if err1 != nil || err2 != nil || expired-alive != 2*time.Second ||
			expired < tc.timeout-2*time.Second || expired > tc.timeout+2*time.Second {
			t.Errorf("timeout %v: measured %s–%s, want within ±2s of the timeout", tc.timeout, m[1], m[2])
		}
		if m[4] != tc.advice {
			t.Errorf("timeout %v: advice %q, want %q", tc.timeout, m[4], tc.advice)
		}
	}
}
