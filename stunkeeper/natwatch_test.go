package stunkeeper

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/transport/v4/vnet"
)

// The daemon's view: the self-test runs at start, not again while the
// public address stays, and again after a redial lands behind another
// NAT; the admin gets one line per verdict. Whether the keeper learned
// its address before the watch subscribed or after must not matter.
func TestNATWatchRetestsOnPublicAddressChange(t *testing.T) {
	for _, keeperFirst := range []bool{true, false} {
		t.Run(map[bool]string{true: "keeper first", false: "watch first"}[keeperFirst], func(t *testing.T) {
			natWatchRetest(t, keeperFirst)
		})
	}
}

func natWatchRetest(t *testing.T, keeperFirst bool) {
	synctest.Test(t, func(t *testing.T) {
		cone := behaviourNAT(vnet.EndpointIndependent, vnet.EndpointAddrPortDependent)
		symmetric := behaviourNAT(vnet.EndpointAddrPortDependent, vnet.EndpointAddrPortDependent)
		l := newLabNATs(t, []vnet.NATType{cone, symmetric}, 0, "5.6.7.8", "5.6.7.9")
		srv := l.addRFC5780(rfcIP1, rfcIP2)
		stop := l.start()
		defer stop()
		defer srv.start()()
		log, logs := newLogs()
		k := l.newKeeper(Config{Servers: []string{rfcA.String()}, Interval: 10 * time.Second})
		var opened atomic.Int32
		listen := func() (net.PacketConn, error) {
			opened.Add(1)
			return l.sock.nets[l.sock.active.Load()].ListenPacket("udp4", lanIP+":0")
		}
		w, err := NewNATWatch(NATWatchConfig{Keeper: k, Servers: []string{rfcA.String()}, Listen: listen,
			PortMin: 55000, PortMax: 56000, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, ok := w.Last(); ok {
			t.Error("a report before any test")
		}
		var stopRun func()
		if keeperFirst {
			stopRun = runKeeper(t, k)
			defer stopRun()
			synctest.Wait() // the address is learned
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		if !keeperFirst {
			synctest.Wait() // the watch subscribed and is testing
			stopRun = runKeeper(t, k)
			defer stopRun()
		}

		time.Sleep(5 * time.Second)
		r, n, ok := w.Last()
		if !ok || n != 1 || r.Verdict != VerdictPortRestrictedCone {
			t.Fatalf("after start: %v, %d tests, %v; want one test, port-restricted cone", r, n, ok)
		}
		// Keepalives and NAT checks for two minutes: nothing to re-test.
		time.Sleep(2 * time.Minute)
		if _, n, _ := w.Last(); n != 1 {
			t.Errorf("%d tests while the public address stayed, want 1", n)
		}

		l.sock.active.Store(1) // a redial: now behind a symmetric NAT
		time.Sleep(30 * time.Second)
		r, n, _ = w.Last()
		if n != 2 || r.Verdict != VerdictSymmetric || r.Public.Addr().String() != "5.6.7.9" {
			t.Errorf("after the redial: %v via %v, %d tests; want a second test, symmetric via 5.6.7.9", r, r.Public, n)
		}
		if opened.Load() != 4 {
			t.Errorf("opened %d test sockets, want two per test", opened.Load())
		}
		if n := logs.count("NAT: port-restricted cone: works; no port forward needed"); n != 1 {
			t.Errorf("cone verdict logged %d times, want 1", n)
		}
		sym := logs.FilterMessage("NAT: symmetric: inbound media needs a port forward of 55000–56000 or a router that offers PCP/UPnP; run `linkmanager firewall`")
		if sym.Len() != 1 || sym.All()[0].Level.String() != "warn" {
			t.Errorf("symmetric verdict logged %v, want once as a warning", sym.All())
		}
	})
}

func TestNewNATWatchConfig(t *testing.T) {
	k, err := New(Config{Send: func([]byte, netip.AddrPort) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	listen := func() (net.PacketConn, error) { return nil, errors.New("unused") }
	for _, cfg := range []NATWatchConfig{{Servers: []string{"1.2.3.4"}, Listen: listen}, {Keeper: k, Servers: []string{"1.2.3.4"}}} {
		if _, err := NewNATWatch(cfg); !errors.Is(err, ErrNATWatchConfig) {
			t.Errorf("%+v: %v, want ErrNATWatchConfig", cfg, err)
		}
	}
	if _, err := NewNATWatch(NATWatchConfig{Keeper: k, Listen: listen}); !errors.Is(err, ErrNoServers) {
		t.Errorf("no servers: %v", err)
	}
	w, err := NewNATWatch(NATWatchConfig{Keeper: k, Listen: listen, Servers: []string{"1.2.3.4"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetServers([]string{"x:0"}); !errors.Is(err, ErrBadServer) {
		t.Errorf("SetServers with a bad server: %v", err)
	}
	if err := w.SetServers(nil); !errors.Is(err, ErrNoServers) {
		t.Errorf("SetServers(nil): %v", err)
	}
	if err := w.SetServers([]string{"1.2.3.5:3478"}); err != nil || w.cfg.Servers[0] != "1.2.3.5:3478" {
		t.Errorf("SetServers: %v, servers %v", err, w.cfg.Servers)
	}
}

// The keepalive interval follows the measured binding lifetime: with
// stun.interval 40s behind a NAT that forgets idle mappings after 25 s,
// the watch caps the idle keepalive at 19 s and the public port stays;
// without the measurement it moves with every keepalive.
func TestNATWatchSizesKeepaliveByLifetime(t *testing.T) {
	for _, measure := range []bool{true, false} {
		t.Run(map[bool]string{true: "measured", false: "not measured"}[measure], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				nat := behaviourNAT(vnet.EndpointIndependent, vnet.EndpointAddrPortDependent)
				nat.MappingLifeTime = 25 * time.Second
				l := newLab(t, nat)
				srv := l.addRFC5780(rfcIP1, rfcIP2)
				stop := l.start()
				defer stop()
				defer srv.start()()
				log, logs := newLogs()
				k := l.newKeeper(Config{Servers: []string{rfcA.String()}, Interval: 40 * time.Second})
				listen := func() (net.PacketConn, error) { return l.sock.nets[0].ListenPacket("udp4", lanIP+":0") }
				w, err := NewNATWatch(NATWatchConfig{Keeper: k, Servers: []string{rfcA.String()}, Listen: listen,
					Lifetime: measure, LifetimeMax: time.Minute, Logger: log})
				if err != nil {
					t.Fatal(err)
				}
				events, _ := k.Subscribe()
				stopRun := runKeeper(t, k)
				defer stopRun()
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- w.Run(ctx) }()
				defer func() { cancel(); <-done }()

				// The test (3 s) and the measurement (26 s + 3 s) are done.
				time.Sleep(35 * time.Second)
				lt, ok := w.LastLifetime()
				if measure != ok || (ok && (lt.Alive != 24*time.Second || k.KeepaliveInterval() != 19*time.Second)) {
					t.Fatalf("lifetime %v (%v), keepalive %v; want 24s–26s and 19s only when measured", lt, ok, k.KeepaliveInterval())
				}
				drain(events)
				time.Sleep(5 * time.Minute)
				moved := len(drain(events))
				if measure && moved != 0 {
					t.Errorf("the public port moved %d times with the keepalive sized by the lifetime", moved)
				}
				if !measure && moved == 0 {
					t.Error("control: a 40 s keepalive behind a 25 s NAT should lose the mapping")
				}
				if measure && logs.FilterMessageSnippet("keepalive every 19s instead").Len() != 1 {
					t.Errorf("the keepalive change was not logged once: %v", logs.All())
				}
			})
		})
	}
}
