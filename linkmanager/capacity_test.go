package linkmanager

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// TestCapacityWarning: the call that takes the relay's pools to 90 % logs
// one warning naming the fix; calls after it do not repeat it; once a new
// call finds them below 80 %, the warning is over and can come again.
func TestCapacityWarning(t *testing.T) {
	// Below the ephemeral range (32768-60999): a 10-pair pool has no
	// spare pair when another socket on the machine holds one of its ports.
	br, err := rtpbridge.New(rtpbridge.Config{
		LAN: &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 31100, MaxPort: 31119},
		WAN: &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 31200, MaxPort: 31219},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	core, logs := observer.New(zap.InfoLevel)
	m := bridgeMedia{b: br, watch: &capacityWatch{log: zap.New(core)}}
	var open []b2bua.Session
	call := func() {
		t.Helper()
		s, err := m.NewSession("c", rtpbridge.LatchStrict)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
	}
	hangUp := func(n int) {
		for _, s := range open[:n] {
			_ = s.Close()
		}
		open = open[n:]
	}
	defer func() { hangUp(len(open)) }()
	warnings := func() int { return logs.FilterLevelExact(zap.WarnLevel).Len() }

	for range 8 {
		call()
	}
	if n := logs.Len(); n != 0 {
		t.Fatalf("%d log lines at 8 of 10 calls, want none: %v", n, logs.All())
	}
	call() // 9 of 10
	if warnings() != 1 {
		t.Fatalf("%d warnings at 9 of 10 calls, want 1", warnings())
	}
	w := logs.FilterLevelExact(zap.WarnLevel).All()[0]
	if !strings.Contains(w.Message, "90 % used (9 of 10 calls)") || !strings.Contains(w.Message, "rtp.port_min") {
		t.Fatalf("warning %q", w.Message)
	}
	call() // 10 of 10: still the same episode
	hangUp(2)
	call() // 9 of 10 again
	if warnings() != 1 {
		t.Fatalf("%d warnings, want still 1 while use stays above 80 %%", warnings())
	}
	hangUp(3)
	call() // 7 of 10: over
	if got := logs.FilterMessageSnippet("below 80 %").Len(); got != 1 {
		t.Fatalf("%d all-clear lines at 7 of 10, want 1: %v", got, logs.All())
	}
	call()
	call() // 9 of 10: a new episode
	if warnings() != 2 {
		t.Fatalf("%d warnings after a new crossing, want 2", warnings())
	}
}
