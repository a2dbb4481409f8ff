package linkmanager

import (
	"net/netip"
	"testing"
)

// TestWANContactOf (review): the Contact for trunks that do not register.
// Before, a router's grant was used as it came: a router behind
// carrier-grade NAT put 100.64.x.x in Contact and SDP, and after a redial
// the old public address stayed there until the lease's renewal.
func TestWANContactOf(t *testing.T) {
	ap := netip.MustParseAddrPort
	var none netip.AddrPort
	local := ap("192.168.100.2:65002")
	for _, c := range []struct {
		name              string
		lease, stun, want netip.AddrPort
	}{
		{"the mapping", ap("203.0.113.7:65002"), ap("203.0.113.7:40111"), ap("203.0.113.7:65002")},
		{"the mapping, no STUN", ap("203.0.113.7:65002"), none, ap("203.0.113.7:65002")},
		{"redial: STUN's IP on the mapped port", ap("203.0.113.7:65002"), ap("198.51.100.9:40111"), ap("198.51.100.9:65002")},
		{"CGN grant: STUN", ap("100.64.0.9:65002"), ap("203.0.113.7:40111"), ap("203.0.113.7:40111")},
		{"private grant: STUN", ap("10.0.0.2:65002"), ap("203.0.113.7:40111"), ap("203.0.113.7:40111")},
		{"private grant, no STUN", ap("10.0.0.2:65002"), none, local},
		{"no mapping: STUN", none, ap("203.0.113.7:40111"), ap("203.0.113.7:40111")},
		{"nothing", none, none, local},
	} {
		if got := wanContactOf(c.lease, c.stun, local); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
