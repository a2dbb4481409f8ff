package main

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

// trunks[].allow reaches the trunk, at start and on every reload (both
// go through trunkOptions).
func TestTrunkOptionsCarryTheAllowList(t *testing.T) {
	register := true
	allow := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/28")}
	got := trunkOptions([]config.Trunk{{Name: "provider", Register: &register,
		RegistrarAddr: config.HostPort{Host: "sip.provider.test"}, ProxyAddr: config.HostPort{Host: "sbc.provider.test", Port: 5070},
		AllowPrefixes: allow}})
	if len(got) != 1 || !slices.Equal(got[0].Allow, allow) {
		t.Fatalf("trunk options %+v: want Allow %v", got, allow)
	}
	if o := got[0]; o.Host != "sbc.provider.test" || o.Port != 5070 || o.RegistrarHost != "sip.provider.test" {
		t.Errorf("hosts %q:%d and %q", o.Host, o.Port, o.RegistrarHost)
	}
}
