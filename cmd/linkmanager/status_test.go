package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

func adminStub(t *testing.T, st admin.Status) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(st)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestStatusCommand(t *testing.T) {
	ready := admin.Status{Ready: true, Public: "198.51.100.1:65002", PublicSrc: "stun", NAT: "endpoint-independent",
		Trunks: []admin.TrunkStatus{{Name: "provider", Register: true, Registered: true, Since: time.Now().Add(-time.Minute),
			Contact: "198.51.100.1:65002", Keepalive: "stun", Addresses: admin.AddrView{Registrar: "198.51.100.1:65002",
				STUN: "198.51.100.1:40123", Contact: "198.51.100.1:65002", SDP: "198.51.100.1", Note: "the router maps per destination"}}},
		Calls: []admin.CallStatus{{Direction: "inbound", From: "0301234567", To: "4930123456", Trunk: "provider",
			Answered: true, Duration: 12, Codec: "PCMA", OneWay: true}},
		Ports: &admin.PortStatus{WAN: rtpbridge.PoolCounts{Pairs: 500, InUse: 460, Free: 40, MinPort: 55000, MaxPort: 56000},
			LAN:      rtpbridge.PoolCounts{Pairs: 500, InUse: 460, Free: 40, MinPort: 40000, MaxPort: 41000},
			Capacity: admin.Capacity{Calls: 460, Max: 500, Percent: 92, Warning: "relay ports 92 % used (460 of 500 calls): widen rtp.port_min and rtp.port_max"}},
		PortMap: &portmap.Status{Protocol: "nat-pmp", Gateway: "192.168.100.1", External: "198.51.100.1",
			Mappings: []portmap.Mapping{{Internal: 65002, External: "198.51.100.1:65002"}}},
		SIPALG: admin.SIPALG{Verdict: "detected", Trunks: []string{"provider"}, Sent: "198.51.100.1:65002", Seen: "192.168.100.2:65002",
			Advice: "SIP ALG detected: the router rewrites SIP (Via/Contact); switch off 'SIP ALG' / 'SIP helper' / 'SIP passthrough' on the router"}}
	var out, errOut bytes.Buffer
	if code := cmdStatus([]string{"--admin", adminStub(t, ready)}, &out, &errOut); code != 0 {
		t.Fatalf("ready daemon: exit %d (%s)", code, errOut.String())
	}
	for _, want := range []string{"linkmanager: ready", "198.51.100.1:65002 (from stun)", "endpoint-independent",
		"provider", "yes, 1m0s", "ONE-WAY AUDIO", "PCMA", "relay capacity: 460 of 500 calls (92.0 %)",
		"internet 55000-56000: 460 in use", "WARNING: relay ports 92 % used",
		"provider: registrar sees 198.51.100.1:65002, STUN sees 198.51.100.1:40123", "the router maps per destination",
		"\nSIP ALG detected: the router rewrites SIP (Via/Contact); switch off 'SIP ALG' / 'SIP helper' / 'SIP passthrough' on the router (trunk provider: sent 198.51.100.1:65002, came back 192.168.100.2:65002)",
		"port mapping: nat-pmp at 192.168.100.1, public 198.51.100.1, 1 port(s) mapped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}

	notReady := ready
	notReady.Ready, notReady.Reason = false, "not registered: provider"
	out.Reset()
	if code := cmdStatus([]string{"--admin", adminStub(t, notReady), "--json"}, &out, &errOut); code != 1 {
		t.Errorf("not ready: exit %d, want 1", code)
	}
	var back admin.Status
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Reason != "not registered: provider" {
		t.Errorf("--json output %q: %v", out.String(), err)
	}

	errOut.Reset()
	if code := cmdStatus([]string{"--admin", "127.0.0.1:1"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "cannot reach") {
		t.Errorf("unreachable daemon: exit %d, %q; want 2", code, errOut.String())
	}
}
