package stunkeeper

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/transport/v4/vnet"
)

var pub1 = netip.MustParseAddr("5.6.7.8")

// The keepalive is what keeps the NAT mapping (30 s lifetime here) and
// so the public port; without it the same NAT hands out a new port. The
// second case proves the first one can fail.
func TestKeepaliveKeepsMapping(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		samePort bool
	}{
		{"keepalive every 10s", 10 * time.Second, true},
		{"keepalive disabled", 24 * time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t, natType(vnet.EndpointIndependent))
				srv := l.addResponder(stun1)
				stop := l.start()
				defer stop()
				k := l.newKeeper(Config{Servers: []string{stun1.String()}, Interval: tc.interval})
				events, _ := k.Subscribe()
				stopRun := runKeeper(t, k)
				defer stopRun()

				synctest.Wait()
				first, ok := k.Public()
				if !ok || first.Addr.Addr() != pub1 || first.Via != stun1 || first.Source != SourceSTUN {
					t.Fatalf("Public() = %+v, %v; want 5.6.7.8:* via %v", first, ok, stun1)
				}

				time.Sleep(10 * time.Minute)
				got, err := k.Probe(context.Background(), stun1)
				if err != nil {
					t.Fatal(err)
				}
				stopRun()

				if same := got == first.Addr; same != tc.samePort {
					t.Errorf("after 10 min: mapped %v, first %v; same=%v, want %v", got, first.Addr, same, tc.samePort)
				}
				evs := drain(events)
				wantEvents := 1
				if !tc.samePort {
					wantEvents = 2
				}
				if len(evs) != wantEvents {
					t.Errorf("got %d change events %v, want %d", len(evs), evs, wantEvents)
				}
				if tc.samePort {
					// One keepalive per idle interval, nothing more.
					if n := len(srv.requests()); n < 60 || n > 62 {
						t.Errorf("responder saw %d requests in 10 min, want ~61", n)
					}
					for _, from := range srv.sources() {
						if from != first.Addr {
							t.Fatalf("a keepalive left from %v, want %v: mapping was lost", from, first.Addr)
						}
					}
				}
			})
		})
	}
}

// Rule 1 vs rule 2: a busy socket needs no idle keepalive, but the
// address is still learned once per interval so a redial shows.
func TestBusySocketLearnsOncePerInterval(t *testing.T) {
	for _, tc := range []struct {
		name          string
		busy          bool
		wantIdle      uint64
		wantRefreshes uint64
	}{
		{"busy socket", true, 0, 10},
		{"idle socket", false, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t, natType(vnet.EndpointIndependent))
				srv := l.addResponder(stun1)
				stop := l.start()
				defer stop()
				k := l.newKeeper(Config{Servers: []string{stun1.String()}, Interval: 10 * time.Second})
				if tc.busy {
					k.NoteSent(regSIP) // SIP traffic before Run starts
				}
				start := time.Now()
				stopRun := runKeeper(t, k)
				defer stopRun()
				// 95 s, so no deadline coincides with the end of the test.
				for range 95 {
					time.Sleep(time.Second)
					if tc.busy {
						k.NoteSent(regSIP)
					}
				}
				stopRun()

				st := k.Stats()
				if st.IdleKeepalives != tc.wantIdle || st.Refreshes != tc.wantRefreshes {
					t.Errorf("idle keepalives %d, refreshes %d; want %d, %d", st.IdleKeepalives, st.Refreshes, tc.wantIdle, tc.wantRefreshes)
				}
				reqs := srv.requests()
				if len(reqs) != 10 {
					t.Fatalf("responder saw %d requests in 95 s, want 10", len(reqs))
				}
				for i, at := range reqs {
					if want := time.Duration(i) * 10 * time.Second; at.Sub(start) != want {
						t.Errorf("request %d at %v, want %v", i, at.Sub(start), want)
					}
				}
			})
		})
	}
}

// RFC 5389 retransmits: 0, 0.5, 1.5, 3.5 s on the fake clock.
func TestRetransmitOnLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		srv := l.addResponder(stun1)
		srv.drop = 3
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{})

		start := time.Now()
		got, err := k.Probe(context.Background(), stun1)
		if err != nil {
			t.Fatal(err)
		}
		if got.Addr() != pub1 {
			t.Errorf("mapped %v, want %v:*", got, pub1)
		}
		if d := time.Since(start); d != 3500*time.Millisecond {
			t.Errorf("answered after %v, want 3.5s", d)
		}
		want := []time.Duration{0, 500 * time.Millisecond, 1500 * time.Millisecond, 3500 * time.Millisecond}
		reqs := srv.requests()
		if len(reqs) != len(want) {
			t.Fatalf("got %d requests, want %d", len(reqs), len(want))
		}
		for i, at := range reqs {
			if at.Sub(start) != want[i] {
				t.Errorf("send %d at %v, want %v", i, at.Sub(start), want[i])
			}
		}
		st := k.Stats()
		if st.Requests != 4 || st.Retransmits != 3 || st.Responses != 1 || st.LastRTT != 0 {
			t.Errorf("stats %+v", st)
		}
	})
}

func TestProbeTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		srv := l.addResponder(stun1)
		srv.setDead(true)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{})

		start := time.Now()
		_, err := k.Probe(context.Background(), stun1)
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("err = %v, want ErrTimeout", err)
		}
		if d := time.Since(start); d != 5500*time.Millisecond {
			t.Errorf("gave up after %v, want 5.5s", d)
		}
		if n := len(srv.requests()); n != maxTries {
			t.Errorf("%d sends, want %d", n, maxTries)
		}
		if st := k.Stats(); st.Timeouts != 1 {
			t.Errorf("Timeouts = %d", st.Timeouts)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := k.Probe(ctx, stun1); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("with a 1s ctx: err = %v, want DeadlineExceeded", err)
		}
	})
}

func TestFailoverToSecondServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		dead := l.addResponder(stun1)
		dead.setDead(true)
		l.addResponder(stun2)
		stop := l.start()
		defer stop()
		log, logs := newLogs()
		k := l.newKeeper(Config{Servers: []string{stun1.String(), stun2.String()}, Logger: log})
		stopRun := runKeeper(t, k)
		defer stopRun()

		time.Sleep(5500 * time.Millisecond) // the first server's transaction times out
		synctest.Wait()
		m, ok := k.Public()
		if !ok || m.Via != stun2 {
			t.Fatalf("Public() = %+v, %v; want via %v right after the failover", m, ok, stun2)
		}
		time.Sleep(time.Minute)
		stopRun()
		st := k.Stats()
		if st.Failovers != 1 {
			t.Errorf("Failovers = %d, want 1 (stays on the working server)", st.Failovers)
		}
		if n := logs.count("stun server not answering"); n != 1 {
			t.Errorf("logged 'not answering' %d times, want 1", n)
		}
	})
}

// All servers dead: retries back off instead of looping, and the keeper
// recovers when a server returns.
func TestAllServersDeadBackoffAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		r1, r2 := l.addResponder(stun1), l.addResponder(stun2)
		r1.setDead(true)
		r2.setDead(true)
		stop := l.start()
		defer stop()
		log, logs := newLogs()
		k := l.newKeeper(Config{Servers: []string{stun1.String(), stun2.String()}, Interval: 10 * time.Second, Logger: log})
		events, _ := k.Subscribe()
		stopRun := runKeeper(t, k)
		defer stopRun()

		time.Sleep(5 * time.Minute)
		synctest.Wait()
		sends := len(r1.requests()) + len(r2.requests())
		// A tight loop would send ~218 requests (4 per 5.5 s); rounds at
		// about 0, 21, 52, 103, 174, 245 s send 8 each.
		if sends < 24 || sends > 64 {
			t.Errorf("%d requests to dead servers in 5 min, want 24..64", sends)
		}
		if _, ok := k.Public(); ok {
			t.Error("Public() reports an address though nothing answered")
		}
		if n := logs.count("stun server not answering"); n != 2 {
			t.Errorf("'not answering' logged %d times, want once per server", n)
		}
		if n := logs.count("no stun server answering; backing off"); n != 1 {
			t.Errorf("'backing off' logged %d times, want 1", n)
		}

		r2.setDead(false)
		// Backoff is capped at 60 s (+20% jitter) plus one failed round.
		time.Sleep(2 * time.Minute)
		stopRun()
		m, ok := k.Public()
		if !ok || m.Via != stun2 {
			t.Fatalf("Public() = %+v, %v after recovery; want via %v", m, ok, stun2)
		}
		if len(drain(events)) == 0 {
			t.Error("no change event after recovery")
		}
		if n := logs.count("stun server answering again"); n != 1 {
			t.Errorf("'answering again' logged %d times, want 1", n)
		}
	})
}

// An Interval longer than the NAT's mapping lifetime loses the mapping:
// the keeper must report the new port as a change.
func TestChangeEventOnPortChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		l.addResponder(stun1)
		stop := l.start()
		defer stop()
		log, logs := newLogs()
		k := l.newKeeper(Config{Servers: []string{stun1.String()}, Interval: 40 * time.Second, Logger: log})
		events, unsubscribe := k.Subscribe()
		defer unsubscribe()
		stopRun := runKeeper(t, k)
		defer stopRun()
		time.Sleep(45 * time.Second)
		stopRun()

		evs := drain(events)
		if len(evs) != 2 {
			t.Fatalf("events %v, want first observation and a port change", evs)
		}
		a, b := evs[0], evs[1]
		if a.Addr.Addr() != b.Addr.Addr() || a.Addr.Port() == b.Addr.Port() || b.Via != stun1 {
			t.Errorf("want a port-only change via %v, got %v -> %v", stun1, a, b)
		}
		if got := b.At.Sub(a.At); got != 40*time.Second {
			t.Errorf("change seen after %v, want 40s", got)
		}
		if n := logs.count("public address changed"); n != 1 {
			t.Errorf("'public address changed' logged %d times, want 1", n)
		}
	})
}

// A DSL redial: the socket's traffic now leaves through a NAT with
// another public IP. The socket stays busy, so only rule 2 can notice,
// within one interval.
func TestChangeEventOnIPChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent), "5.6.7.8", "5.6.7.9")
		l.addResponder(stun1)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{Servers: []string{stun1.String()}, Interval: 10 * time.Second})
		events, _ := k.Subscribe()
		stopRun := runKeeper(t, k)
		defer stopRun()

		var wg sync.WaitGroup
		ctx, cancel := context.WithCancel(context.Background())
		wg.Go(func() { // SIP chatter keeps the socket busy
			for ctx.Err() == nil {
				time.Sleep(time.Second)
				k.NoteSent(regSIP)
			}
		})
		time.Sleep(25 * time.Second)
		redial := time.Now()
		l.sock.active.Store(1)
		time.Sleep(30 * time.Second)
		cancel()
		wg.Wait()
		stopRun()

		evs := drain(events)
		if len(evs) != 2 {
			t.Fatalf("events %v, want first observation and the IP change", evs)
		}
		if evs[0].Addr.Addr() != pub1 || evs[1].Addr.Addr() != netip.MustParseAddr("5.6.7.9") {
			t.Errorf("events %v, want 5.6.7.8 then 5.6.7.9", evs)
		}
		if late := evs[1].At.Sub(redial); late > 10*time.Second {
			t.Errorf("IP change noticed %v after the redial, want within one interval", late)
		}
	})
}

func TestRFC3489Server(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		r := l.addResponder(stun1)
		r.rfc3489 = true
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{Servers: []string{stun1.String()}})
		stopRun := runKeeper(t, k)
		defer stopRun()
		synctest.Wait()
		stopRun()
		m, ok := k.Public()
		if !ok || m.Addr.Addr() != pub1 || m.Addr.Port() == 0 {
			t.Fatalf("Public() = %+v, %v; want 5.6.7.8:* from MAPPED-ADDRESS", m, ok)
		}
	})
}

// netcheck's MappingVariesByDestIP, in vnet: two STUN servers behind an
// endpoint-independent NAT agree, behind an address-dependent one not.
func TestNATBehaviourDetection(t *testing.T) {
	for _, tc := range []struct {
		mapping vnet.EndpointDependencyType
		want    NATBehaviour
	}{
		{vnet.EndpointIndependent, NATEndpointIndependent},
		{vnet.EndpointAddrDependent, NATSymmetric},
		{vnet.EndpointAddrPortDependent, NATSymmetric},
	} {
		t.Run(fmt.Sprint(tc.mapping), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// With real RTTs the NAT-check answer is the newest one.
				l := newLabDelay(t, natType(tc.mapping), 15*time.Millisecond)
				l.addResponder(stun1)
				l.addResponder(stun2)
				stop := l.start()
				defer stop()
				log, logs := newLogs()
				k := l.newKeeper(Config{Servers: []string{stun1.String(), stun2.String()}, Logger: log})
				if got := k.NAT(); got != NATUnknown {
					t.Errorf("before any answer NAT() = %v", got)
				}
				stopRun := runKeeper(t, k)
				defer stopRun()
				time.Sleep(time.Second) // both answers are in after 60 ms
				if got := k.NAT(); got != tc.want {
					t.Errorf("NAT() = %v, want %v", got, tc.want)
				}
				// Public follows Run's server, not the NAT-check server,
				// so it does not flap behind a symmetric NAT.
				for range 30 {
					time.Sleep(10 * time.Second) // periodic re-checks must not re-log
					if m, _ := k.Public(); m.Via != stun1 {
						t.Fatalf("Public() = %+v, want via %v", m, stun1)
					}
				}
				stopRun()
				if got := k.NAT(); got != tc.want {
					t.Errorf("after 5 min NAT() = %v, want %v", got, tc.want)
				}
				if st := k.Stats(); st.NATChecks < 2 || st.LastRTT != 30*time.Millisecond {
					t.Errorf("NATChecks = %d, LastRTT = %v; want periodic re-checks, 30ms", st.NATChecks, st.LastRTT)
				}
				msgs := logs.FilterMessageSnippet("NAT maps per destination (symmetric)").Len() +
					logs.count("NAT mapping is endpoint-independent")
				if msgs != 1 {
					t.Errorf("NAT verdict logged %d times, want once", msgs)
				}
				// The NAT-check server's churn is not the public address.
				if n := logs.count("public address changed"); n != 0 {
					t.Errorf("'public address changed' logged %d times, want 0", n)
				}
				if tc.want == NATSymmetric && logs.count("address seen by destination changed") == 0 {
					t.Error("expected the NAT-check server to see new ports (mapping expired between checks)")
				}
			})
		})
	}
}

// The trunk keeps the registrar's own NAT flow alive by probing the
// registrar's SIP port (conntrack times each 5-tuple separately).
func TestProbeArbitraryDestination(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		l.addResponder(stun1)
		l.addResponder(regSIP)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{Servers: []string{stun1.String()}})
		stopRun := runKeeper(t, k)
		defer stopRun()

		// Probe concurrently with Run and with each other.
		var wg sync.WaitGroup
		got := make([]netip.AddrPort, 4)
		for i := range got {
			wg.Go(func() {
				a, err := k.Probe(context.Background(), regSIP)
				if err != nil {
					t.Error(err)
				}
				got[i] = a
			})
		}
		wg.Wait()
		synctest.Wait()
		stun, _ := k.Public()
		for _, a := range got {
			if a != stun.Addr {
				t.Errorf("registrar sees %v, STUN server %v; same NAT mapping expected", a, stun.Addr)
			}
		}
		var viaReg bool
		for _, o := range k.Observations() {
			viaReg = viaReg || o.Via == regSIP
		}
		if !viaReg {
			t.Error("probe result not recorded as an observation")
		}
		if n := k.NAT(); n != NATEndpointIndependent {
			t.Errorf("NAT() = %v after agreeing probe", n)
		}
		stopRun()

		if _, err := k.Probe(context.Background(), regSIP); !isClosedErr(err) {
			t.Errorf("Probe after Run returned: %v, want ErrClosed", err)
		}
	})
}

// A Probe waiting for an answer when Run returns ends with ErrClosed.
func TestProbeInFlightWhenRunEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		l.addResponder(stun1).setDead(true)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{})
		stopRun := runKeeper(t, k)
		defer stopRun()
		errc := make(chan error, 1)
		go func() {
			_, err := k.Probe(context.Background(), stun1)
			errc <- err
		}()
		time.Sleep(time.Second)
		stopRun()
		if err := <-errc; !isClosedErr(err) {
			t.Errorf("in-flight Probe: %v, want ErrClosed", err)
		}
	})
}

// A name that does not resolve is a failed server: fail over, count it.
func TestResolveFailureFailsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		l.addResponder(stun2)
		stop := l.start()
		defer stop()
		resolve := func(ctx context.Context, hp string) (netip.AddrPort, error) {
			if hp == "stun2.example:3478" {
				return stun2, nil
			}
			return netip.AddrPort{}, fmt.Errorf("lookup %s: no such host", hp)
		}
		k := l.newKeeper(Config{Servers: []string{"stun1.example:3478", "stun2.example"}, Resolve: resolve})
		stopRun := runKeeper(t, k)
		defer stopRun()
		synctest.Wait()
		stopRun()
		m, ok := k.Public()
		if !ok || m.Via != stun2 {
			t.Fatalf("Public() = %+v, %v; want via %v", m, ok, stun2)
		}
		// The second failed lookup is the NAT check asking the other server.
		if st := k.Stats(); st.ResolveErrors != 2 || st.Failovers != 1 {
			t.Errorf("ResolveErrors %d, Failovers %d; want 2, 1", st.ResolveErrors, st.Failovers)
		}
	})
}

// A reload swaps the servers under a running keeper: from a dead server
// to a working one, and from none at all to one.
func TestSetServers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		dead := l.addResponder(stun1)
		dead.setDead(true)
		alive := l.addResponder(stun2)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{Servers: []string{stun1.String()}, Interval: 10 * time.Second})
		stopRun := runKeeper(t, k)
		defer stopRun()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if _, ok := k.Public(); ok {
			t.Fatal("learned an address from a dead server")
		}
		if err := k.SetServers([]string{"bad host:port:x"}); err == nil {
			t.Error("an unparsable server list was accepted")
		}
		if err := k.SetServers([]string{stun2.String()}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if m, ok := k.Public(); !ok || m.Via != stun2 {
			t.Errorf("Public() = %+v, %v one second after the reload, want an answer via %v", m, ok, stun2)
		}
		if len(alive.requests()) == 0 {
			t.Error("the new server was never asked")
		}
	})
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		l.addResponder(stun1)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{Interval: 10 * time.Second})
		stopRun := runKeeper(t, k)
		defer stopRun()
		time.Sleep(time.Minute)
		if err := k.Refresh(); !errors.Is(err, ErrNoServers) {
			t.Errorf("Refresh with no servers = %v", err)
		}
		if err := k.SetServers([]string{stun1.String()}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if m, ok := k.Public(); !ok || m.Via != stun1 {
			t.Errorf("Public() = %+v, %v after adding a server to none", m, ok)
		}
	})
}

// LimitIdle moves the idle keepalive under a running keeper at once, and
// 0 gives Interval back.
func TestLimitIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		srv := l.addResponder(stun1)
		stop := l.start()
		defer stop()
		k := l.newKeeper(Config{Servers: []string{stun1.String()}, Interval: 40 * time.Second})
		start := time.Now()
		stopRun := runKeeper(t, k)
		defer stopRun()
		time.Sleep(5 * time.Second)
		k.LimitIdle(15 * time.Second)
		if got := k.KeepaliveInterval(); got != 15*time.Second {
			t.Errorf("KeepaliveInterval = %v, want 15s", got)
		}
		time.Sleep(41 * time.Second) // keepalives at 15, 30, 45
		k.LimitIdle(0)
		time.Sleep(50 * time.Second) // then at 85
		stopRun()
		want := []time.Duration{0, 15 * time.Second, 30 * time.Second, 45 * time.Second, 85 * time.Second}
		reqs := srv.requests()
		if len(reqs) != len(want) {
			t.Fatalf("%d requests, want %d", len(reqs), len(want))
		}
		for i, at := range reqs {
			if at.Sub(start) != want[i] {
				t.Errorf("keepalive %d at %v, want %v", i, at.Sub(start), want[i])
			}
		}
		if got := k.KeepaliveInterval(); got != 40*time.Second {
			t.Errorf("after LimitIdle(0): %v, want the 40s Interval", got)
		}
	})
}
