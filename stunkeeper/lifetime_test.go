package stunkeeper

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/transport/v4/vnet"
)

// lifetimeTest measures the binding lifetime behind a NAT whose mappings
// live `lifetime` after their last outbound packet.
func lifetimeTest(t *testing.T, lifetime, maxIdle time.Duration, tweak func(*fakeRFC5780)) (Lifetime, time.Duration, int, error) {
	t.Helper()
	nat := behaviourNAT(vnet.EndpointIndependent, vnet.EndpointAddrPortDependent)
	nat.MappingLifeTime = lifetime
	l := newLab(t, nat)
	srv := l.addRFC5780(rfcIP1, rfcIP2)
	if tweak != nil {
		tweak(srv)
	}
	stop := l.start()
	defer stop()
	defer srv.start()()
	var opened atomic.Int32
	listen := func() (net.PacketConn, error) {
		opened.Add(1)
		return l.sock.nets[0].ListenPacket("udp4", lanIP+":0")
	}
	start := time.Now()
	lt, err := MeasureLifetime(context.Background(), LifetimeConfig{Server: rfcA, Listen: listen, Max: maxIdle})
	return lt, time.Since(start), int(opened.Load()), err
}

// The measurement brackets the NAT's mapping lifetime to one Step and
// stops soon after it: the lifetime plus the 3 s the last probe waits.
func TestMeasureLifetime(t *testing.T) {
	for _, tc := range []struct {
		lifetime       time.Duration
		alive, expired time.Duration
		safe           time.Duration
	}{
		{25 * time.Second, 24 * time.Second, 26 * time.Second, 19 * time.Second},
		{41 * time.Second, 40 * time.Second, 42 * time.Second, 32 * time.Second},
	} {
		t.Run(tc.lifetime.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				lt, took, _, err := lifetimeTest(t, tc.lifetime, time.Minute, nil)
				if err != nil {
					t.Fatal(err)
				}
				if lt.Alive != tc.alive || lt.Expired != tc.expired {
					t.Errorf("lifetime %v, want %v–%v", lt, tc.alive, tc.expired)
				}
				if got := lt.SafeInterval(); got != tc.safe {
					t.Errorf("safe keepalive interval %v, want %v", got, tc.safe)
				}
				if want := tc.expired + stepWait; took != want {
					t.Errorf("took %v, want %v", took, want)
				}
			})
		})
	}
}

// Bindings that outlive Max: "more than Max", after Max and no longer.
func TestMeasureLifetimeLongerThanMax(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lt, took, opened, err := lifetimeTest(t, 5*time.Minute, 10*time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if lt.Alive != 10*time.Second || lt.Expired != 0 || lt.String() != "more than 10s" {
			t.Errorf("lifetime %v (%+v), want more than 10s", lt, lt)
		}
		if took != 10*time.Second || opened != 6 {
			t.Errorf("took %v with %d sockets, want 10s with 5 probes and a trigger", took, opened)
		}
	})
}

// A server that answers the trigger socket instead of RESPONSE-PORT
// would make every binding look dead: that is an error, not a lifetime.
func TestMeasureLifetimeWithoutResponsePort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, _, _, err := lifetimeTest(t, 25*time.Second, time.Minute, func(s *fakeRFC5780) { s.ignoreResponsePort = true })
		if !errors.Is(err, ErrNoResponsePort) {
			t.Errorf("err = %v, want ErrNoResponsePort", err)
		}
	})
	if _, err := MeasureLifetime(context.Background(), LifetimeConfig{}); !errors.Is(err, ErrLifetimeConfig) {
		t.Errorf("empty config: %v", err)
	}
}
