package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock: After's channels fire when advance passes their deadline.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), ch})
	return ch
}

// awaitTimer waits until Run has armed a timer for at (Run is idle then),
// so advancing the clock cannot race with the loop.
func (c *fakeClock) awaitTimer(t *testing.T, at time.Time) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, tm := range c.timers {
			if tm.at.Equal(at) {
				c.mu.Unlock()
				return
			}
		}
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("Run armed no timer for t0+%s", at.Sub(t0))
}

// advanceTo waits for Run's timer at t0+d and moves the clock there.
func (c *fakeClock) advanceTo(t *testing.T, d time.Duration) {
	t.Helper()
	c.awaitTimer(t, t0.Add(d))
	c.advance(t0.Add(d).Sub(c.Now()))
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			keep = append(keep, t)
		} else {
			t.ch <- c.now
		}
	}
	c.timers = keep
}

// fakeProto records every request on calls and grants life, or fails
// while fail is set.
type fakeProto struct {
	calls chan string
	mu    sync.Mutex
	fail  bool
	life  time.Duration
	shift uint16 // granted = wish + shift
}

func newFakeProto(life time.Duration) *fakeProto {
	return &fakeProto{calls: make(chan string, 100), life: life}
}

func (*fakeProto) Name() string { return "fake" }

func (f *fakeProto) ExternalAddr(context.Context) (netip.Addr, error) {
	return netip.MustParseAddr("203.0.113.7"), nil
}

func (f *fakeProto) Map(_ context.Context, internal, external uint16, _ time.Duration) (uint16, time.Duration, error) {
	f.mu.Lock()
	fail, life, shift := f.fail, f.life, f.shift
	f.mu.Unlock()
	f.calls <- fmt.Sprintf("map %d->%d", internal, external)
	if fail {
		return 0, 0, errors.New("gateway gone")
	}
	return external + shift, life, nil
}

func (f *fakeProto) Unmap(_ context.Context, internal, external uint16) error {
	f.calls <- fmt.Sprintf("unmap %d->%d", internal, external)
	return nil
}

func (f *fakeProto) set(fn func(*fakeProto)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// await fails unless the next request is want.
func (f *fakeProto) await(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-f.calls:
		if got != want {
			t.Fatalf("request %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no request; want %q", want)
	}
}

// quiet fails if a request is already queued.
func (f *fakeProto) quiet(t *testing.T) {
	t.Helper()
	select {
	case got := <-f.calls:
		t.Fatalf("unexpected request %q", got)
	default:
	}
}

type harness struct {
	m     *Mapper
	clk   *fakeClock
	proto *fakeProto
	probe chan bool // the next probe's answer
	done  chan error
	stop  context.CancelFunc
}

// startMapper runs a Mapper whose gateway is h.proto (as wrap makes it, if
// given).
func startMapper(t *testing.T, life time.Duration, probeOK bool, wrap ...func(*fakeProto) Protocol) *harness {
	t.Helper()
	h := &harness{clk: &fakeClock{now: t0}, proto: newFakeProto(life), probe: make(chan bool, 10), done: make(chan error, 1)}
	h.probe <- probeOK
	var gw Protocol = h.proto
	for _, w := range wrap {
		gw = w(h.proto)
	}
	m, err := New(Config{
		Gateway: netip.MustParseAddr("192.168.100.1"), Local: netip.MustParseAddr("192.168.100.2"),
		Ports: []uint16{65002}, Lifetime: life, Reprobe: time.Minute,
		Probe: func(context.Context, netip.Addr, netip.Addr, time.Duration) (Protocol, error) {
			if <-h.probe {
				return gw, nil
			}
			return nil, ErrNoGateway
		},
		Now: h.clk.Now, After: h.clk.After,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

// TestMapperLifecycle: the SIP port is mapped once the gateway answers; a
// call's port is mapped by Add at once, renewed at half its lifetime,
// deleted after Remove; everything left is deleted when Run stops.
func TestMapperLifecycle(t *testing.T) {
	h := startMapper(t, 2*time.Minute, true)
	h.proto.await(t, "map 65002->65002")

	ext, err := h.m.Add(context.Background(), 55000)
	if err != nil || ext != netip.MustParseAddrPort("203.0.113.7:55000") {
		t.Fatalf("Add = %s, %v", ext, err)
	}
	h.proto.await(t, "map 55000->55000")
	if a, ok := h.m.Lookup(55000); !ok || a != ext {
		t.Fatalf("Lookup = %s %v", a, ok)
	}
	st := h.m.Status()
	if st.Protocol != "fake" || st.External != "203.0.113.7" || len(st.Mappings) != 2 || st.Mappings[0].Internal != 55000 {
		t.Fatalf("Status = %+v", st)
	}

	h.clk.awaitTimer(t, t0.Add(time.Minute))
	h.clk.advance(time.Minute - time.Second)
	h.proto.quiet(t) // a renewal now would be early
	h.clk.advance(time.Second)
	// Both were granted at t0: renewed in port order, each asking for its granted port.
	h.proto.await(t, "map 55000->55000")
	h.proto.await(t, "map 65002->65002")

	h.m.Remove(55000)
	h.proto.await(t, "unmap 55000->55000")
	if _, ok := h.m.Lookup(55000); ok {
		t.Fatal("Lookup finds a removed port")
	}

	h.stop()
	if err := <-h.done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	h.done <- nil // for Cleanup
	h.proto.await(t, "unmap 65002->65002")
	h.proto.quiet(t)
	if _, err := h.m.Add(context.Background(), 55002); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Run = %v, want ErrClosed", err)
	}
}

// TestMapperRenewalFailure: a renewal that fails is retried; a lease that
// expires unrenewed is dropped, and one that comes back moved is followed.
func TestMapperRenewalFailure(t *testing.T) {
	h := startMapper(t, 2*time.Minute, true)
	h.proto.await(t, "map 65002->65002")
	h.proto.set(func(f *fakeProto) { f.fail = true })
	h.clk.advanceTo(t, time.Minute)
	h.proto.await(t, "map 65002->65002") // fails
	h.clk.advanceTo(t, time.Minute+retryDelay)
	h.proto.await(t, "map 65002->65002") // fails again; the lease still holds
	if _, ok := h.m.Lookup(65002); !ok {
		t.Fatal("lease dropped before it expired")
	}
	h.clk.awaitTimer(t, t0.Add(time.Minute+2*retryDelay)) // Run has noted the failure and is idle
	if h.m.Status().Error == "" {
		t.Fatal("Status shows no error after failed renewals")
	}
	// The gateway is back, granting another port: the lease follows it.
	h.proto.set(func(f *fakeProto) { f.fail, f.shift = false, 1 })
	h.clk.advanceTo(t, time.Minute+2*retryDelay)
	h.proto.await(t, "map 65002->65002")
	h.clk.awaitTimer(t, t0.Add(2*time.Minute+2*retryDelay)) // the new lease is stored, its renewal armed
	if a, _ := h.m.Lookup(65002); a.Port() != 65003 {
		t.Fatalf("after a moved renewal Lookup = %s, want port 65003", a)
	}
	// Fail from its next renewal (granted at 1m20s, due at 2m20s) until it
	// expires at 3m20s: retried every retryDelay, then dropped.
	h.proto.set(func(f *fakeProto) { f.fail, f.shift = true, 0 })
	granted := time.Minute + 2*retryDelay
	for at := granted + time.Minute; at <= granted+2*time.Minute; at += retryDelay {
		if _, ok := h.m.Lookup(65002); !ok {
			t.Fatalf("lease dropped at t0+%s, before it expired at t0+%s", at, granted+2*time.Minute)
		}
		h.clk.advanceTo(t, at)
		h.proto.await(t, "map 65002->65003")
	}
	// The last failure came at expiry: the lease goes (after Map returned).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, ok := h.m.Lookup(65002); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a lease that expired unrenewed is still held")
		}
	}
}

// TestMapperNoGateway: while no gateway answers, Add fails at once (a call
// is never held up) and the gateway is asked again every Reprobe.
func TestMapperNoGateway(t *testing.T) {
	h := startMapper(t, time.Hour, false)
	if _, err := h.m.Add(context.Background(), 55000); !errors.Is(err, ErrNoGateway) {
		t.Fatalf("Add = %v, want ErrNoGateway", err)
	}
	h.proto.quiet(t)
	h.probe <- true
	h.clk.advanceTo(t, time.Minute)
	h.proto.await(t, "map 65002->65002")
	if _, err := h.m.Add(context.Background(), 55000); err != nil {
		t.Fatalf("Add once the gateway answers = %v", err)
	}
}

// losingProto is a gateway that reports losing its state (PCP's epoch).
type losingProto struct {
	*fakeProto
	lost chan struct{}
}

func (l losingProto) Lost() <-chan struct{} { return l.lost }

// TestMapperGatewayLost: when the gateway says it lost its mappings, every
// lease is mapped again at once, not at its renewal time.
func TestMapperGatewayLost(t *testing.T) {
	lost := make(chan struct{}, 1)
	h := startMapper(t, time.Hour, true, func(f *fakeProto) Protocol { return losingProto{f, lost} })
	h.proto.await(t, "map 65002->65002")
	if _, err := h.m.Add(context.Background(), 55000); err != nil {
		t.Fatal(err)
	}
	h.proto.await(t, "map 55000->55000")
	h.clk.awaitTimer(t, t0.Add(30*time.Minute)) // idle until the renewals are due
	lost <- struct{}{}
	h.proto.await(t, "map 55000->55000")
	h.proto.await(t, "map 65002->65002")
	h.clk.awaitTimer(t, t0.Add(30*time.Minute))
	h.proto.quiet(t)
}

// ctxUnmap is a gateway whose deletes fail once their context is done,
// as PCP's and UPnP's do.
type ctxUnmap struct{ *fakeProto }

func (c ctxUnmap) Unmap(ctx context.Context, internal, external uint16) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.fakeProto.Unmap(ctx, internal, external)
}

// TestPendingDeleteSurvivesStop (review): a call's mapping removed just as
// the daemon stops is still deleted at the router by Close. Before,
// deletePending ran with the cancelled context, every delete failed at
// once, and the leases were dropped: open at the router for their whole
// lifetime (2 h by default).
func TestPendingDeleteSurvivesStop(t *testing.T) {
	proto := newFakeProto(2 * time.Hour)
	m, err := New(Config{Gateway: netip.MustParseAddr("192.168.100.1"), Local: netip.MustParseAddr("192.168.100.2"),
		Lifetime: 2 * time.Hour, Probe: func(context.Context, netip.Addr, netip.Addr, time.Duration) (Protocol, error) {
			return nil, ErrNoGateway
		}})
	if err != nil {
		t.Fatal(err)
	}
	m.proto = ctxUnmap{proto}
	ext := netip.MustParseAddrPort("203.0.113.7:40000")
	m.pending = []Lease{{Internal: 40000, External: ext, Granted: t0, Lifetime: 2 * time.Hour},
		{Internal: 40002, External: netip.MustParseAddrPort("203.0.113.7:40002"), Granted: t0, Lifetime: 2 * time.Hour}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m.deletePending(ctx)
	proto.quiet(t)
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	proto.await(t, "unmap 40000->40000")
	proto.await(t, "unmap 40002->40002")
	proto.quiet(t)
}
