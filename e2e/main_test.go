//go:build linux

package e2e

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The main goroutine keeps the main thread for itself, so a goroutine that
// joins a lab namespace (Lab.inNetns) never runs on it: /proc/PID/ns/net of
// the test process stays the root namespace, and the namespace sweep of
// lab.sh never sees the test binary as a lab process.
func init() { runtime.LockOSThread() }

// Labs alive in this process, torn down on SIGINT/SIGTERM (e.g. `timeout`
// around `go test`), when t.Cleanup would never run.
var (
	liveMu   sync.Mutex
	liveLabs = map[*Lab]bool{}
)

func trackLab(l *Lab, alive bool) {
	liveMu.Lock()
	defer liveMu.Unlock()
	if alive {
		liveLabs[l] = true
	} else {
		delete(liveLabs, l)
	}
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lmbuild-")
	if err == nil {
		buildDir = dir
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigc
		fmt.Fprintf(os.Stderr, "e2e: %v: tearing down the labs of this process\n", sig)
		liveMu.Lock()
		labs := make([]*Lab, 0, len(liveLabs))
		for l := range liveLabs {
			labs = append(labs, l)
		}
		liveMu.Unlock()
		var wg sync.WaitGroup
		for _, l := range labs {
			wg.Add(1)
			go func() { defer wg.Done(); l.teardown() }()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
		}
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		os.Exit(2)
	}()
	code := m.Run()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	os.Exit(code)
}
