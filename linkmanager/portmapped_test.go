package linkmanager

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// shiftGateway grants every mapping 1000 ports up and records requests.
type shiftGateway struct {
	mu    sync.Mutex
	calls []string
}

func (*shiftGateway) Name() string { return "fake" }
func (*shiftGateway) ExternalAddr(context.Context) (netip.Addr, error) {
	return netip.MustParseAddr("203.0.113.7"), nil
}
func (g *shiftGateway) Map(_ context.Context, in, ext uint16, life time.Duration) (uint16, time.Duration, error) {
	g.record(fmt.Sprintf("map %d", in))
	return in + 1000, life, nil
}
func (g *shiftGateway) Unmap(_ context.Context, in, _ uint16) error {
	g.record(fmt.Sprintf("unmap %d", in))
	return nil
}
func (g *shiftGateway) record(s string) {
	g.mu.Lock()
	g.calls = append(g.calls, s)
	g.mu.Unlock()
}
func (g *shiftGateway) has(want ...string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, w := range want {
		if !slices.Contains(g.calls, w) {
			return false
		}
	}
	return true
}

// stubSession is a relay session on WAN port 30000, moved to 30010 by Rebind.
type stubSession struct {
	b2bua.Session
	port uint16
}

func (s *stubSession) LocalPort(l rtpbridge.Leg) uint16 {
	if l == rtpbridge.LegA {
		return 40000
	}
	return s.port
}
func (s *stubSession) Rebind(rtpbridge.Leg) (uint16, error) { s.port = 30010; return s.port, nil }
func (s *stubSession) Close() error                         { return nil }

func startMapper(t *testing.T, gw portmap.Protocol) *portmap.Mapper {
	t.Helper()
	pm, err := portmap.New(portmap.Config{Gateway: netip.MustParseAddr("192.0.2.1"),
		Probe: func(context.Context, netip.Addr, netip.Addr, time.Duration) (portmap.Protocol, error) {
			if gw == nil {
				return nil, portmap.ErrNoGateway
			}
			return gw, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pm.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	awaitCond(t, "the mapper probed", func() bool { return pm.Status().Protocol != "" || pm.Status().Error != "" })
	return pm
}

func awaitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// TestMappedSession: the SDP's Internet-side port is the router's external
// port; the mapping follows a NAT-repair Rebind and goes with the call.
// The LAN leg is never mapped.
func TestMappedSession(t *testing.T) {
	gw := &shiftGateway{}
	pm := startMapper(t, gw)
	s := newMappedSession(&stubSession{port: 30000}, pm, zap.NewNop())
	if got := s.LocalPort(rtpbridge.LegB); got != 31000 {
		t.Fatalf("LocalPort(LegB) = %d, want the external 31000", got)
	}
	if got := s.LocalPort(rtpbridge.LegA); got != 40000 {
		t.Fatalf("LocalPort(LegA) = %d, want the local 40000", got)
	}
	if !gw.has("map 30000", "map 30001") {
		t.Fatalf("requests %v: want the RTP and RTCP ports mapped", gw.calls)
	}
	if p, err := s.Rebind(rtpbridge.LegB); err != nil || p != 31010 {
		t.Fatalf("Rebind = %d, %v; want 31010", p, err)
	}
	awaitCond(t, "the old pair is deleted", func() bool { return gw.has("map 30010", "map 30011", "unmap 30000", "unmap 30001") })
	s.Close()
	awaitCond(t, "the pair is deleted on Close", func() bool { return gw.has("unmap 30010", "unmap 30011") })
	if n := len(pm.Status().Mappings); n != 0 {
		t.Fatalf("%d mappings left after Close", n)
	}
}

// TestMappedSessionNoGateway: without router support the local port is
// advertised, as without nat.portmap.
func TestMappedSessionNoGateway(t *testing.T) {
	pm := startMapper(t, nil)
	s := newMappedSession(&stubSession{port: 30000}, pm, zap.NewNop())
	if got := s.LocalPort(rtpbridge.LegB); got != 30000 {
		t.Fatalf("LocalPort(LegB) = %d, want the local 30000", got)
	}
}
