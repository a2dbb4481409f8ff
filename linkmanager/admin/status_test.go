package admin

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

func TestCapacityOf(t *testing.T) {
	wan := rtpbridge.PoolCounts{Pairs: 500, MinPort: 55000, MaxPort: 56000}
	lan := rtpbridge.PoolCounts{Pairs: 500, MinPort: 40000, MaxPort: 41000}
	small := rtpbridge.PoolCounts{Pairs: 100, MinPort: 40000, MaxPort: 40199}
	for _, tc := range []struct {
		name    string
		c       rtpbridge.BridgeCounts
		max     int
		percent float64
		warn    []string // all in the warning; nil: no warning
	}{
		{"idle", rtpbridge.BridgeCounts{LAN: lan, WAN: wan}, 500, 0, nil},
		{"just below", rtpbridge.BridgeCounts{LAN: lan, WAN: wan, Sessions: 449}, 500, 89.8, nil},
		{"at 90 %", rtpbridge.BridgeCounts{LAN: lan, WAN: wan, Sessions: 450}, 500, 90,
			[]string{"90 % used (450 of 500 calls)", "rtp.port_min and rtp.port_max", "55000-56000", "2 ports per call", "linkmanager firewall"}},
		{"full", rtpbridge.BridgeCounts{LAN: lan, WAN: wan, Sessions: 500}, 500, 100, []string{"100 % used"}},
		{"LAN pool smaller", rtpbridge.BridgeCounts{LAN: small, WAN: wan, Sessions: 95}, 100, 95,
			[]string{"rtp.lan_port_min and rtp.lan_port_max", "40000-40199"}},
		{"shared pool", rtpbridge.BridgeCounts{LAN: wan, WAN: wan, Shared: true, Sessions: 230}, 250, 92,
			[]string{"230 of 250", "4 ports per call"}},
		{"no pool", rtpbridge.BridgeCounts{}, 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := CapacityOf(tc.c)
			if cp.Max != tc.max || cp.Calls != tc.c.Sessions || cp.Percent != tc.percent {
				t.Fatalf("%+v, want %d of %d (%v %%)", cp, tc.c.Sessions, tc.max, tc.percent)
			}
			if (cp.Warning != "") != (tc.warn != nil) {
				t.Fatalf("warning %q, want one: %v", cp.Warning, tc.warn != nil)
			}
			for _, w := range tc.warn {
				if !strings.Contains(cp.Warning, w) {
					t.Errorf("warning %q lacks %q", cp.Warning, w)
				}
			}
			if tc.name == "LAN pool smaller" && strings.Contains(cp.Warning, "firewall") {
				t.Errorf("LAN pool warning %q asks for a router forward", cp.Warning)
			}
		})
	}
}

// status carries the capacity of the snapshot's pools.
func TestStatusCapacity(t *testing.T) {
	wan := rtpbridge.PoolCounts{Pairs: 10, InUse: 9, Free: 1, MinPort: 55000, MaxPort: 55019}
	st := status(Snapshot{Media: &MediaCounts{Pools: rtpbridge.BridgeCounts{LAN: wan, WAN: wan, Sessions: 9}}})
	if st.Ports == nil || st.Ports.Capacity.Max != 10 || st.Ports.Capacity.Calls != 9 || st.Ports.Capacity.Warning == "" {
		t.Fatalf("ports %+v", st.Ports)
	}
}

type snapSource struct{ s Snapshot }

func (f snapSource) Ready() (bool, string) { return true, "" }
func (f snapSource) Snapshot() Snapshot    { return f.s }

// gather scrapes src and returns each sample as "name{k=v,...} value".
func gather(t *testing.T, src Source) map[string]float64 {
	t.Helper()
	mfs, err := registry(src, NewMetrics()).Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

// The NAT self-test is a metric too (issue 11): absent before the first
// test, then its verdict, whether it works without a forward, and how many
// tests ran.
func TestNATMetrics(t *testing.T) {
	before := gather(t, snapSource{})
	if _, ok := before["linkmanager_nat_works{}"]; ok {
		t.Error("linkmanager_nat_works exported before any NAT test")
	}
	rep := &stunkeeper.NATReport{Verdict: stunkeeper.VerdictSymmetric, Mapping: stunkeeper.AddressPortDependent,
		Filtering: stunkeeper.AddressPortDependent, Hairpin: stunkeeper.HairpinNo}
	got := gather(t, snapSource{Snapshot{NATTest: rep, NATTests: 3}})
	key := fmt.Sprintf("linkmanager_nat_verdict{filtering=%s,hairpin=%s,mapping=%s,verdict=%s}", rep.Filtering, rep.Hairpin, rep.Mapping, rep.Verdict)
	if got[key] != 1 || got["linkmanager_nat_works{}"] != 0 || got["linkmanager_nat_tests_total{}"] != 3 {
		t.Fatalf("NAT metrics after a symmetric verdict: %s=%v works=%v tests=%v\n%v", key, got[key],
			got["linkmanager_nat_works{}"], got["linkmanager_nat_tests_total{}"], got)
	}
	if _, ok := got["linkmanager_nat_works{}"]; !ok {
		t.Fatal("linkmanager_nat_works missing after a test")
	}
}

func TestAddrView(t *testing.T) {
	ap := netip.MustParseAddrPort
	pub, pub2, other := ap("198.51.100.1:65002"), ap("198.51.100.1:40123"), ap("203.0.113.9:65002")
	for _, tc := range []struct {
		name                     string
		registrar, stun, contact netip.AddrPort
		forwarded                bool
		note                     string // substring; "" = no note
	}{
		{"all agree", pub, pub, pub, false, ""},
		{"unknown is no disagreement", netip.AddrPort{}, pub, netip.AddrPort{}, false, ""},
		{"symmetric", pub, pub2, pub, false, "maps per destination (symmetric NAT); signalling works on the registrar's flow, and inbound media needs"},
		{"symmetric with a port forward", pub, pub2, pub, true, "symmetric NAT); signalling works on the registrar's flow, and inbound media comes through the declared port forward"},
		{"two public IPs", pub, other, pub, false, "two public IPs"},
		{"contact stale", pub, pub, pub2, false, "the next refresh moves it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := addrView(tc.registrar, tc.stun, tc.contact, tc.stun, tc.forwarded)
			if (v.Note == "") != (tc.note == "") || !strings.Contains(v.Note, tc.note) {
				t.Fatalf("note %q, want %q", v.Note, tc.note)
			}
			if tc.registrar.IsValid() && v.Registrar != tc.registrar.String() || v.SDP != tc.stun.Addr().String() && tc.stun.IsValid() {
				t.Fatalf("view %+v", v)
			}
		})
	}
	// In /status: the trunk's view next to the daemon's.
	st := status(Snapshot{Public: stunkeeper.Mapping{Addr: pub2, Source: stunkeeper.SourceSTUN},
		STUNView: stunkeeper.Mapping{Addr: pub2, Source: stunkeeper.SourceSTUN},
		Trunks:   []trunk.RegStatus{{Trunk: "provider", Register: true, Registered: true, Contact: pub, Public: pub}}})
	if st.Public != pub.String() || st.PublicSrc != "registrar" {
		t.Errorf("top-level public_addr %s from %s, want the registrar's view %s", st.Public, st.PublicSrc, pub)
	}
	a := st.Trunks[0].Addresses
	if a.Registrar != pub.String() || a.STUN != pub2.String() || a.Contact != pub.String() || a.SDP != pub2.Addr().String() ||
		!strings.Contains(a.Note, "symmetric") || strings.Contains(a.Note, "declared port forward") {
		t.Fatalf("trunk addresses %+v", a)
	}
	// A declared port forward counts before the first NAT test's report
	// (review: the note said media needs one for the first seconds).
	st = status(Snapshot{Public: stunkeeper.Mapping{Addr: pub2, Source: stunkeeper.SourceSTUN}, PortForward: true,
		STUNView: stunkeeper.Mapping{Addr: pub2, Source: stunkeeper.SourceSTUN},
		Trunks:   []trunk.RegStatus{{Trunk: "provider", Register: true, Registered: true, Contact: pub, Public: pub}}})
	if a := st.Trunks[0].Addresses; !strings.Contains(a.Note, "declared port forward") {
		t.Fatalf("with nat.port_forward and no NAT test yet: note %q", a.Note)
	}
}

// One-way audio shows live, as a gauge of the answered calls up now.
func TestOneWayGauge(t *testing.T) {
	now := time.Now()
	calls := &b2bua.Snapshot{Calls: []b2bua.CallInfo{
		{ID: "a", Answered: now, Media: rtpbridge.Stats{AtoB: rtpbridge.Direction{Packets: 100}}},                                         // one way
		{ID: "b", Answered: now, Media: rtpbridge.Stats{AtoB: rtpbridge.Direction{Packets: 100}, BtoA: rtpbridge.Direction{Packets: 90}}}, // both
		{ID: "c", Media: rtpbridge.Stats{AtoB: rtpbridge.Direction{Packets: 10}}},                                                         // early media, ringing
	}}
	got := gather(t, snapSource{Snapshot{Calls: calls, Media: &MediaCounts{}}})
	if got["linkmanager_calls_one_way{}"] != 1 || got["linkmanager_calls_active{}"] != 3 {
		t.Fatalf("one_way %v, active %v; want 1 and 3", got["linkmanager_calls_one_way{}"], got["linkmanager_calls_active{}"])
	}
}

// The SIP ALG verdict (issue 11 item 2) per trunk, for the router over
// all trunks, and as metrics.
func TestSIPALGStatus(t *testing.T) {
	const advice = "SIP ALG detected: the router rewrites SIP (Via/Contact); switch off 'SIP ALG' / 'SIP helper' / 'SIP passthrough' on the router"
	detected := trunk.ALGStatus{Verdict: trunk.ALGDetected, Fields: "Via/Contact", Sent: "198.51.100.1:65002",
		Seen: "192.168.100.2:65002", Rewrites: 4, Advice: advice}
	for _, tc := range []struct {
		name   string
		trunks []trunk.ALGStatus
		want   string
		on     []string
	}{
		{"no trunks", nil, trunk.ALGUnknown, nil},
		{"not known yet", []trunk.ALGStatus{{}, {Verdict: trunk.ALGUnknown}}, trunk.ALGUnknown, nil},
		{"clean", []trunk.ALGStatus{{Verdict: trunk.ALGNone}, {Verdict: trunk.ALGUnknown}}, trunk.ALGNone, nil},
		{"one trunk sees it", []trunk.ALGStatus{{Verdict: trunk.ALGNone}, detected}, trunk.ALGDetected, []string{"t1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var regs []trunk.RegStatus
			for i, a := range tc.trunks {
				regs = append(regs, trunk.RegStatus{Trunk: fmt.Sprintf("t%d", i), ALG: a})
			}
			st := status(Snapshot{Trunks: regs})
			if st.SIPALG.Verdict != tc.want || fmt.Sprint(st.SIPALG.Trunks) != fmt.Sprint(tc.on) {
				t.Fatalf("sip_alg %+v, want %s on %v", st.SIPALG, tc.want, tc.on)
			}
			if tc.want == trunk.ALGDetected && (st.SIPALG.Advice != advice || st.SIPALG.Seen != "192.168.100.2:65002") {
				t.Errorf("sip_alg %+v lacks the advice and evidence", st.SIPALG)
			}
			for i, ts := range st.Trunks {
				want := tc.trunks[i].Verdict
				if want == "" {
					want = trunk.ALGUnknown
				}
				if ts.SIPALG.Verdict != want {
					t.Errorf("trunk %s sip_alg %+v, want %s", ts.Name, ts.SIPALG, want)
				}
			}
			got := gather(t, snapSource{Snapshot{Trunks: regs}})
			for i, a := range tc.trunks {
				name := fmt.Sprintf("t%d", i)
				if got["linkmanager_sip_alg_detected{trunk="+name+"}"] != boolFloat(a.Verdict == trunk.ALGDetected) ||
					got["linkmanager_sip_alg_rewrites_total{trunk="+name+"}"] != float64(a.Rewrites) {
					t.Errorf("metrics for %s: %v", name, got)
				}
			}
		})
	}
}

// Content-Length mismatches on the Internet socket are shown and counted,
// but make no verdict: anyone who forges a provider's address can send one.
func TestSIPALGLengthMismatches(t *testing.T) {
	snap := Snapshot{Trunks: []trunk.RegStatus{{Trunk: "provider", ALG: trunk.ALGStatus{Verdict: trunk.ALGNone}}},
		Sockets: []SocketDrops{{Name: "internet", LengthMismatch: 3}, {Name: "pbx", LengthMismatch: 7}}}
	st := status(snap)
	if a := st.SIPALG; a.Verdict != trunk.ALGNone || a.LengthMismatches != 3 || !strings.Contains(a.Note, "3 SIP message(s)") {
		t.Errorf("sip_alg %+v", a)
	}
	got := gather(t, snapSource{snap})
	if got["linkmanager_sip_content_length_mismatch_total{socket=internet}"] != 3 || got["linkmanager_sip_content_length_mismatch_total{socket=pbx}"] != 7 {
		t.Errorf("metrics %v", got)
	}
	if st := status(Snapshot{}); st.SIPALG.Note != "" {
		t.Errorf("note %q without mismatches", st.SIPALG.Note)
	}
}
