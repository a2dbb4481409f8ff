package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"github.com/huin/goupnp/soap"
)

// fakeIGD is a goupnp client that records its calls; permanentOnly
// answers a non-zero lease with UPnP error 725.
type fakeIGD struct {
	ext           string
	permanentOnly bool
	calls         []string
}

func (f *fakeIGD) GetExternalIPAddressCtx(context.Context) (string, error) { return f.ext, nil }

func (f *fakeIGD) AddPortMappingCtx(_ context.Context, _ string, ext uint16, proto string, in uint16, client string, _ bool, _ string, lease uint32) error {
	f.calls = append(f.calls, fmt.Sprintf("add %s %d->%s:%d lease %d", proto, ext, client, in, lease))
	if f.permanentOnly && lease != 0 {
		fe := &soap.SOAPFaultError{}
		fe.Detail.UPnPError.Errorcode = 725
		return fe
	}
	return nil
}

func (f *fakeIGD) DeletePortMappingCtx(_ context.Context, _ string, ext uint16, proto string) error {
	f.calls = append(f.calls, fmt.Sprintf("delete %s %d", proto, ext))
	return nil
}

func TestUPnP(t *testing.T) {
	for _, tc := range []struct {
		name    string
		igd     fakeIGD
		want    []string
		wantExt string
		extErr  bool
	}{
		{"lease granted", fakeIGD{ext: "198.51.100.1"},
			[]string{"add UDP 55000->192.168.100.2:55000 lease 7200", "delete UDP 55000"}, "198.51.100.1", false},
		{"only permanent leases (725)", fakeIGD{ext: "198.51.100.1", permanentOnly: true},
			[]string{"add UDP 55000->192.168.100.2:55000 lease 7200", "add UDP 55000->192.168.100.2:55000 lease 0", "delete UDP 55000"}, "198.51.100.1", false},
		{"garbage external address", fakeIGD{ext: "not-an-ip"},
			[]string{"add UDP 55000->192.168.100.2:55000 lease 7200", "delete UDP 55000"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &UPnP{c: &tc.igd, local: "192.168.100.2"}
			ctx := context.Background()
			ext, err := u.ExternalAddr(ctx)
			if tc.extErr {
				if !errors.Is(err, ErrBadResponse) {
					t.Errorf("ExternalAddr = %s, %v; want ErrBadResponse", ext, err)
				}
			} else if err != nil || ext != netip.MustParseAddr(tc.wantExt) {
				t.Errorf("ExternalAddr = %s, %v", ext, err)
			}
			got, life, err := u.Map(ctx, 55000, 55000, 2*time.Hour)
			if err != nil || got != 55000 || life != 2*time.Hour {
				t.Fatalf("Map = %d %s %v", got, life, err)
			}
			if err := u.Unmap(ctx, 55000, got); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(tc.igd.calls) != fmt.Sprint(tc.want) {
				t.Errorf("calls %q, want %q", tc.igd.calls, tc.want)
			}
		})
	}
}

func TestAtGateway(t *testing.T) {
	gw := netip.MustParseAddr("192.168.100.1")
	for _, tc := range []struct {
		loc  string
		want bool
	}{
		{"http://192.168.100.1:46325/rootDesc.xml", true},
		{"http://192.168.100.7:1900/desc.xml", false}, // a UPnP printer, not our router
		{"http://router.lan/desc.xml", false},
	} {
		u, _ := url.Parse(tc.loc)
		if got := atGateway(u, gw); got != tc.want {
			t.Errorf("atGateway(%s) = %v, want %v", tc.loc, got, tc.want)
		}
	}
	if atGateway(nil, gw) {
		t.Error("atGateway(nil) = true")
	}
}
