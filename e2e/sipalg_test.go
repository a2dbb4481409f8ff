//go:build linux

package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

const sipALGLine = "SIP ALG detected: the router rewrites SIP (Via/Contact); switch off 'SIP ALG' / 'SIP helper' / 'SIP passthrough' on the router"

// attachSIPALG puts the kernel's SIP ALG in the lab router, or fails the
// test: a machine that cannot is no place to pass it.
func attachSIPALG(t *testing.T, l *Lab) {
	t.Helper()
	if err := l.SetSIPALG(true); err != nil {
		t.Fatalf("cannot attach the kernel's SIP helper in the router namespace, so this machine cannot emulate a SIP ALG: %v", err)
	}
}

// Issue 11 item 2 in the lab: the router namespace attaches Linux's real
// SIP ALG (the sip conntrack helper; nf_nat_sip rewrites the NATed flow's
// SIP both ways), and the daemon names it in its log, /status, `linkmanager
// status` and the metrics, and keeps registering at its public address
// instead of the LAN address the ALG writes into the registrar's answers.
// The control is the same lab without the helper: no ALG. Without STUN
// the public address comes from the probe, whose name-only Via the ALG
// leaves alone, and the verdict is the same.
func TestSIPALGVerdict(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		alg, noSTUN bool
	}{{"helper", true, false}, {"helper-no-stun", true, true}, {"control", false, false}} {
		alg := tc.alg
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			start := time.Now()
			if alg {
				attachSIPALG(t, l)
			}
			d, _ := startRegistered(t, l, DaemonConfig{LogLevel: "info", NoSTUN: tc.noSTUN})
			// The verdict comes with the first registration: its 401 and
			// its 200 are two transactions.
			want, other := "no SIP ALG: the registrar's answers come back as sent", sipALGLine
			if alg {
				want, other = other, want
			}
			e := d.WaitSeen(t, 20*time.Second, func(e map[string]any) bool { return e["msg"] == want })
			t.Logf("%v after the lab was up: %v (sent %v, came back %v)", time.Since(start).Round(time.Millisecond), e["msg"], e["sent"], e["came_back"])
			for _, e := range d.Entries() {
				if e["msg"] == other {
					t.Errorf("the daemon also logged %q", other)
				}
			}
			// The helper really is on the SIP flow (and only with it).
			es, err := l.ConntrackList()
			if err != nil {
				t.Fatal(err)
			}
			helper := false
			for _, e := range es {
				if e.Orig.Sport == DaemonSIPPort && e.Orig.Dst == ProviderIP && e.Orig.Dport == 5060 {
					helper = strings.Contains(e.Raw, "helper=sip")
				}
			}
			if helper != alg {
				t.Fatalf("the router's 65002 -> provider:5060 flow has the sip helper: %v, want %v:\n%v", helper, alg, es)
			}

			verdict := map[bool]string{true: "detected", false: "none"}[alg]
			st := l.statusJSON(t)
			top, _ := st["sip_alg"].(map[string]any)
			trunks, _ := st["trunks"].([]any)
			if len(trunks) != 1 {
				t.Fatalf("/status trunks %v", trunks)
			}
			tr, _ := trunks[0].(map[string]any)
			per, _ := tr["sip_alg"].(map[string]any)
			if top["verdict"] != verdict || per["verdict"] != verdict {
				t.Errorf("/status sip_alg %v, trunk's %v; want verdict %s", top, per, verdict)
			}
			// Linux's ALG recomputes Content-Length after each rewrite.
			if top["content_length_mismatches"] != float64(0) {
				t.Errorf("/status sip_alg %v: Content-Length mismatches", top)
			}
			if alg && (top["advice"] != sipALGLine || per["came_back"] != DaemonIP+":65002") {
				t.Errorf("/status sip_alg %v: want the advice and the LAN address that came back", top)
			}
			// The daemon keeps working: registered at its public address,
			// never the LAN address the ALG wrote into the answers.
			if tr["registered"] != true || tr["contact"] != daemonPublic {
				t.Errorf("trunk registered %v at %v, want %s", tr["registered"], tr["contact"], daemonPublic)
			}
			for _, e := range d.Entries() {
				if e["msg"] == "registered" && e["contact"] != daemonPublic || e["public_addr"] == DaemonIP+":65002" {
					t.Errorf("the daemon took the LAN address for its public one: %v", e)
				}
			}
			m, err := l.AdminGet("/metrics")
			if err != nil {
				t.Fatal(err)
			}
			if v := metricValue(m, `linkmanager_sip_alg_detected{trunk="provider"}`); v != map[bool]float64{true: 1, false: 0}[alg] ||
				!strings.Contains(m, `linkmanager_sip_alg_detected{trunk="provider"}`) {
				t.Errorf("linkmanager_sip_alg_detected = %v", v)
			}
			out, _, _ := runCommand(t, l, "status")
			wantLine := map[bool]string{true: "\n" + sipALGLine + " (trunk provider", false: "\nSIP ALG: none"}[alg]
			if !strings.Contains(out, wantLine) {
				t.Errorf("linkmanager status lacks %q:\n%s", wantLine, out)
			}
			// An inbound call still crosses the ALG, the NAT and the
			// daemon to the PBX (which answers 480).
			if code, err := l.CallDID(DID, 15*time.Second); err != nil || code != 480 {
				t.Errorf("inbound call: %d %v, want the PBX's 480", code, err)
			}
			t.Logf("verdict %s, checks and call done %v after the lab was up", verdict, time.Since(start).Round(time.Millisecond))
			stopDaemon(t, d)
		})
	}
}

// Behind the kernel's SIP ALG a call still has two-way audio, and what the
// daemon itself sends the provider (captured on the LAN, before the ALG
// could fix it up) names no LAN address: it did not take the ALG's
// rewrite for its public address.
func TestSIPALGCallAudio(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	attachSIPALG(t, l)
	d := l.StartDaemon(DaemonConfig{}.YAML())
	d.WaitLog(t, regTimeout, Msg("registered", "trunk", "provider"))
	d.WaitSeen(t, 20*time.Second, func(e map[string]any) bool { return e["msg"] == sipALGLine })
	r := placeCall(t, l, inbound, "uac-pcap.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, inbound, 1)
	checkLegs(t, r)
	provider, sent := netip.MustParseAddr(ProviderIP), 0
	for _, m := range r.SIP[NSLM] {
		if m.Dst.Addr() != provider {
			continue
		}
		sent++
		if strings.Contains(m.Text, "192.168.100.") {
			t.Errorf("the daemon sent the provider its LAN address (the ALG would hide it): %q\n%s", m.First, m.Text)
		}
	}
	if sent == 0 {
		t.Error("no SIP from the daemon to the provider captured on the LAN")
	}
	stopDaemon(t, d)
}

// A redial behind the ALG: the daemon follows the new public address (it
// learns it from STUN and from an answer the ALG left alone: its sent-by
// was the old address, which no longer is the flow's mapping), never
// registers the LAN address, and still names the ALG.
func TestSIPALGRedial(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	attachSIPALG(t, l)
	d, _ := startRegistered(t, l, DaemonConfig{LogLevel: "info"})
	d.WaitSeen(t, 20*time.Second, func(e map[string]any) bool { return e["msg"] == sipALGLine })
	start := time.Now()
	if err := l.Redial(WANIP2); err != nil {
		t.Fatal(err)
	}
	want := WANIP2 + ":65002"
	d.WaitLog(t, 17*time.Second, func(e map[string]any) bool { return e["msg"] == "registered" && e["contact"] == want })
	t.Logf("re-registered at %s %v after the redial", want, time.Since(start).Round(time.Millisecond))
	if _, err := l.WaitKamailioContact(TrunkUser, 3*time.Second, func(c ULContact) bool { return c.Received == want }); err != nil {
		t.Error(err)
	}
	for _, e := range d.Entries() {
		if e["msg"] == "registered" && !strings.HasPrefix(Field(e, "contact"), "198.51.100.") {
			t.Errorf("registered a non-public contact: %v", e)
		}
	}
	st := l.statusJSON(t)
	if a, _ := st["sip_alg"].(map[string]any); a["verdict"] != "detected" {
		t.Errorf("/status sip_alg %v after the redial, want still detected", a)
	}
	if code, err := l.CallDID(DID, 15*time.Second); err != nil || code != 480 {
		t.Errorf("inbound call after the redial: %d %v, want the PBX's 480", code, err)
	}
	stopDaemon(t, d)
}
