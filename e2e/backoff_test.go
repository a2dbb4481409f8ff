//go:build linux

package e2e

import (
	"testing"
	"time"
)

// TestRecoveryCutsBackoff (issue 9 item 12): during a WAN outage the
// daemon's REGISTERs time out and its back-off grows; once measured, the
// registrar answered 8.5 s after a 120 s outage ended, but the REGISTER
// waited for its back-off timer (52.7 s). A sign of life (a keepalive or
// STUN answered) must cut the back-off short.
func TestRecoveryCutsBackoff(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	d, _ := startRegistered(t, l, DaemonConfig{Interval: "10s", LogLevel: "info"})
	if _, err := l.Exec(NSRouter, "iptables", "-I", "FORWARD", "1", "-i", "wan", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Exec(NSRouter, "iptables", "-D", "FORWARD", "-i", "wan", "-j", "DROP") })
	// The outage: long enough for the back-off to grow past the
	// keepalive interval several times over.
	d.WaitLog(t, 60*time.Second, func(e map[string]any) bool {
		m, _ := e["msg"].(string)
		return m == "registration failed" || m == "keepalive OPTIONS unanswered"
	})
	time.Sleep(70 * time.Second) // the scenario's length, not a wait for an event
	if _, err := l.Exec(NSRouter, "iptables", "-D", "FORWARD", "-i", "wan", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	e := d.WaitLog(t, 60*time.Second, Msg("registered", "trunk", "provider"))
	took := time.Since(back)
	t.Logf("registered %v after the link came back: %v", took.Round(time.Millisecond), e)
	// A keepalive or STUN answer comes within the interval (10 s); the
	// REGISTER follows it. The bound allows a busy machine.
	if took > 20*time.Second {
		t.Errorf("registered %v after the link came back, want the back-off cut short (<= 20 s)", took)
	}
	stopDaemon(t, d)
}
