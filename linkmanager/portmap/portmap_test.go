package portmap

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

func TestRenewAt(t *testing.T) {
	for _, tc := range []struct {
		name string
		life time.Duration
		want time.Duration // after Granted
	}{
		{"two hours: half", 2 * time.Hour, time.Hour},
		{"two minutes: half", 2 * time.Minute, time.Minute},
		{"40 s: the margin wins over half", 40 * time.Second, 10 * time.Second},
		{"exactly twice the margin", 60 * time.Second, 30 * time.Second},
		{"shorter than the margin: half", 20 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := Lease{Granted: t0, Lifetime: tc.life}
			if got := RenewAt(l).Sub(t0); got != tc.want {
				t.Errorf("RenewAt = granted + %s, want + %s", got, tc.want)
			}
			if !RenewAt(l).Before(l.Expires()) {
				t.Errorf("renewal %s is not before expiry %s", RenewAt(l), l.Expires())
			}
		})
	}
}

func TestDueAndNextWake(t *testing.T) {
	leases := map[uint16]Lease{
		65002: {Internal: 65002, Granted: t0, Lifetime: 2 * time.Hour},                   // renew at +1h
		55000: {Internal: 55000, Granted: t0.Add(10 * time.Minute), Lifetime: time.Hour}, // +40m
		55001: {Internal: 55001, Granted: t0.Add(10 * time.Minute), Lifetime: time.Hour}, // +40m
	}
	if at, ok := nextWake(leases); !ok || !at.Equal(t0.Add(40*time.Minute)) {
		t.Errorf("nextWake = %s %v, want t0+40m", at, ok)
	}
	if _, ok := nextWake(nil); ok {
		t.Error("nextWake of no leases is ok")
	}
	for _, tc := range []struct {
		at   time.Duration
		want []uint16
	}{
		{0, nil},
		{40*time.Minute - time.Nanosecond, nil},
		{40 * time.Minute, []uint16{55000, 55001}},
		{time.Hour, []uint16{55000, 55001, 65002}},
	} {
		if got := due(leases, t0.Add(tc.at)); !slices.Equal(got, tc.want) {
			t.Errorf("due at t0+%s = %v, want %v", tc.at, got, tc.want)
		}
	}
}

func TestParseRoutes(t *testing.T) {
	const hdr = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
	for _, tc := range []struct {
		name, table, want, err string
	}{
		{"lab LAN host", hdr +
			"eth0\t00000000\t0164A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n" +
			"eth0\t0064A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n", "192.168.100.1", ""},
		{"lowest metric wins", hdr +
			"wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n" +
			"eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n", "10.0.0.1", ""},
		{"a down route is skipped", hdr +
			"eth0\t00000000\t0164A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n", "", "no IPv4 default route"},
		{"a device route has no gateway", hdr +
			"ppp0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n", "", "no IPv4 default route"},
		{"garbage", hdr + "eth0\tzz\tzz\tzz\n" + "eth0\t00000000\tXYZ\t0003\t0\t0\t0\t00000000\n", "", "no IPv4 default route"},
		{"empty", "", "", "no IPv4 default route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRoutes(strings.NewReader(tc.table))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != netip.MustParseAddr(tc.want) {
				t.Fatalf("got %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}
