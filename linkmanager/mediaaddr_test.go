package linkmanager

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

func testPolicy(log *zap.Logger) *mediaPolicy {
	pbx := b2bua.PBXOptions{Listen: netip.MustParseAddrPort("192.168.100.2:5060"), Addr: netip.MustParseAddrPort("192.168.100.20:5060"),
		Allow: []netip.Prefix{netip.MustParsePrefix("192.168.100.16/28")}}
	public := func() (netip.Addr, bool) { return netip.MustParseAddr("198.51.100.1"), true }
	return newMediaPolicy(pbx, netip.MustParseAddr("192.168.100.2"), public, [2]int{55000, 56000}, log)
}

func TestMediaPolicy(t *testing.T) {
	p := testPolicy(zap.NewNop())
	A, B := rtpbridge.LegA, rtpbridge.LegB
	for _, tc := range []struct {
		leg  rtpbridge.Leg
		addr string
		why  string // "" = allowed
	}{
		{B, "198.51.100.70:30000", ""},
		{B, "10.20.30.40:30000", ""}, // a provider's private media network is not our LAN
		{A, "192.168.100.20:20000", ""},
		{A, "192.168.100.30:20000", ""},   // a phone on the LAN, direct media
		{B, "198.51.100.1:40000", ""},     // a softphone behind our own router
		{B, "127.0.0.1:5999", "loopback"}, // the measured attack
		{A, "127.0.0.1:5999", "loopback"},
		{B, "192.168.100.20:5060", "on the PBX's side"}, // the other measured one
		{B, "192.168.100.17:20000", "on the PBX's side"},
		{B, "192.168.100.2:40000", "own addresses"},
		{A, "192.168.100.2:40000", "own addresses"},
		{B, "198.51.100.1:55000", "public address on a relay port"},
		{B, "169.254.1.1:30000", "link-local"},
		{B, "224.0.0.1:30000", "link-local"}, // link-local multicast
		{B, "239.1.2.3:30000", "multicast"},
		{A, "255.255.255.255:30000", "broadcast"},
		{B, "[::1]:30000", "loopback"},
		{B, "[fe80::1]:30000", "link-local"},
		{B, "[::ffff:127.0.0.1]:30000", "loopback"},
		{B, "0.0.0.0:30000", "unspecified"},
	} {
		err := p.check(tc.leg, netip.MustParseAddrPort(tc.addr))
		switch {
		case tc.why == "" && err != nil:
			t.Errorf("%v %s refused: %v", tc.leg, tc.addr, err)
		case tc.why != "" && (!errors.Is(err, ErrMediaAddress) || !strings.Contains(err.Error(), tc.why)):
			t.Errorf("%v %s: %v, want refused as %q", tc.leg, tc.addr, err, tc.why)
		}
	}
	if err := p.check(B, netip.AddrPort{}); err != nil {
		t.Errorf("no remote refused: %v", err)
	}
	// A PBX on the same host: loopback is the LAN side's peer, still not
	// the Internet side's.
	local := newMediaPolicy(b2bua.PBXOptions{Listen: netip.MustParseAddrPort("127.0.0.1:5070"), Addr: netip.MustParseAddrPort("127.0.0.1:5060")},
		netip.MustParseAddr("192.168.100.2"), func() (netip.Addr, bool) { return netip.Addr{}, false },
		[2]int{55000, 56000}, zap.NewNop())
	if err := local.check(A, netip.MustParseAddrPort("127.0.0.1:20000")); err != nil {
		t.Errorf("PBX on loopback: its media refused: %v", err)
	}
	if err := local.check(B, netip.MustParseAddrPort("127.0.0.1:20000")); err == nil {
		t.Error("PBX on loopback: loopback allowed on the Internet leg")
	}
	// A reload that widens pbx.allow moves the LAN with it.
	p.setPBX(b2bua.PBXOptions{Addr: netip.MustParseAddrPort("192.168.100.20:5060"), Allow: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}})
	if err := p.check(B, netip.MustParseAddrPort("10.20.30.40:30000")); err == nil {
		t.Error("pbx.allow after a reload not refused on the Internet leg")
	}
}

// A refused address gets nothing from the relay, not even the pinhole
// packet the Internet leg sends to every new remote; an allowed one gets
// it (the control). The refusals are counted and logged once.
func TestPolicedSessionSendsNothingToARefusedAddress(t *testing.T) {
	br, err := rtpbridge.New(rtpbridge.Config{
		LAN: &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 31300, MaxPort: 31319},
		WAN: &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 31400, MaxPort: 31419},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()
	core, logs := observer.New(zap.InfoLevel)
	// The test's peers are on loopback, which the policy refuses; so the
	// control uses a policy without that rule's victim: a plain session.
	policy := testPolicy(zap.New(core))
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	victim, control := listen(), listen()
	addr := func(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

	s, err := br.NewSession("refused")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ps := policedSession{Session: s, policy: policy}
	for range 3 {
		if err := ps.SetRemote(rtpbridge.LegB, addr(victim), netip.AddrPortFrom(addr(victim).Addr(), addr(victim).Port()+1)); !errors.Is(err, ErrMediaAddress) {
			t.Fatalf("SetRemote to loopback: %v, want ErrMediaAddress", err)
		}
	}
	c, err := br.NewSession("control")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetRemote(rtpbridge.LegB, addr(control), netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	_ = control.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := control.ReadFrom(buf); err != nil {
		t.Fatalf("control: no pinhole packet from an unpoliced session: %v", err)
	}
	// The control's pinhole has left; the refused session's would have
	// left at its SetRemote, before it.
	_ = victim.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, from, err := victim.ReadFrom(buf); err == nil {
		t.Fatalf("the refused address got %d bytes from %v", n, from)
	}
	if policy.refused.Load() != 3 || logs.FilterMessageSnippet("SDP media address refused").Len() != 1 {
		t.Fatalf("refused %d, %d log lines; want 3 and 1", policy.refused.Load(), logs.FilterMessageSnippet("SDP media address refused").Len())
	}
}
