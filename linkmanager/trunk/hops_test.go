package trunk

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

// fakeDNS is a Resolver with records the test sets and changes.
type fakeDNS struct {
	mu      sync.Mutex
	srv     map[string][]*net.SRV // by name, without the _sip._udp. prefix
	a       map[string][]string   // by name
	fail    bool                  // every lookup fails: the resolver is down
	lookups map[string]int        // by name, A and SRV alike
}

func newFakeDNS() *fakeDNS {
	return &fakeDNS{srv: map[string][]*net.SRV{}, a: map[string][]string{}, lookups: map[string]int{}}
}

func (d *fakeDNS) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups["_"+service+"._"+proto+"."+name]++
	if recs, ok := d.srv[name]; ok && !d.fail {
		return "", recs, nil
	}
	return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (d *fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups[host]++
	ips, ok := d.a[host]
	if !ok || d.fail {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, s := range ips {
		out = append(out, netip.MustParseAddr(s))
	}
	return out, nil
}

func (d *fakeDNS) set(fn func(*fakeDNS)) {
	d.mu.Lock()
	fn(d)
	d.mu.Unlock()
}

func (d *fakeDNS) count(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lookups[name]
}

func aps(ss ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range ss {
		out = append(out, netip.MustParseAddrPort(s))
	}
	return out
}

func TestOrderTargets(t *testing.T) {
	a := srvTarget{name: "a", priority: 10, weight: 60, addrs: aps("192.0.2.1:5060", "192.0.2.2:5060")}
	b := srvTarget{name: "b", priority: 10, weight: 40, addrs: aps("192.0.2.3:5070")}
	zero := srvTarget{name: "zero", priority: 10, weight: 0, addrs: aps("192.0.2.4:5060")}
	backup := srvTarget{name: "backup", priority: 20, weight: 100, addrs: aps("192.0.2.9:5060")}
	lowest := func(int) int { return 0 }
	highest := func(n int) int { return n - 1 }
	for _, tc := range []struct {
		name    string
		targets []srvTarget
		randN   func(int) int
		want    []netip.AddrPort
	}{
		{"lower priority first whatever the listed order", []srvTarget{backup, a}, lowest,
			aps("192.0.2.1:5060", "192.0.2.2:5060", "192.0.2.9:5060")},
		{"draw 0 takes the first; every address of a target together", []srvTarget{a, b, backup}, lowest,
			aps("192.0.2.1:5060", "192.0.2.2:5060", "192.0.2.3:5070", "192.0.2.9:5060")},
		{"draw at the sum takes the last", []srvTarget{a, b, backup}, highest,
			aps("192.0.2.3:5070", "192.0.2.1:5060", "192.0.2.2:5060", "192.0.2.9:5060")},
		{"weight 0 only on a draw of 0", []srvTarget{a, zero}, highest,
			aps("192.0.2.1:5060", "192.0.2.2:5060", "192.0.2.4:5060")},
		{"weight 0 goes first on a draw of 0", []srvTarget{a, zero}, lowest,
			aps("192.0.2.4:5060", "192.0.2.1:5060", "192.0.2.2:5060")},
		{"one host", []srvTarget{{name: "x", addrs: aps("192.0.2.7:5060")}}, lowest, aps("192.0.2.7:5060")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := orderTargets(tc.targets, tc.randN); !slices.Equal(got, tc.want) {
				t.Errorf("order = %v, want %v", got, tc.want)
			}
		})
	}

	// The weights share the first place out: 60 % a, 40 % b (a fixed
	// seed, so the count is the same on every run).
	rnd := rand.New(rand.NewPCG(1, 2))
	first := map[netip.AddrPort]int{}
	for range 10000 {
		first[orderTargets([]srvTarget{a, b}, rnd.IntN)[0]]++
	}
	if n := first[a.addrs[0]]; n < 5700 || n > 6300 {
		t.Errorf("a first in %d of 10000 orders, want about 6000 (weights 60:40)", n)
	}
}

func TestLookupHost(t *testing.T) {
	dns := newFakeDNS()
	dns.srv["provider.test"] = []*net.SRV{
		{Target: "sbc2.provider.test.", Port: 5070, Priority: 20, Weight: 0},
		{Target: "sbc1.provider.test.", Port: 5060, Priority: 10, Weight: 10},
		{Target: "gone.provider.test.", Port: 5060, Priority: 10, Weight: 10}, // no A record
		{Target: ".", Port: 0, Priority: 30},
	}
	dns.a["sbc1.provider.test"] = []string{"192.0.2.1", "192.0.2.2"}
	dns.a["sbc2.provider.test"] = []string{"192.0.2.3"}
	dns.a["plain.test"] = []string{"192.0.2.8"}
	dns.srv["dead.test"] = []*net.SRV{{Target: "gone.provider.test.", Port: 5060}}
	for _, tc := range []struct {
		name, host string
		port       int
		want       []srvTarget
		wantErr    bool
	}{
		{"IP literal, default port", "203.0.113.5", 0, []srvTarget{{name: "203.0.113.5", addrs: aps("203.0.113.5:5060")}}, false},
		{"name with a port: A only", "plain.test", 5080, []srvTarget{{name: "plain.test", addrs: aps("192.0.2.8:5080")}}, false},
		{"name without SRV: A on 5060", "plain.test", 0, []srvTarget{{name: "plain.test", addrs: aps("192.0.2.8:5060")}}, false},
		{"every SRV target with every address", "provider.test", 0, []srvTarget{
			{name: "sbc2.provider.test", priority: 20, addrs: aps("192.0.2.3:5070")},
			{name: "sbc1.provider.test", priority: 10, weight: 10, addrs: aps("192.0.2.1:5060", "192.0.2.2:5060")},
		}, false},
		{"no target resolves", "dead.test", 0, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookupHost(context.Background(), dns, tc.host, tc.port)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("targets = %v, want %v", got, tc.want)
			}
		})
	}
}

// Lookup, for a host in a Record-Route or Contact: every address of every
// SRV target, best priority first; a name that does not resolve is an
// error.
func TestLookup(t *testing.T) {
	dns := providerDNS()
	got, err := Lookup(context.Background(), dns, "provider.test", 0)
	if want := aps("192.0.2.1:5060", "192.0.2.2:5060", "192.0.2.3:5060"); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Lookup = %v, %v; want %v", got, err, want)
	}
	if got, err := Lookup(context.Background(), dns, "nowhere.test", 5060); err == nil {
		t.Errorf("Lookup of a name without records = %v, want an error", got)
	}
}

// srvTrunk is a trunk whose proxy has two SRV targets and whose
// registrar is another name, as at providers that register on one host
// and route calls through SBCs.
func srvTrunk(t *testing.T, dns *fakeDNS, do TxFunc, register bool, allow ...string) *Trunk {
	var prefixes []netip.Prefix
	for _, a := range allow {
		prefixes = append(prefixes, netip.MustParsePrefix(a))
	}
	if do == nil {
		do = func(context.Context, *sip.Request, netip.AddrPort) (*sip.Response, error) {
			return nil, errors.New("no network in this test")
		}
	}
	return New(Options{Name: "provider", Host: "provider.test", RegistrarHost: "reg.provider.test", Domain: "provider.test",
		Username: "4930123456", Password: "lab-secret", Expires: 300 * time.Second, RefreshMax: 120 * time.Second, Register: register,
		Keepalive: config.KeepaliveOff, Allow: prefixes},
		Deps{Do: do, Keeper: &fakeKeeper{}, Local: lanAddr, Lookup: dns, Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))})
}

func providerDNS() *fakeDNS {
	dns := newFakeDNS()
	dns.srv["provider.test"] = []*net.SRV{
		{Target: "sbc1.provider.test.", Port: 5060, Priority: 10, Weight: 1},
		{Target: "sbc2.provider.test.", Port: 5060, Priority: 20, Weight: 1},
	}
	dns.a["sbc1.provider.test"] = []string{"192.0.2.1", "192.0.2.2"}
	dns.a["sbc2.provider.test"] = []string{"192.0.2.3"}
	dns.a["reg.provider.test"] = []string{"192.0.2.50"}
	return dns
}

func TestAllowsEverySRVTargetAndTheAllowList(t *testing.T) {
	dns := providerDNS()
	tr := srvTrunk(t, dns, nil, false, "198.51.100.0/28")
	if tr.Allows(netip.MustParseAddr("192.0.2.1")) {
		t.Fatal("allowed before any lookup")
	}
	if !tr.Allows(netip.MustParseAddr("198.51.100.7")) {
		t.Error("an allow-listed SBC is refused before any lookup")
	}
	if err := tr.resolve(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.50", "198.51.100.0", "198.51.100.15"} {
		if !tr.Allows(netip.MustParseAddr(ip)) {
			t.Errorf("%s refused", ip)
		}
	}
	for _, ip := range []string{"192.0.2.4", "198.51.100.16", "203.0.113.1"} {
		if tr.Allows(netip.MustParseAddr(ip)) {
			t.Errorf("stranger %s allowed", ip)
		}
	}

	// The provider moves sbc2. The old address stays allowed for one
	// more lookup (its calls' BYEs), then it is gone.
	dns.set(func(d *fakeDNS) { d.a["sbc2.provider.test"] = []string{"192.0.2.33"} })
	if err := tr.resolve(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !tr.Allows(netip.MustParseAddr("192.0.2.33")) || !tr.Allows(netip.MustParseAddr("192.0.2.3")) {
		t.Error("after the move: want the new and (for one round) the old address allowed")
	}
	if err := tr.resolve(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tr.Allows(netip.MustParseAddr("192.0.2.3")) {
		t.Error("the moved SBC's old address is still allowed two lookups later")
	}

	// A failed lookup keeps the last answer.
	dns.set(func(d *fakeDNS) { d.fail = true })
	if err := tr.resolve(context.Background()); !errors.Is(err, ErrResolve) {
		t.Errorf("resolve with DNS down = %v, want ErrResolve", err)
	}
	if !tr.Allows(netip.MustParseAddr("192.0.2.33")) {
		t.Error("a failed lookup dropped the provider's addresses")
	}
}

func TestAllowsAllocatesNothing(t *testing.T) {
	tr := srvTrunk(t, providerDNS(), nil, false, "198.51.100.0/28", "203.0.113.0/24")
	if err := tr.resolve(context.Background()); err != nil {
		t.Fatal(err)
	}
	ips := []netip.Addr{netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("10.1.2.3")}
	if n := testing.AllocsPerRun(100, func() {
		for _, ip := range ips {
			tr.Allows(ip)
		}
	}); n != 0 {
		t.Errorf("Allows allocates %v times per run", n)
	}
}

// The lookup repeats every ResolveEvery; a failed one is retried after
// resolveRetry and keeps the previous answer meanwhile.
func TestResolveLoopFollowsDNS(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dns := providerDNS()
		tr := srvTrunk(t, dns, nil, false)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); tr.resolveLoop(ctx) }()
		defer func() { cancel(); <-done }()

		synctest.Wait()
		if n := dns.count("_sip._udp.provider.test"); n != 1 {
			t.Fatalf("%d SRV lookups at the start, want 1", n)
		}
		dns.set(func(d *fakeDNS) { d.a["sbc2.provider.test"] = []string{"192.0.2.33"} })
		time.Sleep(ResolveEvery - time.Second)
		synctest.Wait()
		if tr.Allows(netip.MustParseAddr("192.0.2.33")) {
			t.Error("the new address is allowed before the next lookup is due")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if !tr.Allows(netip.MustParseAddr("192.0.2.33")) {
			t.Error("the new address is not allowed after ResolveEvery")
		}

		dns.set(func(d *fakeDNS) { d.fail = true })
		time.Sleep(ResolveEvery)
		synctest.Wait()
		before := dns.count("_sip._udp.provider.test")
		time.Sleep(resolveRetry)
		synctest.Wait()
		if got := dns.count("_sip._udp.provider.test"); got != before+1 {
			t.Errorf("%d lookups within resolveRetry of a failed one, want 1", got-before)
		}
		if !tr.Allows(netip.MustParseAddr("192.0.2.33")) {
			t.Error("the provider's addresses were dropped while DNS is down")
		}
	})
}

// A call's route names the best target and the rest in order; a target
// that failed goes last for HoldDown, then takes its place again.
func TestRouteFailoverAndReturnToPrimary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := srvTrunk(t, providerDNS(), nil, false)
		if _, ok, err := tr.Route("030123"); !ok || !errors.Is(err, ErrUnresolved) {
			t.Fatalf("Route before any lookup = %v, %v; want ErrUnresolved", ok, err)
		}
		if err := tr.resolve(context.Background()); err != nil {
			t.Fatal(err)
		}
		r, _, err := tr.Route("030123")
		if err != nil {
			t.Fatal(err)
		}
		if want := aps("192.0.2.1:5060", "192.0.2.2:5060", "192.0.2.3:5060"); r.Dst != want[0] || !slices.Equal(r.Alt, want[1:]) {
			t.Fatalf("route %v then %v, want %v", r.Dst, r.Alt, want)
		}
		r.Failed(r.Dst)
		r, _, _ = tr.Route("030123")
		if want := aps("192.0.2.2:5060", "192.0.2.3:5060", "192.0.2.1:5060"); r.Dst != want[0] || !slices.Equal(r.Alt, want[1:]) {
			t.Errorf("after the primary failed: %v then %v, want %v", r.Dst, r.Alt, want)
		}
		time.Sleep(HoldDown + time.Second)
		if r, _, _ = tr.Route("030123"); r.Dst != netip.MustParseAddrPort("192.0.2.1:5060") {
			t.Errorf("after the hold-down the route starts at %v, want the primary back", r.Dst)
		}
	})
}

// registrars is one fake registrar per target address.
type registrars map[netip.AddrPort]*fakeRegistrar

func (rs registrars) do(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
	f, ok := rs[dst]
	if !ok {
		return nil, fmt.Errorf("nobody at %v", dst)
	}
	return f.do(ctx, req, dst)
}

func (rs registrars) registers(dst netip.AddrPort) int {
	reqs, _ := rs[dst].snapshot()
	return len(withAuth(reqs))
}

// REGISTER moves to the next SRV target when the first answers 503 or
// does not answer at all, and the next refresh after the hold-down is
// tried at the primary again.
func TestRegisterFailsOverAndReturnsToPrimary(t *testing.T) {
	primary, secondary := netip.MustParseAddrPort("192.0.2.1:5060"), netip.MustParseAddrPort("192.0.2.3:5060")
	for _, tc := range []struct {
		name    string
		breakIt func(*fakeRegistrar)
	}{
		{"503", func(f *fakeRegistrar) { f.status = 503 }},
		{"no answer", func(f *fakeRegistrar) { f.silent = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rs := registrars{}
				for _, a := range []netip.AddrPort{primary, netip.MustParseAddrPort("192.0.2.2:5060"), secondary} {
					f := newFakeRegistrar(t)
					f.addr = a
					rs[a] = f
				}
				dns := providerDNS()
				dns.set(func(d *fakeDNS) { d.a["sbc1.provider.test"] = []string{"192.0.2.1"} })
				tr := srvTrunk(t, dns, rs.do, true)
				tr.reg.jitter = func() float64 { return 0.5 }
				rs[primary].set(tc.breakIt)
				tr.Start()
				defer tr.Stop(true)

				time.Sleep(30 * time.Second)
				synctest.Wait()
				st := tr.Status()
				if !st.Registered || st.Registrar != secondary {
					t.Fatalf("status %+v: want registered at the secondary %v", st, secondary)
				}
				if d := tr.dst.Load(); d == nil || *d != secondary {
					t.Errorf("keepalive target %v, want the secondary", d)
				}
				// The primary is fixed; the refresh (120 s, after the
				// 60 s hold-down) goes there again.
				rs[primary].set(func(f *fakeRegistrar) { f.status, f.silent = 0, false })
				before := rs.registers(primary)
				time.Sleep(120 * time.Second)
				synctest.Wait()
				if st := tr.Status(); !st.Registered || st.Registrar != primary {
					t.Errorf("after the refresh: %+v, want registered at the primary %v again", st, primary)
				}
				if n := rs.registers(primary) - before; n != 1 {
					t.Errorf("%d authenticated REGISTERs at the primary after its repair, want the refresh", n)
				}
			})
		})
	}
}
