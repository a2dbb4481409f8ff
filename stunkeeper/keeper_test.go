package stunkeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/stun/v3"
)

var (
	mapA = netip.MustParseAddrPort("5.6.7.8:65002")
	mapB = netip.MustParseAddrPort("5.6.7.8:1024")
	mapC = netip.MustParseAddrPort("5.6.7.9:65002")
)

// fakeNet is a plain fake for tests that need no NAT: Send records the
// request and, if answer says so, answers synchronously.
type fakeNet struct {
	mu     sync.Mutex
	k      *Keeper
	sent   []*stun.Message
	to     []netip.AddrPort
	err    error
	answer map[netip.AddrPort]netip.AddrPort // destination -> mapped address it reports
}

func (f *fakeNet) send(b []byte, to netip.AddrPort) error {
	m := new(stun.Message)
	if err := stun.Decode(b, m); err != nil {
		panic(err)
	}
	f.mu.Lock()
	err := f.err
	if err == nil {
		f.sent = append(f.sent, m)
		f.to = append(f.to, to)
	}
	mapped, ok := f.answer[to]
	k := f.k
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if ok {
		k.HandlePacket(response(m.TransactionID, mapped, true), to)
	}
	return nil
}

func (f *fakeNet) requests() []*stun.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*stun.Message(nil), f.sent...)
}

func newFakeKeeper(t *testing.T, f *fakeNet, cfg Config) *Keeper {
	t.Helper()
	cfg.Send = f.send
	k, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.k = k
	return k
}

func response(id txID, mapped netip.AddrPort, xor bool) []byte {
	setters := []stun.Setter{stun.NewTransactionIDSetter(id), stun.BindingSuccess}
	ip, port := mapped.Addr().AsSlice(), int(mapped.Port())
	if xor {
		setters = append(setters, &stun.XORMappedAddress{IP: ip, Port: port})
	} else {
		setters = append(setters, &stun.MappedAddress{IP: ip, Port: port})
	}
	return stun.MustBuild(setters...).Raw
}

func TestIsSTUN(t *testing.T) {
	valid := response(txID{1}, mapA, true)
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"binding response", valid, true},
		{"nil", nil, false},
		{"header only, 19 bytes", valid[:19], false},
		{"SIP", []byte("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1\r\n\r\n"), false},
		{"RTP", append([]byte{0x80, 0x08}, valid[2:]...), false},
		{"no cookie", append(append([]byte{1, 1, 0, 0}, 0, 0, 0, 0), make([]byte, 12)...), false},
		{"first byte 3 (RFC 7983 range)", append([]byte{3}, valid[1:]...), true},
		{"first byte 4", append([]byte{4}, valid[1:]...), false},
	} {
		if got := IsSTUN(tc.b); got != tc.want {
			t.Errorf("%s: IsSTUN = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, ErrNoSend) {
		t.Errorf("no Send: %v, want ErrNoSend", err)
	}
	send := func([]byte, netip.AddrPort) error { return nil }
	for _, s := range []string{"", ":3478", "host:0", "host:99999", "host:x", "::1"} {
		if _, err := New(Config{Send: send, Servers: []string{s}}); !errors.Is(err, ErrBadServer) {
			t.Errorf("server %q: %v, want ErrBadServer", s, err)
		}
	}
	k, err := New(Config{Send: send, Servers: []string{"stun.example", "1.2.3.4:19302", "[2001:db8::1]:3478"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"stun.example:3478", "1.2.3.4:19302", "[2001:db8::1]:3478"}
	for i, s := range k.servers {
		if s.hostport != want[i] {
			t.Errorf("server %d = %q, want %q", i, s.hostport, want[i])
		}
	}
	if !k.servers[1].literal || k.servers[1].addr != netip.MustParseAddrPort("1.2.3.4:19302") {
		t.Errorf("literal server not pre-resolved: %+v", k.servers[1])
	}
	if k.interval != DefaultInterval || k.NAT() != NATUnknown {
		t.Errorf("defaults: interval %v, NAT %v", k.interval, k.NAT())
	}
}

// Garbage and foreign STUN must be counted and dropped, never matched and
// never a panic; an error response ends its transaction.
func TestHandlePacketGarbage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{}
		k := newFakeKeeper(t, f, Config{})
		from := stun1

		errc := make(chan error, 1)
		go func() {
			_, err := k.Probe(context.Background(), stun1)
			errc <- err
		}()
		synctest.Wait()
		id := f.requests()[0].TransactionID

		ok := response(id, mapA, true)
		truncated := append([]byte(nil), ok...)
		binary.BigEndian.PutUint16(truncated[2:4], uint16(len(ok)-20+8)) // claims more than is there
		badAttr := append([]byte(nil), ok...)
		binary.BigEndian.PutUint16(badAttr[22:24], 200) // attribute longer than the message
		withFP := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: mapA.Addr().AsSlice(), Port: 65002}, stun.Fingerprint).Raw
		badFP := append([]byte(nil), withFP...)
		badFP[len(badFP)-1] ^= 0xff
		noAddr := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess).Raw
		zeroAddr := response(id, netip.MustParseAddrPort("0.0.0.0:0"), true)
		badFamily := append([]byte(nil), ok...)
		badFamily[25] = 7 // XOR-MAPPED-ADDRESS family
		request := stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw
		allocate := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse)).Raw
		unknown := response(txID{9, 9, 9}, mapA, true)

		for _, tc := range []struct {
			name string
			b    []byte
		}{
			{"nil", nil},
			{"SIP", []byte("OPTIONS sip:x SIP/2.0\r\n\r\n")},
			{"truncated message", truncated},
			{"attribute overruns message", badAttr},
			{"bad fingerprint", badFP},
			{"success without address", noAddr},
			{"zero address", zeroAddr},
			{"bad address family", badFamily},
			{"binding request to us", request},
			{"allocate response", allocate},
			{"unknown transaction", unknown},
		} {
			if k.HandlePacket(tc.b, from) {
				t.Errorf("%s: HandlePacket = true", tc.name)
			}
		}
		st := k.Stats()
		if st.Malformed != 8 || st.Unmatched != 3 || st.Responses != 0 {
			t.Errorf("Malformed %d (want 8), Unmatched %d (want 3), Responses %d (want 0)", st.Malformed, st.Unmatched, st.Responses)
		}

		// None of that ended the transaction; an error response does.
		errResp := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingError,
			stun.ErrorCodeAttribute{Code: stun.CodeBadRequest, Reason: []byte("no")}).Raw
		if k.HandlePacket(errResp, from) {
			t.Error("error response: HandlePacket = true")
		}
		if err := <-errc; !errors.Is(err, ErrErrorResponse) {
			t.Errorf("Probe: %v, want ErrErrorResponse", err)
		}
		if k.HandlePacket(ok, from) {
			t.Error("answer to a finished transaction matched")
		}
		if st := k.Stats(); st.ErrorResponses != 1 || st.Unmatched != 4 {
			t.Errorf("ErrorResponses %d, Unmatched %d; want 1, 4", st.ErrorResponses, st.Unmatched)
		}
	})
}

// HandlePacket must copy: the socket owner reuses its read buffer.
func TestHandlePacketDoesNotRetainBuffer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{}
		k := newFakeKeeper(t, f, Config{})
		type res struct {
			a   netip.AddrPort
			err error
		}
		done := make(chan res, 1)
		go func() {
			a, err := k.Probe(context.Background(), stun1)
			done <- res{a, err}
		}()
		synctest.Wait()
		buf := response(f.requests()[0].TransactionID, mapA, false) // RFC 3489 MAPPED-ADDRESS
		if !k.HandlePacket(buf, stun1) {
			t.Fatal("valid answer not matched")
		}
		clear(buf)
		r := <-done
		if r.err != nil || r.a != mapA {
			t.Fatalf("Probe = %v, %v; want %v", r.a, r.err, mapA)
		}
		if m, _ := k.Public(); m.Addr != mapA || m.Via != stun1 {
			t.Errorf("Public() = %+v", m)
		}
	})
}

func TestChangeEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{}
		k := newFakeKeeper(t, f, Config{})
		events, unsubscribe := k.Subscribe()
		reg := regSIP

		k.Observe(Mapping{Addr: mapA, Via: reg})
		k.Observe(Mapping{Addr: mapA, Via: reg})                       // same: no event
		k.Observe(Mapping{Addr: mapB, Via: reg})                       // port change
		k.Observe(Mapping{Addr: mapC, Via: reg})                       // IP change
		k.Observe(Mapping{Addr: mapC, Via: stun1, Source: SourceSTUN}) // first for this destination
		k.Observe(Mapping{Via: reg})                                   // invalid: ignored

		evs := drain(events)
		want := []netip.AddrPort{mapA, mapB, mapC, mapC}
		if len(evs) != len(want) {
			t.Fatalf("events %v, want addresses %v", evs, want)
		}
		for i, e := range evs {
			if e.Addr != want[i] || e.At.IsZero() {
				t.Errorf("event %d = %+v, want %v", i, e, want[i])
			}
		}
		if evs[0].Source != SourceRegistrar {
			t.Errorf("Observe default source = %q", evs[0].Source)
		}
		if st := k.Stats(); st.Changes != 4 {
			t.Errorf("Changes = %d", st.Changes)
		}
		unsubscribe()
		unsubscribe()
		if _, open := <-events; open {
			t.Error("channel open after unsubscribe")
		}
	})
}

// A slow subscriber loses old events, never blocks the keeper.
func TestSubscribeDropsOldest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{}
		k := newFakeKeeper(t, f, Config{})
		events, _ := k.Subscribe()
		for i := range subBuffer + 5 {
			k.Observe(Mapping{Addr: netip.AddrPortFrom(mapA.Addr(), uint16(1000+i)), Via: regSIP})
		}
		evs := drain(events)
		if len(evs) != subBuffer || evs[0].Addr.Port() != 1005 || evs[len(evs)-1].Addr.Port() != uint16(1000+subBuffer+4) {
			t.Errorf("got %d events %v..., want the newest %d", len(evs), evs[:1], subBuffer)
		}

		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := k.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if _, open := <-events; open {
			t.Error("subscriber channel open after Run returned")
		}
		late, _ := k.Subscribe()
		if _, open := <-late; open {
			t.Error("Subscribe after Run returned an open channel")
		}
	})
}

// Public prefers STUN, unless it is stale and the registrar saw
// something newer (a redial during a STUN outage). Uses Config.Now.
func TestPublicPreference(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	f := &fakeNet{}
	k := newFakeKeeper(t, f, Config{Now: func() time.Time { return now }, Interval: 10 * time.Second})
	if _, ok := k.Public(); ok {
		t.Fatal("Public() ok before any observation")
	}
	k.Observe(Mapping{Addr: mapB, Via: regSIP})
	if m, _ := k.Public(); m.Addr != mapB || m.Source != SourceRegistrar {
		t.Errorf("only registrar: %+v", m)
	}
	k.Observe(Mapping{Addr: mapA, Via: stun1, Source: SourceSTUN})
	now = now.Add(5 * time.Second)
	k.Observe(Mapping{Addr: mapC, Via: regSIP})
	if m, _ := k.Public(); m.Addr != mapA {
		t.Errorf("fresh STUN must win: %+v", m)
	}
	now = now.Add(30 * time.Second)
	k.Observe(Mapping{Addr: mapC, Via: regSIP})
	if m, _ := k.Public(); m.Addr != mapC || !m.At.Equal(now) {
		t.Errorf("stale STUN, newer registrar: %+v, want %v", m, mapC)
	}
}

func TestNATFromRegistrarObservation(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	f := &fakeNet{}
	log, logs := newLogs()
	k := newFakeKeeper(t, f, Config{Now: func() time.Time { return now }, Logger: log})
	k.Observe(Mapping{Addr: mapA, Via: stun1, Source: SourceSTUN})
	k.Observe(Mapping{Addr: mapA, Via: netip.MustParseAddrPort("1.2.3.4:5060")}) // same IP: says nothing
	if got := k.NAT(); got != NATUnknown {
		t.Fatalf("same destination IP: NAT() = %v", got)
	}
	now = now.Add(25 * time.Second) // > 2 intervals: too far apart to compare
	k.Observe(Mapping{Addr: mapB, Via: regSIP})
	if got := k.NAT(); got != NATUnknown {
		t.Fatalf("stale pair: NAT() = %v", got)
	}
	k.Observe(Mapping{Addr: mapA, Via: stun1, Source: SourceSTUN})
	if got := k.NAT(); got != NATSymmetric {
		t.Fatalf("NAT() = %v, want symmetric", got)
	}
	const msg = "NAT maps per destination (symmetric): STUN server 1.2.3.4:3478 sees 5.6.7.8:65002, registrar 203.0.113.10:5060 sees 5.6.7.8:1024; inbound calls rely on registration"
	if n := logs.count(msg); n != 1 {
		t.Errorf("want the plain symmetric message once, got %d; logs: %v", n, logs.All())
	}

	// After a redial both sides must be seen anew before a verdict.
	now = now.Add(time.Second)
	k.Observe(Mapping{Addr: mapC, Via: stun1, Source: SourceSTUN})
	if got := k.NAT(); got != NATSymmetric {
		t.Errorf("one side re-observed: NAT() = %v, want the old verdict kept", got)
	}
	k.Observe(Mapping{Addr: mapC, Via: regSIP})
	if got := k.NAT(); got != NATEndpointIndependent {
		t.Errorf("both agree: NAT() = %v", got)
	}
}

// Observations count as learned: a registrar that tells us our address
// every few seconds leaves STUN idle on a busy socket.
func TestObserveCountsAsLearned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{answer: map[netip.AddrPort]netip.AddrPort{stun1: mapA}}
		k := newFakeKeeper(t, f, Config{Servers: []string{stun1.String()}, Interval: 10 * time.Second})
		stop := runKeeper(t, k)
		defer stop()
		for range 59 { // 295 s: no deadline coincides with the end
			time.Sleep(5 * time.Second)
			k.NoteSent(regSIP)
			k.Observe(Mapping{Addr: mapA, Via: regSIP})
		}
		stop()
		// Only the first query plus the NAT checks every 10 intervals.
		if n, st := len(f.requests()), k.Stats(); n != 3 || st.IdleKeepalives+st.Refreshes != 1 {
			t.Errorf("%d requests, stats %+v; want 3 (start + NAT checks at 100 and 200 s)", n, st)
		}
	})
}

// Send errors are counted and logged once; Run carries on.
func TestSendErrorsAreNotFatal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{err: errors.New("sendto: network is unreachable"), answer: map[netip.AddrPort]netip.AddrPort{stun1: mapA}}
		log, logs := newLogs()
		k := newFakeKeeper(t, f, Config{Servers: []string{stun1.String()}, Logger: log})
		stop := runKeeper(t, k)
		defer stop()
		time.Sleep(time.Minute)
		if st := k.Stats(); st.SendErrors < 8 || st.Requests != 0 {
			t.Errorf("stats %+v", st)
		}
		f.mu.Lock()
		f.err = nil
		f.mu.Unlock()
		time.Sleep(2 * time.Minute)
		stop()
		if _, ok := k.Public(); !ok {
			t.Error("no address after the network came back")
		}
		if a, b := logs.count("stun send failing"), logs.count("stun send working again"); a != 1 || b != 1 {
			t.Errorf("send state logged %d/%d times, want 1/1", a, b)
		}
	})
}

func TestRunLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{answer: map[netip.AddrPort]netip.AddrPort{stun1: mapA}}
		k := newFakeKeeper(t, f, Config{Servers: []string{stun1.String()}, Interval: time.Hour})
		stop := runKeeper(t, k)
		defer stop()
		synctest.Wait()
		if err := k.Run(context.Background()); !errors.Is(err, ErrRunning) {
			t.Errorf("second Run: %v, want ErrRunning", err)
		}
		before := len(f.requests())
		if err := k.Refresh(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := len(f.requests()); n != before+1 {
			t.Errorf("Refresh sent %d requests, want 1", n-before)
		}
		stop()
		if err := k.Run(context.Background()); !errors.Is(err, ErrClosed) {
			t.Errorf("Run after Run: %v, want ErrClosed", err)
		}
		if err := k.Refresh(); !errors.Is(err, ErrClosed) {
			t.Errorf("Refresh after Run: %v, want ErrClosed", err)
		}
		if _, err := k.Probe(context.Background(), stun1); !errors.Is(err, ErrClosed) {
			t.Errorf("Probe after Run: %v, want ErrClosed", err)
		}

		k2 := newFakeKeeper(t, &fakeNet{}, Config{})
		if err := k2.Refresh(); !errors.Is(err, ErrNoServers) {
			t.Errorf("Refresh without servers: %v, want ErrNoServers", err)
		}
	})
}

func TestBackoffBounds(t *testing.T) {
	k := newFakeKeeper(t, &fakeNet{}, Config{Interval: 10 * time.Second})
	for step, base := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 3: 40 * time.Second, 4: time.Minute, 10: time.Minute} {
		for range 50 {
			d := k.backoff(step)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("backoff(%d) = %v, want %v ±20%%", step, d, base)
			}
		}
	}
	long := newFakeKeeper(t, &fakeNet{}, Config{Interval: 5 * time.Minute})
	if d := long.backoff(3); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("Interval above the cap: backoff = %v, want ~Interval", d)
	}
}

// Cancelling Run mid-transaction returns at once; the bubble then checks
// that nothing of the keeper is left running.
func TestRunStopsMidTransaction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeNet{} // never answers
		k := newFakeKeeper(t, f, Config{Servers: []string{stun1.String(), stun2.String()}})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- k.Run(ctx) }()
		time.Sleep(time.Second) // between the first retransmits
		start := time.Now()
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Run took %v to return", d)
		}
		if st := k.Stats(); st.Timeouts != 0 || st.Failovers != 0 {
			t.Errorf("cancellation counted as a server failure: %+v", st)
		}
		if n := k.txs.len(); n != 0 {
			t.Errorf("%d transactions left registered", n)
		}
	})
}
