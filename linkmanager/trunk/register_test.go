package trunk

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/linkmanager/linkmanager/stunkeeper"
)

var (
	registrarAddr = netip.MustParseAddrPort("198.51.100.50:5060")
	lanAddr       = netip.MustParseAddrPort("192.168.100.2:65002")
	natAddr       = netip.MustParseAddrPort("198.51.100.1:65002")
)

// fakeRegistrar answers REGISTER like Kamailio with auth_db and
// fix_nated_register: it challenges, checks the digest response for real,
// and writes what it sees (received/rport) into the Via.
type fakeRegistrar struct {
	t        *testing.T
	addr     netip.AddrPort // where it listens
	password string
	realm    string
	nonce    string

	mu       sync.Mutex
	source   netip.AddrPort // where requests seem to come from (the NAT)
	silent   bool           // drop everything: a dead provider
	status   int            // answer this instead of 200 (after auth)
	extra    []sip.Header
	requests []*sip.Request
	at       []time.Time
	options  []*sip.Request // OPTIONS probes
}

func newFakeRegistrar(t *testing.T) *fakeRegistrar {
	return &fakeRegistrar{t: t, addr: registrarAddr, password: "lab-secret", realm: "sip.provider.test", nonce: "n0nce", source: natAddr}
}

func (f *fakeRegistrar) do(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if dst != f.addr {
		f.t.Errorf("request sent to %v, want the registrar %v", dst, f.addr)
	}
	// The public-address probe is kept apart so REGISTER counts stay exact.
	if req.Method == sip.OPTIONS {
		f.options = append(f.options, req.Clone())
	} else {
		f.requests = append(f.requests, req.Clone())
		f.at = append(f.at, time.Now())
	}
	if f.silent {
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return nil, ctx.Err()
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	via := res.Via()
	via.Params.Add("received", f.source.Addr().String())
	via.Params.Add("rport", fmt.Sprint(f.source.Port()))
	if req.Method == sip.OPTIONS {
		return res, nil // answered as Kamailio does: 200 with received/rport
	}

	h := req.GetHeader("Authorization")
	if h == nil || !f.validAuth(req, h.Value()) {
		res = sip.NewResponseFromRequest(req, 401, "Unauthorized", nil)
		res.AppendHeader(sip.NewHeader("WWW-Authenticate",
			fmt.Sprintf(`Digest realm="%s", nonce="%s", algorithm=MD5, qop="auth"`, f.realm, f.nonce)))
		return res, nil
	}
	if f.status != 0 {
		res = sip.NewResponseFromRequest(req, f.status, "Nope", nil)
	}
	for _, c := range req.GetHeaders("Contact") {
		res.AppendHeader(c)
	}
	for _, e := range f.extra {
		res.AppendHeader(e)
	}
	return res, nil
}

func (f *fakeRegistrar) validAuth(req *sip.Request, value string) bool {
	cred, err := digest.ParseCredentials(value)
	if err != nil {
		f.t.Errorf("bad Authorization header %q: %v", value, err)
		return false
	}
	chal := &digest.Challenge{Realm: f.realm, Nonce: f.nonce, Algorithm: "MD5", QOP: []string{"auth"}}
	want, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: cred.URI,
		Username: "4930123456", Password: f.password, Cnonce: cred.Cnonce, Count: cred.Nc})
	if err != nil {
		f.t.Fatal(err)
	}
	return cred.Username == "4930123456" && cred.Response == want.Response && cred.URI == req.Recipient.String()
}

func (f *fakeRegistrar) snapshot() ([]*sip.Request, []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*sip.Request(nil), f.requests...), append([]time.Time(nil), f.at...)
}

func (f *fakeRegistrar) set(fn func(*fakeRegistrar)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

// fakeKeeper stands in for the STUN keeper.
type fakeKeeper struct {
	mu       sync.Mutex
	public   *stunkeeper.Mapping
	subs     []chan stunkeeper.Mapping
	observed []stunkeeper.Mapping
}

func (k *fakeKeeper) Public() (stunkeeper.Mapping, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.public == nil {
		return stunkeeper.Mapping{}, false
	}
	return *k.public, true
}

func (k *fakeKeeper) Subscribe() (<-chan stunkeeper.Mapping, func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ch := make(chan stunkeeper.Mapping, 4)
	k.subs = append(k.subs, ch)
	return ch, func() {}
}

func (k *fakeKeeper) Observe(m stunkeeper.Mapping) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.observed = append(k.observed, m)
}

// publish announces a new mapping as the real keeper does on a change.
func (k *fakeKeeper) publish(m stunkeeper.Mapping) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.public = &m
	for _, ch := range k.subs {
		ch <- m
	}
}

type regHarness struct {
	reg    *registration
	f      *fakeRegistrar
	k      *fakeKeeper
	cancel context.CancelFunc
	done   chan error
}

// oneTarget is a provider with a single address.
type oneTarget netip.AddrPort

func (o oneTarget) hops(context.Context) ([]netip.AddrPort, error) {
	return []netip.AddrPort{netip.AddrPort(o)}, nil
}
func (oneTarget) failed(netip.AddrPort)       {}
func (oneTarget) registeredAt(netip.AddrPort) {}

func startReg(t *testing.T, conf Options, k *fakeKeeper, f *fakeRegistrar) *regHarness {
	t.Helper()
	if conf.Name == "" {
		conf = Options{Name: "provider", Domain: "sip.provider.test", Username: "4930123456",
			Password: "lab-secret", Expires: 300 * time.Second, Register: true}
	}
	reg := newRegistration(conf, f.do, oneTarget(registrarAddr), k, lanAddr, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	reg.jitter = func() float64 { return 0.5 } // factor 1.0: exact schedules
	ctx, cancel := context.WithCancel(context.Background())
	h := &regHarness{reg: reg, f: f, k: k, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- reg.run(ctx) }()
	return h
}

func (h *regHarness) stop(t *testing.T) {
	t.Helper()
	h.cancel()
	if err := <-h.done; err != nil {
		t.Errorf("run returned %v", err)
	}
}

func withAuth(reqs []*sip.Request) []*sip.Request {
	var out []*sip.Request
	for _, r := range reqs {
		if r.GetHeader("Authorization") != nil {
			out = append(out, r)
		}
	}
	return out
}

func contacts(req *sip.Request) []string {
	var out []string
	for _, h := range req.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return out
}

// Issue 9 item 13: with no STUN answer the provider must still never see
// the LAN address. An OPTIONS probe with an unresolvable sent-by learns the
// public address from the registrar's received/rport first; the first
// REGISTER already carries it, and no request names 192.168.100.2.
func TestRegisterDigestAndReceivedContact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		h := startReg(t, Options{}, k, f)
		// No STUN answer: wait out the grace period, then register.
		time.Sleep(initialPublicWait + time.Second)
		synctest.Wait()

		reqs, _ := f.snapshot()
		f.mu.Lock()
		probes := append([]*sip.Request(nil), f.options...)
		f.mu.Unlock()
		if len(probes) != 1 || probes[0].Via().Host != unknownHost || !probes[0].Via().Params.Has("rport") {
			t.Fatalf("OPTIONS probes = %d (first Via %v), want 1 with sent-by %s and rport", len(probes), viaOf(probes), unknownHost)
		}
		for _, r := range append(append([]*sip.Request(nil), reqs...), probes...) {
			if strings.Contains(r.String(), "192.168.100.2") {
				t.Errorf("%s names the LAN address:\n%s", r.Method, r)
			}
		}
		// One transaction, challenged once (401, then digest), already
		// with the address the registrar sees.
		authed := withAuth(reqs)
		if len(reqs) != 2 || len(authed) != 1 {
			t.Fatalf("got %d REGISTERs (%d authenticated), want 2 (1)", len(reqs), len(authed))
		}
		if c := contacts(authed[0]); len(c) != 1 || !strings.Contains(c[0], "@198.51.100.1:65002") {
			t.Errorf("first authenticated REGISTER Contact = %v, want the public address", c)
		}
		if v := authed[0].Via(); v.Host != "198.51.100.1" || v.Port != 65002 || !v.Params.Has("rport") {
			t.Errorf("Via = %v, want sent-by the public address with rport", v)
		}
		branches := map[string]bool{}
		for i, r := range reqs {
			b, _ := r.Via().Params.Get("branch")
			if branches[b] {
				t.Errorf("request %d reuses Via branch %s", i, b)
			}
			branches[b] = true
			if r.CallID().Value() != reqs[0].CallID().Value() {
				t.Errorf("request %d changed Call-ID", i)
			}
			if i > 0 && r.CSeq().SeqNo <= reqs[i-1].CSeq().SeqNo {
				t.Errorf("CSeq did not rise: %d after %d", r.CSeq().SeqNo, reqs[i-1].CSeq().SeqNo)
			}
		}
		st := h.reg.Status()
		if !st.Registered || st.Contact != natAddr || st.Public != natAddr || st.Expires != 300*time.Second {
			t.Errorf("status = %+v", st)
		}
		if len(k.observed) == 0 || k.observed[0].Addr != natAddr || k.observed[0].Source != stunkeeper.SourceRegistrar {
			t.Errorf("keeper observations = %+v, want the registrar's view", k.observed)
		}
		h.stop(t)
	})
}

func viaOf(reqs []*sip.Request) *sip.ViaHeader {
	if len(reqs) == 0 {
		return nil
	}
	return reqs[0].Via()
}

func TestRegisterRefreshBeforeExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr, Source: stunkeeper.SourceSTUN}
		f.extra = []sip.Header{sip.NewHeader("Expires", "120")} // the registrar grants less
		start := time.Now()
		h := startReg(t, Options{}, k, f)
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		h.stop(t)

		_, at := f.snapshot()
		// Every refresh is a 401 + authenticated pair; granted 120s means
		// a refresh every 90s: at 0, 90, 180, ... 540, then unregister.
		var authed []time.Duration
		reqs, _ := f.snapshot()
		for i, r := range reqs {
			if r.GetHeader("Authorization") != nil {
				authed = append(authed, at[i].Sub(start))
			}
		}
		if len(authed) < 7 {
			t.Fatalf("authenticated REGISTERs at %v, want a refresh every 90s", authed)
		}
		for i := 1; i < 7; i++ {
			if d := authed[i] - authed[i-1]; d != 90*time.Second {
				t.Errorf("refresh %d came after %v, want 90s (3/4 of the granted 120s)", i, d)
			}
		}
		last := reqs[len(reqs)-1]
		if last.GetHeader("Expires").Value() != "0" {
			t.Errorf("last request Expires = %s, want 0 (unregister on stop)", last.GetHeader("Expires").Value())
		}
	})
}

func TestRegisterWrongPasswordBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr}
		f.password = "other"
		h := startReg(t, Options{}, k, f)
		time.Sleep(time.Second)
		synctest.Wait()
		st := h.reg.Status()
		if st.Registered || !strings.Contains(st.LastError, "check username") {
			t.Fatalf("status = %+v, want a clear authentication error", st)
		}
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		reqs, at := f.snapshot()
		// Backoff 30s, 60s, 120s, ... capped at 30m: about 7 attempts of
		// two requests each in 30 minutes, not a tight loop.
		if len(reqs) > 16 {
			t.Errorf("%d REGISTERs in 30 minutes with a wrong password: no backoff", len(reqs))
		}
		if len(at) < 4 || at[2].Sub(at[1]) < 30*time.Second || at[4].Sub(at[3]) < 60*time.Second {
			t.Errorf("attempts at %v: want 30s, then 60s between failures", at)
		}
		h.stop(t)
	})
}

func TestRegisterNoAnswerBacksOffAndRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr}
		f.silent = true
		h := startReg(t, Options{}, k, f)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		_, at := f.snapshot()
		// Each attempt waits registerTimeout (10s), then 2s, 4s, 8s, 16s...
		for i := 1; i < len(at) && i < 4; i++ {
			want := registerTimeout + retryMin<<(i-1)
			if d := at[i].Sub(at[i-1]); d != want {
				t.Errorf("attempt %d after %v, want %v", i, d, want)
			}
		}
		if st := h.reg.Status(); st.Registered || !errors.Is(errFromStatus(st), ErrNoAnswer) {
			t.Errorf("status = %+v", st)
		}
		f.set(func(f *fakeRegistrar) { f.silent = false })
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if st := h.reg.Status(); !st.Registered {
			t.Errorf("did not recover: %+v", st)
		}
		h.stop(t)
	})
}

// errFromStatus maps the status text back to the sentinel for asserting.
func errFromStatus(s RegStatus) error {
	if strings.HasPrefix(s.LastError, ErrNoAnswer.Error()) {
		return ErrNoAnswer
	}
	return errors.New(s.LastError)
}

func TestRegisterFollowsPublicAddressChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr}
		h := startReg(t, Options{}, k, f)
		time.Sleep(time.Minute)
		synctest.Wait()
		before, _ := f.snapshot()

		// A DSL redial: new IP; the NAT now maps us there.
		redialed := netip.MustParseAddrPort("198.51.100.2:65002")
		f.set(func(f *fakeRegistrar) { f.source = redialed })
		k.publish(stunkeeper.Mapping{Addr: redialed, Via: netip.MustParseAddrPort("198.51.100.60:3478"), Source: stunkeeper.SourceSTUN})
		synctest.Wait()

		reqs, _ := f.snapshot()
		if len(reqs) <= len(before) {
			t.Fatal("no REGISTER after the public address changed")
		}
		last := reqs[len(reqs)-1]
		c := contacts(last)
		if len(c) != 2 || !strings.Contains(c[0], "@198.51.100.2:65002") ||
			!strings.Contains(c[1], "@198.51.100.1:65002") || !strings.Contains(c[1], "expires=0") {
			t.Errorf("Contact after redial = %v, want the new address and the old one removed", c)
		}
		if st := h.reg.Status(); st.Contact != redialed || !st.Registered {
			t.Errorf("status = %+v", st)
		}

		// A port move seen by the registrar's keepalive (an UNREPLIED
		// conntrack entry took the old port) also re-registers at once.
		moved := netip.MustParseAddrPort("198.51.100.2:56786")
		f.set(func(f *fakeRegistrar) { f.source = moved })
		h.reg.Observe(moved)
		synctest.Wait()
		if st := h.reg.Status(); st.Contact != moved {
			t.Errorf("contact after port move = %v, want %v", st.Contact, moved)
		}
		h.stop(t)
	})
}

func TestRegisterIgnoresUnchangedAddress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr}
		h := startReg(t, Options{}, k, f)
		time.Sleep(time.Minute)
		synctest.Wait()
		before, _ := f.snapshot()
		k.publish(stunkeeper.Mapping{Addr: natAddr, Source: stunkeeper.SourceSTUN})
		h.reg.Observe(natAddr)
		synctest.Wait()
		if after, _ := f.snapshot(); len(after) != len(before) {
			t.Errorf("re-registered although the address did not change (%d -> %d requests)", len(before), len(after))
		}
		h.stop(t)
	})
}

func TestRegisterIntervalTooBrief(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr}
		f.status = 423
		f.extra = []sip.Header{sip.NewHeader("Min-Expires", "600")}
		h := startReg(t, Options{}, k, f)
		time.Sleep(time.Second)
		synctest.Wait()
		f.set(func(f *fakeRegistrar) { f.status, f.extra = 0, nil })
		time.Sleep(time.Minute)
		synctest.Wait()
		reqs, _ := f.snapshot()
		var saw600 bool
		for _, r := range reqs {
			saw600 = saw600 || r.GetHeader("Expires").Value() == "600"
		}
		if !saw600 {
			t.Error("never retried with the registrar's Min-Expires")
		}
		h.stop(t)
	})
}

// A registration that has lived for hours is still valid at the registrar
// when one refresh fails: it only counts as gone once the last grant has
// run out.
func TestRegisterStaysValidUntilGrantExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr}
		f.extra = []sip.Header{sip.NewHeader("Expires", "120")}
		h := startReg(t, Options{}, k, f)
		time.Sleep(3 * time.Hour) // many refreshes: Since is long ago
		synctest.Wait()
		f.set(func(f *fakeRegistrar) { f.silent = true })
		// The next refresh is due within 90 s and times out after 10 s;
		// the grant of 120 s from the last success still holds.
		time.Sleep(100 * time.Second)
		synctest.Wait()
		if st := h.reg.Status(); !st.Registered || st.LastError == "" {
			t.Errorf("after one failed refresh: %+v; want still registered, with the error shown", st)
		}
		time.Sleep(2 * time.Minute) // now past the last grant
		synctest.Wait()
		if st := h.reg.Status(); st.Registered {
			t.Errorf("still reported registered after the grant expired: %+v", st)
		}
		f.set(func(f *fakeRegistrar) { f.silent = false })
		h.stop(t)
	})
}
