//go:build linux

package firewall

// The generated rules against the real tools: nft -c and nft -f, and the
// iptables script run with sh, each inside a throwaway network namespace
// this test creates and deletes (nothing touches the root namespace).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needRoot skips without root, except under CI=true, where it fails.
func needRoot(t *testing.T, tools ...string) {
	t.Helper()
	ci := os.Getenv("CI") == "true"
	if os.Geteuid() != 0 {
		if ci {
			t.Fatal("needs root (CI=true): a network namespace for nft and iptables")
		}
		t.Skip("needs root: a network namespace for nft and iptables")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if ci {
				t.Fatalf("%s not installed (CI=true)", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
}

// throwawayNS creates a network namespace that is deleted when the test ends.
func throwawayNS(t *testing.T) string {
	t.Helper()
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "lmfw" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// inNS runs argv inside ns (bounded) with extra environment.
func inNS(ns string, env []string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// variants are the rule sets every loader test runs.
func variants(t *testing.T) map[string]*Ruleset {
	withDSCP := func(v string) string {
		return strings.Replace(labConfig, "rtp: {port_min: 55000, port_max: 56000}", "rtp: {port_min: 55000, port_max: 56000, dscp: "+v+"}", 1)
	}
	return map[string]*Ruleset{
		"full":        build(t, fullConfig, fullInput()),
		"lab-drop":    build(t, labConfig, Input{Policy: PolicyDrop}),
		"dscp-af41":   build(t, withDSCP("34"), Input{}),
		"dscp-44":     build(t, withDSCP("44"), Input{}),
		"dscp-0":      build(t, withDSCP("0"), Input{}),
		"unresolved":  build(t, fullConfig, Input{}),
		"--address":   build(t, strings.Replace(labConfig, "192.168.100.2:65002", "0.0.0.0:65002", 1), Input{Address: netip.MustParseAddr("10.0.0.9")}),
		"placeholder": build(t, strings.Replace(labConfig, "192.168.100.2:65002", "0.0.0.0:65002", 1), Input{}),
	}
}

// countRules counts the generated rules: nft lines with a comment "...",
// or iptables -A commands.
func countRules(s, marker string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "#") && strings.Contains(l, marker) {
			n++
		}
	}
	return n
}

func TestNFTablesLoads(t *testing.T) {
	needRoot(t, "ip", "nft")
	ns := throwawayNS(t)
	for name, rs := range variants(t) {
		t.Run(name, func(t *testing.T) {
			text := rs.NFTables()
			file := writeTemp(t, name+".nft", text)
			out, err := inNS(ns, nil, "nft", "-c", "-f", file)
			if name == "placeholder" {
				// Refused until the admin sets LAN_IP; then it loads.
				if err == nil {
					t.Fatalf("nft -c accepted the placeholder output")
				}
				if !strings.Contains(out, Placeholder) {
					t.Errorf("nft's complaint does not name %s: %s", Placeholder, out)
				}
				text = strings.Replace(text, "# define LAN_IP = 192.168.1.10", "define LAN_IP = 192.168.1.10", 1)
				file = writeTemp(t, name+"-set.nft", text)
				out, err = inNS(ns, nil, "nft", "-c", "-f", file)
			}
			if err != nil {
				t.Fatalf("nft -c -f: %v\n%s\n%s", err, out, text)
			}
			// Load it for real, twice: the second load replaces the table.
			for i := range 2 {
				if out, err := inNS(ns, nil, "nft", "-f", file); err != nil {
					t.Fatalf("nft -f (load %d): %v\n%s", i+1, err, out)
				}
			}
			listed, err := inNS(ns, nil, "nft", "list", "table", "inet", "linkmanager")
			if err != nil {
				t.Fatalf("nft list: %v\n%s", err, listed)
			}
			if got, want := countRules(listed, `comment "`), countRules(text, `comment "`); got != want || want == 0 {
				t.Errorf("loaded %d rules, generated %d:\n%s", got, want, listed)
			}
			if hasQoS := strings.Contains(listed, "chain qos"); hasQoS != (rs.DSCP != 0) {
				t.Errorf("qos chain loaded: %v, rtp.dscp %d", hasQoS, rs.DSCP)
			}
			if _, err := inNS(ns, nil, "nft", "delete", "table", "inet", "linkmanager"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestIPTablesScriptRuns(t *testing.T) {
	needRoot(t, "ip", "iptables", "sh")
	for name, rs := range variants(t) {
		t.Run(name, func(t *testing.T) {
			ns := throwawayNS(t)
			text := rs.IPTables()
			file := writeTemp(t, name+".sh", text)
			var env []string
			if name == "placeholder" {
				out, err := inNS(ns, nil, "sh", file)
				if err == nil || !strings.Contains(out, "set LAN_IP") {
					t.Fatalf("the script ran without LAN_IP set: %v\n%s", err, out)
				}
				env = []string{"LAN_IP=192.168.1.10"}
			}
			// Twice: the second run refills the chains instead of adding to them.
			for i := range 2 {
				if out, err := inNS(ns, env, "sh", file); err != nil {
					t.Fatalf("sh (run %d): %v\n%s\n%s", i+1, err, out, text)
				}
			}
			chain, err := inNS(ns, nil, "iptables", "-S", IPTChain)
			if err != nil {
				t.Fatalf("iptables -S: %v\n%s", err, chain)
			}
			if got, want := countRules(chain, "-A "+IPTChain), countRules(text, "iptables -A "+IPTChain); got != want || want == 0 {
				t.Errorf("chain has %d rules, script adds %d:\n%s", got, want, chain)
			}
			fwd, _ := inNS(ns, nil, "iptables", "-S", "FORWARD")
			if n := strings.Count(fwd, "-j "+IPTChain); n != 1 {
				t.Errorf("FORWARD jumps to %s %d times, want 1:\n%s", IPTChain, n, fwd)
			}
			qos, err := inNS(ns, nil, "iptables", "-t", "mangle", "-S", IPTQoSChain)
			switch {
			case rs.DSCP == 0 && err == nil:
				t.Errorf("rtp.dscp 0 but a QoS chain exists:\n%s", qos)
			case rs.DSCP != 0 && (err != nil || countRules(qos, "-j DSCP") != 2):
				t.Errorf("QoS chain: %v\n%s", err, qos)
			}
		})
	}
}
