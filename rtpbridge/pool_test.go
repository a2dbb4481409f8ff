package rtpbridge

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

func TestPoolValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		pool *Pool
		ok   bool
	}{
		{"defaults", &Pool{MinPort: 40000, MaxPort: 40999}, true},
		{"odd min rounds up", &Pool{MinPort: 40001, MaxPort: 40003}, true},
		{"zero min", &Pool{MaxPort: 40000}, false},
		{"single port", &Pool{MinPort: 40000, MaxPort: 40000}, false},
		{"odd min leaves no pair", &Pool{MinPort: 40001, MaxPort: 40002}, false},
		{"max below min", &Pool{MinPort: 40000, MaxPort: 30000}, false},
		{"bad network", &Pool{MinPort: 40000, MaxPort: 40999, Network: "tcp"}, false},
		{"bad address", &Pool{MinPort: 40000, MaxPort: 40999, Address: "lan"}, false},
		{"v6 address on udp4", &Pool{MinPort: 40000, MaxPort: 40999, Address: "::1"}, false},
		{"dscp too big", &Pool{MinPort: 40000, MaxPort: 40999, DSCP: 64}, false},
		{"negative retries", &Pool{MinPort: 40000, MaxPort: 40999, MaxRetries: -1}, false},
		{"negative max quarantine", &Pool{MinPort: 40000, MaxPort: 40999, MaxQuarantine: -1}, false},
		{"max quarantine below default quarantine", &Pool{MinPort: 40000, MaxPort: 40999, MaxQuarantine: time.Second}, false},
		{"max quarantine below quarantine", &Pool{MinPort: 40000, MaxPort: 40999, Quarantine: time.Hour, MaxQuarantine: time.Minute}, false},
		{"max quarantine equal to quarantine", &Pool{MinPort: 40000, MaxPort: 40999, Quarantine: time.Minute, MaxQuarantine: time.Minute}, true},
		{"quarantine disabled", &Pool{MinPort: 40000, MaxPort: 40999, Quarantine: -1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.pool.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidPool) {
				t.Fatalf("error %v does not wrap ErrInvalidPool", err)
			}
		})
	}
	p := Pool{MinPort: 40001, MaxPort: 40010}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if p.MaxRetries != DefaultMaxRetries || p.Quarantine != DefaultQuarantine || p.DSCP != DefaultDSCP ||
		p.MaxQuarantine != DefaultMaxQuarantine || p.Network != "udp4" || p.Address != "0.0.0.0" {
		t.Fatalf("defaults not filled: %+v", &p)
	}
	// A Quarantine above the default cap raises the default cap with it.
	long := Pool{MinPort: 40000, MaxPort: 40999, Quarantine: 20 * time.Minute}
	if err := long.Validate(); err != nil || long.MaxQuarantine != 20*time.Minute {
		t.Fatalf("Validate() = %v, MaxQuarantine %v, want 20m", err, long.MaxQuarantine)
	}
	// 40002..40009 in pairs, 40010 has no odd partner.
	if c := p.Counts(); states(c) != (PoolCounts{Free: 4}) || c.Pairs != 4 || c.MinPort != 40001 || c.MaxPort != 40010 {
		t.Fatalf("counts %+v, want 4 pairs, all free, of 40001-40010", c)
	}
}

func TestPoolAllocatesEvenPairsInRangeUntilExhausted(t *testing.T) {
	clk := newFakeClock()
	p := &Pool{Address: "127.0.0.1", MinPort: 44001, MaxPort: 44021, Clock: clk}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, p)
	seen := map[uint16]bool{}
	var pairs []*PortPair
	for range 10 {
		pp, err := p.Allocate()
		if err != nil {
			t.Fatalf("allocation %d: %v", len(pairs), err)
		}
		pairs = append(pairs, pp)
		rtpPort := addrOf(pp.RTP()).Port()
		rtcpPort := addrOf(pp.RTCP()).Port()
		switch {
		case rtpPort != pp.Port():
			t.Fatalf("RTP socket on %d, Port() %d", rtpPort, pp.Port())
		case rtpPort%2 != 0:
			t.Fatalf("odd RTP port %d", rtpPort)
		case rtcpPort != rtpPort+1:
			t.Fatalf("RTCP port %d, want %d", rtcpPort, rtpPort+1)
		case rtpPort < 44002 || rtcpPort > 44021:
			t.Fatalf("pair %d/%d outside 44001-44021", rtpPort, rtcpPort)
		case seen[rtpPort]:
			t.Fatalf("port %d handed out twice", rtpPort)
		}
		seen[rtpPort] = true
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("11th Allocate: %v, want ErrPoolExhausted", err)
	}
	if c := states(p.Counts()); c != (PoolCounts{InUse: 10}) {
		t.Fatalf("counts %+v", c)
	}
	for _, pp := range pairs {
		if err := pp.Release(); err != nil {
			t.Fatal(err)
		}
		if err := pp.Release(); err != nil {
			t.Fatalf("second Release: %v", err)
		}
	}
	if c := states(p.Counts()); c != (PoolCounts{Quarantined: 10}) {
		t.Fatalf("after release: %+v", c)
	}
	clk.Advance(DefaultQuarantine)
	if c := states(p.Counts()); c != (PoolCounts{Free: 10}) {
		t.Fatalf("after quarantine: %+v", c)
	}
}

// TestPoolReusesQuarantinedPairOnlyWhenNoneFree: a free pair is preferred;
// with none free, the quarantined pair is taken over with its sockets,
// which never unbind; only pairs in use exhaust the pool.
func TestPoolReusesQuarantinedPairOnlyWhenNoneFree(t *testing.T) {
	checkRoutines(t)
	p, clk := drainPool(t, 44100, func(p *Pool) { p.MaxPort, p.Rand = 44103, &seqRand{vals: []int{0, 0, 0}} })
	first, err := p.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	rtp := first.RTP()
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	second, err := p.Allocate()
	if err != nil || second.Port() == first.Port() {
		t.Fatalf("Allocate took %v (%v), want the free pair", second, err)
	}
	reused, err := p.Allocate()
	if err != nil {
		t.Fatalf("Allocate with a pair quarantined: %v", err)
	}
	if reused.Port() != first.Port() || reused.RTP() != rtp {
		t.Fatalf("reused port %d, want %d with its socket", reused.Port(), first.Port())
	}
	wantCounts(t, p, PoolCounts{InUse: 2})
	if _, err := p.Allocate(); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate with every pair in use: %v, want ErrPoolExhausted", err)
	}
	// The reused pair quarantines again on release, and the quarantine
	// ends as before.
	if err := reused.Release(); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, p, PoolCounts{InUse: 1, Quarantined: 1})
	clk.Advance(DefaultQuarantine)
	wantCounts(t, p, PoolCounts{InUse: 1, Free: 1})
	wantBound(t, []uint16{first.Port(), first.Port() + 1}, false)
	_ = second.Release()
}

func TestPoolBindFailureTriesAnotherPair(t *testing.T) {
	// Pairs 44200, 44202, 44204. The first try hits a taken RTP port, the
	// second a taken RTCP port; the third must succeed.
	var attempts []string
	p := &Pool{
		Address: "127.0.0.1", MinPort: 44200, MaxPort: 44205,
		Rand: &seqRand{vals: []int{0, 1, 2}},
		ListenPacket: func(network, addr string) (net.PacketConn, error) {
			attempts = append(attempts, addr)
			_, port, _ := net.SplitHostPort(addr)
			if port == "44200" || port == "44203" {
				return nil, fmt.Errorf("bind %s: address already in use", addr)
			}
			return net.ListenPacket(network, addr)
		},
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, p)
	pp, err := p.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer pp.Release()
	if pp.Port() != 44204 {
		t.Fatalf("got port %d, want 44204 (attempts %v)", pp.Port(), attempts)
	}
	want := []string{"127.0.0.1:44200", "127.0.0.1:44202", "127.0.0.1:44203", "127.0.0.1:44204", "127.0.0.1:44205"}
	if fmt.Sprint(attempts) != fmt.Sprint(want) {
		t.Fatalf("attempts %v, want %v", attempts, want)
	}
	if c := states(p.Counts()); c != (PoolCounts{InUse: 1, Free: 2}) {
		t.Fatalf("a failed bind must not leak a pair: %+v", c)
	}
}

func TestPoolBindFailureGivesUpAfterMaxRetries(t *testing.T) {
	bindErr := errors.New("address already in use")
	calls := 0
	p := &Pool{
		Address: "127.0.0.1", MinPort: 44300, MaxPort: 44399, MaxRetries: 3,
		ListenPacket: func(string, string) (net.PacketConn, error) {
			calls++
			return nil, bindErr
		},
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	_, err := p.Allocate()
	if !errors.Is(err, ErrPoolExhausted) || !errors.Is(err, bindErr) {
		t.Fatalf("err %v, want ErrPoolExhausted wrapping the bind error", err)
	}
	if calls != 3 {
		t.Fatalf("%d binds, want MaxRetries=3", calls)
	}
	if c := states(p.Counts()); c != (PoolCounts{Free: 50}) {
		t.Fatalf("counts %+v", c)
	}
}

type notUDP struct{ net.PacketConn }

func TestPoolRejectsNonUDPConn(t *testing.T) {
	p := &Pool{
		Address: "127.0.0.1", MinPort: 44400, MaxPort: 44401,
		ListenPacket: func(network, addr string) (net.PacketConn, error) {
			c, err := net.ListenPacket(network, addr)
			return notUDP{c}, err
		},
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, p)
	if _, err := p.Allocate(); !errors.Is(err, ErrNotUDPConn) {
		t.Fatalf("err %v, want ErrNotUDPConn", err)
	}
	if _, err := (&Pool{}).Allocate(); !errors.Is(err, ErrNotValidated) {
		t.Fatalf("unvalidated: %v", err)
	}
}

func TestPoolSetsDSCP(t *testing.T) {
	for _, dscp := range []int{0, 34, -1} {
		t.Run(strconv.Itoa(dscp), func(t *testing.T) {
			p := &Pool{Address: "127.0.0.1", MinPort: 44500, MaxPort: 44599, DSCP: dscp}
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
			closeAtEnd(t, p)
			pp, err := p.Allocate()
			if err != nil {
				t.Fatal(err)
			}
			defer pp.Release()
			want := map[int]int{0: DefaultDSCP << 2, 34: 34 << 2, -1: 0}[dscp]
			for _, c := range []*net.UDPConn{pp.RTP(), pp.RTCP()} {
				tos, err := ipv4.NewConn(c).TOS()
				if err != nil {
					t.Fatal(err)
				}
				if tos != want {
					t.Fatalf("TOS %#x, want %#x", tos, want)
				}
			}
		})
	}
}
