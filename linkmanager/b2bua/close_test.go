package b2bua

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Item 7: every transaction has the B2BUA's context and a bounded
// lifetime, so a stop waits for everything it started, and Close ends
// what is pending at once.

// silence makes a never answer method from now on, until the test ends.
func silence(t *testing.T, a *agent, methods ...sip.RequestMethod) {
	quiet := make(chan struct{})
	// Registered after the harness's cleanups, so it runs before them:
	// the handlers return before the stacks close.
	t.Cleanup(func() { close(quiet) })
	for _, m := range methods {
		a.on(m, func(*sip.Request, sip.ServerTransaction) { <-quiet })
	}
}

// lingering names the goroutines still in one of b's methods funcs, for
// a leak check: once Close has returned none may be left. A stack names
// the receiver, so other B2BUAs' goroutines do not count.
func lingering(b *B2BUA, funcs ...string) []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range funcs {
			if strings.Contains(g, fmt.Sprintf("b2bua.(*B2BUA).%s(%p", f, b)) {
				out = append(out, f)
			}
		}
	}
	return out
}

// patient gives BYEs and re-INVITEs an hour: only the base context can
// end them within a test.
func patient(c *Config) { c.byeTimeout, c.reinviteTimeout = time.Hour, time.Hour }

// closeWithin runs Close and fails the test if it does not return.
func closeWithin(t *testing.T, h *harness) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.b.Close()
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Close did not return: a transaction outlived it")
	}
}

// Our own re-INVITE (a readdress) is pending and the provider answers
// nothing, not even the BYE: with transaction timeouts of an hour, only
// the base context can end them. Close returns, the re-INVITE's goroutine
// is gone, the call ended.
func TestCloseEndsOwnPendingReinvite(t *testing.T) {
	h := newHarness(t, patient)
	h.established(h.pbx, h.prov, h.lan.addr, "4930123456", "callee")
	silence(t, h.prov, sip.INVITE, sip.BYE)
	if n := h.b.Readdress(""); n != 1 {
		t.Fatalf("Readdress started %d re-INVITEs, want 1", n)
	}
	h.prov.next(sip.INVITE) // pending from now on
	closeWithin(t, h)
	if g := lingering(h.b, "reinviteWith", "offer", "await", "bye", "hangup"); len(g) != 0 {
		t.Errorf("goroutines left after Close: %v", g)
	}
	if e := h.awaitEnded(); e.Reason != "closed" {
		t.Errorf("call ended with %q, want closed", e.Reason)
	}
}

// A re-INVITE from the PBX is relayed on a sipgo handler's goroutine;
// the provider never answers it. Close still waits for that transaction,
// ends it at once, and the PBX gets a final answer.
func TestCloseEndsRelayedReinvite(t *testing.T) {
	h := newHarness(t, patient)
	u, _ := h.established(h.pbx, h.prov, h.lan.addr, "4930123456", "callee")
	silence(t, h.prov, sip.INVITE, sip.BYE)
	res := make(chan *sip.Response, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		r, _ := h.pbx.client.Do(ctx, u.request(sip.INVITE, 20, sdpOf(pbxIP, 20002)))
		res <- r
	}()
	h.prov.next(sip.INVITE) // the relayed re-INVITE, pending
	closeWithin(t, h)
	if g := lingering(h.b, "relay", "await", "bye", "hangup"); len(g) != 0 {
		t.Errorf("goroutines left after Close: %v", g)
	}
	if r := <-res; r == nil || r.StatusCode < 300 {
		t.Errorf("the PBX's re-INVITE got %v, want a final refusal", r)
	}
	h.awaitEnded()
}

// Shutdown with a peer that answers: the BYEs are sent and answered
// before it returns nil. With one that never answers, it returns ctx's
// error once ctx ends, having Closed.
func TestShutdown(t *testing.T) {
	t.Run("answered", func(t *testing.T) {
		h := newHarness(t, patient)
		h.established(h.pbx, h.prov, h.lan.addr, "4930123456", "callee")
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := h.b.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
		h.prov.next(sip.BYE)
		h.pbx.next(sip.BYE)
		if e := h.awaitEnded(); e.Reason != "shutdown" {
			t.Errorf("call ended with %q, want shutdown", e.Reason)
		}
	})
	t.Run("unanswered", func(t *testing.T) {
		h := newHarness(t, patient)
		h.established(h.pbx, h.prov, h.lan.addr, "4930123456", "callee")
		silence(t, h.prov, sip.BYE)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- h.b.Shutdown(ctx) }()
		h.prov.next(sip.BYE) // pending from now on
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Shutdown = %v, want context.Canceled", err)
			}
		case <-time.After(wait):
			t.Fatal("Shutdown did not return once its context ended")
		}
		if g := lingering(h.b, "bye", "hangup"); len(g) != 0 {
			t.Errorf("goroutines left after Shutdown: %v", g)
		}
	})
}
