package trunk

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

// keepaliveRig records what a trunk's keepalive loop sends to the
// registrar, with the socket's per-flow send time under test control.
type keepaliveRig struct {
	mu       sync.Mutex
	probes   []time.Time
	options  []time.Time
	crlfs    []time.Time
	lastSent time.Time
	stunOK   bool
}

func (r *keepaliveRig) trunk(method string) *Trunk {
	t := &Trunk{
		conf: Options{Name: "provider", Domain: "sip.provider.test", Username: "4930123456", Keepalive: method},
		host: registrarAddr.Addr().String(), port: int(registrarAddr.Port()), interval: 10 * time.Second,
		log: zap.NewNop(), now: time.Now, down: map[netip.AddrPort]time.Time{}, randN: rand.IntN,
	}
	t.probe = func(ctx context.Context, dst netip.AddrPort) (netip.AddrPort, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.probes = append(r.probes, time.Now())
		r.lastSent = time.Now()
		if !r.stunOK {
			return netip.AddrPort{}, errors.New("no STUN answer")
		}
		return natAddr, nil
	}
	t.do = func(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if req.Method != sip.OPTIONS || dst != registrarAddr {
			return nil, errors.New("unexpected request")
		}
		r.options = append(r.options, time.Now())
		r.lastSent = time.Now()
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		res.Via().Params.Add("received", natAddr.Addr().String())
		res.Via().Params.Add("rport", "65002")
		return res, nil
	}
	t.send = func(b []byte, dst netip.AddrPort) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if string(b) == "\r\n\r\n" && dst == registrarAddr {
			r.crlfs = append(r.crlfs, time.Now())
		}
		r.lastSent = time.Now()
		return nil
	}
	t.lastSent = func(netip.AddrPort) time.Time {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.lastSent
	}
	t.reg = newRegistration(t.conf, t.do, t, &fakeKeeper{}, lanAddr, zap.NewNop())
	return t
}

func (r *keepaliveRig) sentOptions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.options)
}

// runFor runs the keepalive loop for d of fake time.
func runFor(t *Trunk, d time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { t.keepaliveLoop(ctx); close(done) }()
	time.Sleep(d)
	cancel()
	<-done
}

func TestKeepaliveMethods(t *testing.T) {
	for _, tc := range []struct {
		name, method       string
		stunOK             bool
		probes, opts, crlf int // in 95 s at a 10 s interval: t=0, 10, ... 90
		effective          string
	}{
		{"auto picks STUN when the registrar answers it", config.KeepaliveAuto, true, 10, 0, 0, config.KeepaliveSTUN},
		{"auto falls back to OPTIONS", config.KeepaliveAuto, false, 1, 10, 0, config.KeepaliveOptions},
		{"stun insists on STUN", config.KeepaliveSTUN, false, 10, 0, 0, config.KeepaliveSTUN},
		{"options", config.KeepaliveOptions, true, 0, 10, 0, config.KeepaliveOptions},
		{"crlf", config.KeepaliveCRLF, true, 0, 0, 10, config.KeepaliveCRLF},
		{"off sends nothing", config.KeepaliveOff, true, 0, 0, 0, config.KeepaliveOff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := &keepaliveRig{stunOK: tc.stunOK}
				tr := rig.trunk(tc.method)
				runFor(tr, 95*time.Second)
				if len(rig.probes) != tc.probes || len(rig.options) != tc.opts || len(rig.crlfs) != tc.crlf {
					t.Errorf("sent %d STUN probes, %d OPTIONS, %d CRLF; want %d, %d, %d",
						len(rig.probes), len(rig.options), len(rig.crlfs), tc.probes, tc.opts, tc.crlf)
				}
				if got := *tr.keepalive.Load(); got != tc.effective {
					t.Errorf("keepalive in use = %s, want %s", got, tc.effective)
				}
			})
		})
	}
}

// Traffic to the registrar (a REGISTER, a call) keeps the flow alive by
// itself: keepalives go out only after a full idle interval.
func TestKeepaliveOnlyWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := &keepaliveRig{}
		tr := rig.trunk(config.KeepaliveOptions)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { tr.keepaliveLoop(ctx); close(done) }()
		time.Sleep(time.Second) // the first keepalive went at t=0
		for i := 0; i < 60; i++ {
			time.Sleep(5 * time.Second)
			rig.mu.Lock()
			rig.lastSent = time.Now() // busy: something goes to the registrar every 5 s
			rig.mu.Unlock()
		}
		synctest.Wait()
		if n := rig.sentOptions(); n != 1 {
			t.Errorf("%d OPTIONS while the flow was busy, want only the first", n)
		}
		time.Sleep(10 * time.Second) // now idle for one interval
		synctest.Wait()
		if n := rig.sentOptions(); n != 2 {
			t.Errorf("%d OPTIONS after an idle interval, want 2", n)
		}
		cancel()
		<-done
	})
}

// /status reads the keepalive method while the loop switches it; under
// -race this catches publishing a pointer to the loop's own variable.
func TestKeepaliveMethodReadWhileSwitching(t *testing.T) {
	rig := &keepaliveRig{} // STUN unanswered: auto falls back to OPTIONS
	tr := rig.trunk(config.KeepaliveAuto)
	tr.now = time.Now
	tr.interval = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.keepaliveLoop(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for rig.sentOptions() < 3 && time.Now().Before(deadline) {
		if m := tr.keepalive.Load(); m != nil {
			_ = len(*m)
		}
	}
	cancel()
	<-done
	if got := *tr.keepalive.Load(); got != config.KeepaliveOptions {
		t.Errorf("keepalive = %s, want options", got)
	}
}

func TestNormalizeNumber(t *testing.T) {
	for _, tc := range []struct{ in, format, cc, want string }{
		{"0301234567", "e164", "49", "+49301234567"},
		{"0049301234567", "e164", "49", "+49301234567"},
		{"+49301234567", "e164", "49", "+49301234567"},
		{"00441234567", "e164", "49", "+441234567"},
		{"+49301234567", "national", "49", "0301234567"},
		{"0049301234567", "national", "49", "0301234567"},
		{"0301234567", "national", "49", "0301234567"},
		{"+441234567", "national", "49", "00441234567"},
		{"0301234567", "as-is", "49", "0301234567"},
		{"110", "e164", "49", "110"}, // emergency and short codes stay as dialled
		{"200", "national", "49", "200"},
		{"0301234567", "e164-no-plus", "49", "49301234567"},
		{"+49301234567", "e164-no-plus", "49", "49301234567"},
		{"00441234567", "e164-no-plus", "49", "441234567"},
		{"200", "e164-no-plus", "49", "200"},
	} {
		if got := normalizeNumber(tc.in, tc.format, tc.cc); got != tc.want {
			t.Errorf("normalizeNumber(%q, %s, %s) = %q, want %q", tc.in, tc.format, tc.cc, got, tc.want)
		}
	}
}

// revivalRig is a trunk with its registration and its keepalive loop
// running against the fake registrar, on fake time.
func revivalRig(t *testing.T, f *fakeRegistrar, conf Options) (*Trunk, func()) {
	tr := &Trunk{
		conf: conf, host: registrarAddr.Addr().String(), port: int(registrarAddr.Port()), interval: 10 * time.Second,
		log: zap.NewNop(), now: time.Now, down: map[netip.AddrPort]time.Time{}, randN: rand.IntN, do: f.do,
		probe: func(context.Context, netip.AddrPort) (netip.AddrPort, error) {
			return netip.AddrPort{}, errors.New("no STUN")
		},
		lastSent: func(netip.AddrPort) time.Time { return time.Time{} },
	}
	tr.reg = newRegistration(conf, f.do, tr, &fakeKeeper{}, lanAddr, zap.NewNop())
	tr.reg.jitter = func() float64 { return 0.5 }
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); tr.reg.run(ctx) }()
	go func() { defer wg.Done(); tr.keepaliveLoop(ctx) }()
	return tr, func() { cancel(); wg.Wait() }
}

// firstAuthedAfter is when the first authenticated REGISTER at or after
// since went out (zero if none).
func firstAuthedAfter(f *fakeRegistrar, since time.Time) time.Time {
	reqs, at := f.snapshot()
	for i, r := range reqs {
		if !at[i].Before(since) && r.GetHeader("Authorization") != nil {
			return at[i]
		}
	}
	return time.Time{}
}

// Issue 9 item 12: after a WAN outage the registration sat in backoff
// (52.7 s measured) although the registrar answered OPTIONS 8.5 s after the
// link came back. A keepalive answered after silence re-registers at once.
func TestRegistrarRevivalCutsBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeRegistrar(t)
		conf := Options{Name: "provider", Domain: "sip.provider.test", Username: "4930123456", Password: "lab-secret",
			Expires: 300 * time.Second, Register: true, Keepalive: config.KeepaliveOptions}
		tr, stop := revivalRig(t, f, conf)
		defer stop()
		time.Sleep(5 * time.Second)
		if !tr.Status().Registered {
			t.Fatal("not registered at the start")
		}
		// An outage from t=10 s to t=440 s: the refresh at 240 s fails
		// (10 s each) and backs off 2, 4, … 64 s; the attempt at 426 s
		// fails at 436 s and the next is due at 564 s, 124 s after the
		// registrar is back at 440 s.
		time.Sleep(5 * time.Second)
		f.set(func(f *fakeRegistrar) { f.silent = true })
		time.Sleep(430 * time.Second)
		back := time.Now()
		f.set(func(f *fakeRegistrar) { f.silent = false })
		time.Sleep(60 * time.Second)
		synctest.Wait()
		got := firstAuthedAfter(f, back)
		if got.IsZero() {
			t.Fatal("no REGISTER within 60 s of the registrar's return")
		}
		// One keepalive interval plus the transaction that was pending.
		if d := got.Sub(back); d > 16*time.Second {
			t.Errorf("registered %v after the registrar came back; want within a keepalive interval (10 s)", d)
		} else {
			t.Logf("registered %v after the registrar came back", d)
		}
		if !tr.Status().Registered {
			t.Error("not registered after the outage")
		}
	})
}

// Issue 9 item 11: a provider that restarts loses its location table and
// still answers OPTIONS, so only the next REGISTER restores inbound calls.
// refresh_max bounds that wait whatever the registrar granted.
func TestRefreshMaxBoundsTheSilentLoss(t *testing.T) {
	for _, tc := range []struct {
		name       string
		refreshMax time.Duration
		want       time.Duration // between two authenticated REGISTERs
	}{
		{"capped at refresh_max", 120 * time.Second, 120 * time.Second},
		{"uncapped: as granted", 0, 3540 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeRegistrar(t)
				conf := Options{Name: "provider", Domain: "sip.provider.test", Username: "4930123456", Password: "lab-secret",
					Expires: 3600 * time.Second, RefreshMax: tc.refreshMax, Register: true, Keepalive: config.KeepaliveOptions}
				_, stop := revivalRig(t, f, conf)
				defer stop()
				time.Sleep(tc.want + 30*time.Second)
				synctest.Wait()
				first := firstAuthedAfter(f, time.Time{})
				second := firstAuthedAfter(f, first.Add(time.Second))
				if first.IsZero() || second.IsZero() {
					t.Fatalf("REGISTERs at %v, %v: want two", first, second)
				}
				if d := second.Sub(first); d != tc.want {
					t.Errorf("refresh after %v, want %v", d, tc.want)
				}
			})
		})
	}
}

// A reload that changes how the trunk presents callers or reads DIDs
// must not keep the old trunk.
func TestSameSeesCallerIDAndDIDFrom(t *testing.T) {
	base := Options{Name: "provider", Host: "sip.example.net", Username: "u", NumberFormat: "e164", CountryCode: "49"}
	if !base.Same(base) {
		t.Fatal("options not Same as themselves")
	}
	for name, edit := range map[string]func(*Options){
		"caller_id.from_user":     func(o *Options) { o.CallerFromUser = "number" },
		"caller_id.asserted":      func(o *Options) { o.CallerAsserted = "pai" },
		"caller_id.number_format": func(o *Options) { o.CallerFormat = "national" },
		"did_from":                func(o *Options) { o.DIDFrom = "to" },
	} {
		o := base
		edit(&o)
		if base.Same(o) {
			t.Errorf("a change of %s is Same", name)
		}
	}
}
