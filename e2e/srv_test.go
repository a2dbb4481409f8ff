//go:build linux

package e2e

// The provider's registrar as an SRV name (issue 8 item 9): the daemon
// uses the targets by priority, fails over when the primary goes silent
// and returns to it after its hold-down.

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/trunk"
)

// Issue 8 item 9: registrar sip.provider.test without a port, resolved
// by the lab's DNS to kam1 (.50, priority 10) and kam2 (.51, priority 20).
// The daemon registers at kam1. kam1's traffic is dropped in the provider
// namespace: the next refresh (refresh_max 30 s) times out there and the
// daemon registers at kam2, where an inbound call from the phone reaches
// the PBX with two-way audio. kam1 answers again: once its hold-down is
// over, the next refresh registers there again.
func TestTrunkSRVFailover(t *testing.T) {
	t.Parallel()
	// Registered before the lab's own cleanup, so it runs after it: the
	// daemon namespace's resolv.conf goes with the lab.
	var l *Lab
	t.Cleanup(func() {
		if l == nil {
			return
		}
		if _, err := os.Stat(filepath.Join("/etc/netns", l.NS(NSLM))); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/etc/netns/%s is still there after the lab's cleanup (%v)", l.NS(NSLM), err)
		}
	})
	l = newLab(t)
	l.StartDNS()
	l.StartSecondRegistrar()
	start := time.Now()
	// refresh_max at its minimum: the daemon REGISTERs every 30 s, and a
	// REGISTER that gets no answer gives up after 10 s (the trunk's
	// registerTimeout). The waits below add 20 s of slack for a busy machine.
	const refresh, noAnswer, slack = 30 * time.Second, 10 * time.Second, 20 * time.Second
	d := l.StartDaemon(DaemonConfig{LogLevel: "info", Registrar: SIPDomain, Trunk: "refresh_max: 30s"}.YAML())
	d.WaitLog(t, regTimeout, Msg("registered", "trunk", "provider", "registrar", ProviderAddr))
	t.Logf("registered at the primary %s after %v", ProviderAddr, time.Since(start).Round(time.Millisecond))

	// The primary goes silent: everything to its SIP port is dropped.
	rule := []string{"INPUT", "-d", ProviderIP, "-p", "udp", "--dport", "5060", "-j", "DROP"}
	if out, err := l.Exec(NSProvider, append([]string{"iptables", "-I"}, rule...)...); err != nil {
		t.Fatalf("drop the primary's traffic: %v\n%s", err, out)
	}
	down := time.Now()
	d.WaitLog(t, refresh+noAnswer+slack, Msg("registered", "trunk", "provider", "registrar", Provider2Addr))
	failed := time.Now() // the failed REGISTER's hold-down started just before
	t.Logf("registered at the secondary %s %v after the primary went silent", Provider2Addr, failed.Sub(down).Round(time.Millisecond))

	viaSecond := PhoneCaller
	viaSecond.Target = Provider2Addr
	dir := callDir{"inbound through the second registrar", viaSecond, PBXCallee}
	r := placeCall(t, l, dir, "uac-pcap.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, dir, 1)

	// The primary answers again; it is tried first once its hold-down
	// (from the failed REGISTER) is over.
	if out, err := l.Exec(NSProvider, append([]string{"iptables", "-D"}, rule...)...); err != nil {
		t.Fatalf("let the primary's traffic through: %v\n%s", err, out)
	}
	d.WaitLog(t, trunk.HoldDown+refresh+slack-time.Since(failed),
		Msg("registered", "trunk", "provider", "registrar", ProviderAddr))
	t.Logf("registered at the primary again %v after the failover (hold-down %v, refresh_max 30s)", time.Since(failed).Round(time.Millisecond), trunk.HoldDown)
	stopDaemon(t, d)
}
