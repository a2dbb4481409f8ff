//go:build linux

package e2e

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"
)

// TestSoakChurn (issue 9 item 16) is the soak in short: calls set up and
// torn down continuously, with audio both ways, while a rogue LAN host
// floods the PBX socket with INVITEs. Every call must be answered and carry
// ≥ 99 % of its audio both ways (by the relay's own counters), and
// afterwards the daemon's goroutines, file descriptors and relay ports come
// back to where they were. RSS is reported, not asserted: a short run
// measures warm-up, and the lab's daemon is built with -race, which
// multiplies its memory.
//
// LINKMANAGER_SOAK_CALLS sets the number of calls (default 60, at 3/s, each
// 9 s: the pcap's 236 packets of 30 ms, then the BYE; about 27 up at once)
// and LINKMANAGER_SOAK_RATE their rate. The hour, with redials,
// random holds and a sampled verdict, is TestSoakLong (bench/soak.sh);
// this is its CI variant.
func TestSoakChurn(t *testing.T) {
	t.Parallel()
	calls, rate := 60, 3
	if v := os.Getenv("LINKMANAGER_SOAK_CALLS"); v != "" {
		calls = atoiOr(v, calls)
	}
	if v := os.Getenv("LINKMANAGER_SOAK_RATE"); v != "" {
		rate = atoiOr(v, rate)
	}
	const rogueIP = "192.168.100.67"
	l, d := callLab(t, DaemonConfig{LogLevel: "info", PBX: fmt.Sprintf("max_call_rate: %d", 2*rate+10)})
	d.WaitSeen(t, 30*time.Second, Msg("registered", "trunk", "provider"))
	metrics := func() string {
		m, err := l.AdminGet("/metrics")
		if err != nil {
			t.Fatalf("/metrics: %v", err)
		}
		return m
	}
	base := metrics()
	baseG, baseFD, baseRSS := metricValue(base, "go_goroutines"), metricValue(base, "process_open_fds"), metricValue(base, "process_resident_memory_bytes")

	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: PBXCaller, Scenario: "uac-pcap.xml", Calls: calls, Rate: rate, Hold: 9 * time.Second, Timeout: time.Duration(calls/rate+60) * time.Second},
		Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Calls: calls, Timeout: time.Duration(calls/rate+60) * time.Second},
		Capture: []string{NSPBX},
	})
	// The scanner: a rogue LAN host's INVITEs, bounded in count and time.
	conn := rogueLANHost(t, l, rogueIP)
	daemon := &net.UDPAddr{IP: net.ParseIP(DaemonIP), Port: 5060}
	for i, end := 0, time.Now().Add(10*time.Second); i < 3000 && time.Now().Before(end); i++ {
		if _, err := conn.WriteTo(scanInvite(rogueIP, i), daemon); err != nil {
			t.Fatalf("scanner: %v", err)
		}
		time.Sleep(3 * time.Millisecond) // a scanner's pace, not a wait for an event
	}
	conn.Close()

	r.Finish(t)
	r.CheckAllAnswered(t, PBXCaller, calls)
	var short []int
	for _, n := range append(relayedTo(t, d, PhoneCallee, calls), relayedTo(t, d, PBXCaller, calls)...) {
		if n < 234 {
			short = append(short, n)
		}
	}
	if len(short) > 0 {
		t.Errorf("%d call directions relayed fewer than 234 of 236 RTP packets: %v", len(short), short)
	}

	// Back to baseline: no call, no port pair in use; goroutines and FDs
	// as before once the quarantined pairs have closed (30 s quiet).
	var after string
	deadline := time.Now().Add(60 * time.Second)
	for {
		after = metrics()
		inUse := metricValue(after, `linkmanager_port_pool_pairs{pool="internet",state="in_use"}`) +
			metricValue(after, `linkmanager_port_pool_pairs{pool="lan",state="in_use"}`)
		g, fd := metricValue(after, "go_goroutines"), metricValue(after, "process_open_fds")
		if metricValue(after, "linkmanager_calls_active") == 0 && inUse == 0 && g <= baseG+5 && fd <= baseFD+4 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("not back to baseline within 60 s: calls %v, pairs in use %v, goroutines %v (was %v), fds %v (was %v)",
				metricValue(after, "linkmanager_calls_active"), inUse, g, baseG, fd, baseFD)
			break
		}
		time.Sleep(time.Second)
	}
	rss := metricValue(after, "process_resident_memory_bytes")
	flood := metricLine(after, `linkmanager_sip_dropped_total{reason="source_not_allowed",socket="pbx"}`)
	t.Logf("%d calls at %d/s: goroutines %v → %v, fds %v → %v, RSS %.1f → %.1f MiB (%+.1f %%); %s", calls, rate,
		baseG, metricValue(after, "go_goroutines"), baseFD, metricValue(after, "process_open_fds"),
		baseRSS/(1<<20), rss/(1<<20), 100*(rss-baseRSS)/baseRSS, flood)
	stopDaemon(t, d)
}

// scanInvite is a scanner's i-th INVITE from ip to the daemon's PBX socket:
// each to another international number, each its own transaction.
func scanInvite(ip string, i int) []byte {
	return fmt.Appendf(nil, "INVITE sip:0090%07d@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:5060;branch=z9hG4bKscan%d\r\n"+
		"From: <sip:scan@%s>;tag=s%d\r\nTo: <sip:0090%07d@%s>\r\nCall-ID: scan%d@%s\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
		i, DaemonIP, ip, i, ip, i, i, DaemonIP, i, ip)
}

// rogueLANHost gives the PBX's namespace the further address ip, a host on
// the LAN that pbx.allow does not name, and returns its socket on ip:5060
// (closed when the test ends).
func rogueLANHost(t *testing.T, l *Lab, ip string) *net.UDPConn {
	t.Helper()
	l.addHostAddr(t, NSPBX, ip)
	conn, err := l.ListenUDP(NSPBX, ip+":5060")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
