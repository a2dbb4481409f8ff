//go:build linux

package e2e

// The daemon's calls through the real NAT: issue 3, "Tests". sipp plays the
// PBX (192.168.100.20) and the remote phone (198.51.100.70) with pcap audio
// (g711a.pcap: 236 RTP packets of PT 8); Kamailio routes between the trunk
// and the phone. RTP is counted by tcpdump in the receiving namespace; ≥ 99 %
// (234 of 236) must arrive in each direction, from the address the SDP
// announced: the router's public IP and a pool port at the phone, the
// daemon's LAN IP and a LAN relay port at the PBX. The scenarios and the
// counting are proven without the daemon by TestLabCallScenarios.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
)

// callDir is who calls whom.
type callDir struct {
	name           string
	caller, callee Endpoint
}

var (
	outbound = callDir{"outbound", PBXCaller, PhoneCallee} // the PBX calls the phone
	inbound  = callDir{"inbound", PhoneCaller, PBXCallee}  // the phone calls the DID
)

// relayAudio is what must reach at through the daemon: from the daemon's
// LAN address and a LAN relay port at the PBX, from the router's public
// address and an Internet pool port at anyone on the Internet (the phone,
// a provider SBC).
func relayAudio(at Endpoint) AudioCheck {
	if at.NS == NSPBX {
		return AudioCheck{At: at, SrcIP: DaemonIP, PortMin: LANPoolMin, PortMax: LANPoolMax}
	}
	return AudioCheck{At: at, SrcIP: WANIP1, PortMin: PoolMin, PortMax: PoolMax}
}

// callLab is a lab with the daemon registered.
func callLab(t *testing.T, cfg DaemonConfig, opts ...LabOption) (*Lab, *Daemon) {
	t.Helper()
	l := newLab(t, opts...)
	// Not startRegistered: its busy PBX would hold 192.168.100.20:5060.
	d := l.StartDaemon(cfg.YAML())
	d.WaitLog(t, regTimeout, Msg("registered", "trunk", "provider"))
	return l, d
}

// stopDaemon stops the daemon and fails on a non-zero exit (66: a data race
// under real traffic; the e2e daemon is built with -race).
func stopDaemon(t *testing.T, d *Daemon) {
	t.Helper()
	if code := d.Stop(); code != 0 {
		t.Errorf("daemon exit code %d after SIGTERM, want 0:\n%s", code, tail(d.Log(), 30))
	}
}

// placeCall runs one call of dir through the daemon with the given
// scenarios and waits until it is over (bounded by the sipp timeouts).
func placeCall(t *testing.T, l *Lab, dir callDir, callerScenario, calleeScenario string, callerHold, calleeHold time.Duration) *CallRun {
	t.Helper()
	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: dir.caller, Scenario: callerScenario, Hold: callerHold, Timeout: 45 * time.Second},
		Callee:  SippSpec{Endpoint: dir.callee, Scenario: calleeScenario, Hold: calleeHold, Timeout: 45 * time.Second},
		Capture: []string{NSPBX, NSPhone, NSProvider, NSLM},
	})
	r.Finish(t)
	return r
}

// requireCompleted fails unless both sipps ran their scenario to the end
// (exit 0) and the caller's INVITE got code.
func requireCompleted(t *testing.T, r *CallRun, code int) {
	t.Helper()
	if a := r.Caller.Answer(); a != code {
		t.Fatalf("the caller's INVITE was answered %d, want %d", a, code)
	}
	if r.Caller.ExitCode() != 0 || r.Callee.ExitCode() != 0 {
		t.Errorf("sipp exit codes: caller %d, callee %d (0: scenario completed)", r.Caller.ExitCode(), r.Callee.ExitCode())
	}
}

// checkLegs asserts the leg separation on everything a call exchanged: no
// LAN address towards the provider or the phone, no provider header at the
// PBX.
func checkLegs(t *testing.T, r *CallRun) {
	t.Helper()
	r.CheckNoLANLeak(t)
	r.CheckPBXIsolation(t)
}

// checkTwoWay asserts the full g711a.pcap (plays times) in both directions.
func checkTwoWay(t *testing.T, r *CallRun, dir callDir, plays int) {
	t.Helper()
	for _, at := range []Endpoint{dir.caller, dir.callee} {
		c := relayAudio(at)
		c.PerCall = plays * G711Packets
		r.CheckAudio(t, c)
	}
}

// 1. The PBX calls the phone: both play the pcap; ≥ 99 % arrives each way,
// the phone hears the router's public IP on a pool port, and nothing the
// provider or the phone gets names a LAN address.
func TestCallOutboundTwoWayAudio(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	r := placeCall(t, l, outbound, "uac-pcap.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, outbound, 1)
	checkLegs(t, r)
	r.CheckSDPPassThrough(t, PhoneCallee)
	r.CheckSDPPassThrough(t, PBXCaller)
	// The provider leg: a new INVITE from 65002 to the trunk's domain.
	inv, ok := FirstSIP(r.SIP[NSProvider], func(m WireSIP) bool { return m.Method == "INVITE" })
	if !ok {
		t.Fatal("no INVITE reached the provider")
	}
	if want := netip.AddrPortFrom(netip.MustParseAddr(WANIP1), DaemonSIPPort); inv.Src != want {
		t.Errorf("the provider got the INVITE from %s, want %s (the trunk's socket through the NAT)", inv.Src, want)
	}
	if want := "INVITE sip:" + PhoneNumber + "@" + SIPDomain; !strings.HasPrefix(inv.First, want) {
		t.Errorf("the provider got %q, want %q...", inv.First, want)
	}
	if r.Callee.Received("BYE") == 0 {
		t.Error("the phone got no BYE after the PBX hung up")
	}
	stopDaemon(t, d)
}

// 2. The phone calls the DID: the daemon sends the INVITE to the PBX from
// 192.168.100.2:5060; two-way audio as in 1.
func TestCallInboundTwoWayAudio(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	r := placeCall(t, l, inbound, "uac-pcap.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, inbound, 1)
	checkLegs(t, r)
	r.CheckSDPPassThrough(t, PBXCallee)
	r.CheckSDPPassThrough(t, PhoneCaller)
	inv, ok := FirstSIP(r.SIPTo(PBXCallee), func(m WireSIP) bool { return m.Method == "INVITE" })
	if !ok {
		t.Fatal("no INVITE reached the PBX")
	}
	if want := netip.MustParseAddrPort(DaemonIP + ":5060"); inv.Src != want {
		t.Errorf("the PBX got the INVITE from %s, want %s (pbx.listen)", inv.Src, want)
	}
	if r.Callee.Received("BYE") == 0 {
		t.Error("the PBX got no BYE after the phone hung up")
	}
	stopDaemon(t, d)
}

// 3. CANCEL both ways: the caller gives up while it rings. The callee gets a
// CANCEL and its 487 is ACKed; the caller gets 200 to the CANCEL and 487.
func TestCallCancel(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := placeCall(t, l, dir, "uac-cancel.xml", "uas-cancel.xml", 0, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 487)
			checkLegs(t, r)
			if r.Caller.ReceivedResponse(200, "CANCEL") == 0 {
				t.Errorf("the %s got no 200 to its CANCEL", dir.caller.Name)
			}
			if r.Callee.Received("CANCEL") == 0 {
				t.Errorf("the %s got no CANCEL", dir.callee.Name)
			}
			if r.Callee.Received("ACK") == 0 {
				t.Errorf("the %s's 487 was not ACKed", dir.callee.Name)
			}
			for _, m := range []string{"BYE", "PRACK", "UPDATE"} {
				if n := r.Callee.Received(m); n > 0 {
					t.Errorf("the cancelled %s got %d %s", dir.callee.Name, n, m)
				}
			}
			if n := r.Caller.ReceivedResponse(200, "INVITE"); n > 0 {
				t.Errorf("the %s got a 200 to the cancelled INVITE", dir.caller.Name)
			}
		})
	}
	// The daemon still places calls afterwards (nothing left hanging).
	t.Run("call-after", func(t *testing.T) {
		r := placeCall(t, l, outbound, "uac-pcap.xml", "uas-pcap.xml", 8*time.Second, 0)
		defer r.ExplainOnFailure(t)
		requireCompleted(t, r, 200)
		checkTwoWay(t, r, outbound, 1)
	})
	stopDaemon(t, d)
}

// 4. BYE from each side, in both call directions: the side that hangs up
// gets 200, the other side gets the BYE (and both scenarios complete).
func TestCallBye(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct {
		name     string
		dir      callDir
		calleeUp bool // the callee hangs up (else the caller)
	}{
		{"outbound/pbx-hangs-up", outbound, false},
		{"outbound/phone-hangs-up", outbound, true},
		{"inbound/phone-hangs-up", inbound, false},
		{"inbound/pbx-hangs-up", inbound, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			callerSc, calleeSc := "uac-pcap.xml", "uas-pcap.xml"
			callerHold, calleeHold := 3*time.Second, time.Duration(0)
			hanger, other, hangerUA, otherUA := c.dir.caller, c.dir.callee, (*CallRun).caller, (*CallRun).callee
			if c.calleeUp {
				callerSc, calleeSc = "uac-pcap-waitbye.xml", "uas-pcap-bye.xml"
				callerHold, calleeHold = 0, 3*time.Second
				hanger, other, hangerUA, otherUA = c.dir.callee, c.dir.caller, (*CallRun).callee, (*CallRun).caller
			}
			r := placeCall(t, l, c.dir, callerSc, calleeSc, callerHold, calleeHold)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			if hangerUA(r).ReceivedResponse(200, "BYE") == 0 {
				t.Errorf("the %s hung up but got no 200 to its BYE", hanger.Name)
			}
			if otherUA(r).Received("BYE") == 0 {
				t.Errorf("the %s got no BYE after the %s hung up", other.Name, hanger.Name)
			}
		})
	}
	stopDaemon(t, d)
}

func (r *CallRun) caller() *Sipp { return r.Caller }
func (r *CallRun) callee() *Sipp { return r.Callee }

// 5. Hold and resume: the caller re-INVITEs with a=sendonly, then
// a=sendrecv; the direction reaches the far end, and after the resume the
// whole pcap arrives again in both directions.
func TestCallHoldResume(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := placeCall(t, l, dir, "uac-hold.xml", "uas-hold.xml", 0, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			// Offers as the callee got them (retransmissions folded), and the
			// resume: the first sendrecv offer after the hold, where each end
			// got or sent it.
			var offers, answers []string
			var resumeAtCallee, resumeAtCaller time.Time
			for _, m := range r.SIPTo(dir.callee) {
				if s, ok := ParseSDPAudio(m.Body()); ok && m.Method == "INVITE" {
					if len(offers) == 0 || offers[len(offers)-1] != s.Direction {
						offers = append(offers, s.Direction)
						if len(offers) == 3 {
							resumeAtCallee = m.T
						}
					}
				}
			}
			held := false
			for _, m := range r.SIPFrom(dir.caller) {
				if s, ok := ParseSDPAudio(m.Body()); ok && m.Method == "INVITE" {
					if s.Direction == "sendonly" {
						held = true
					} else if held && resumeAtCaller.IsZero() {
						resumeAtCaller = m.T
					}
				}
			}
			for _, m := range r.SIPTo(dir.caller) {
				if s, ok := ParseSDPAudio(m.Body()); ok && m.Code == 200 && m.CSeqMethod() == "INVITE" {
					if len(answers) == 0 || answers[len(answers)-1] != s.Direction {
						answers = append(answers, s.Direction)
					}
				}
			}
			if resumeAtCallee.IsZero() || resumeAtCaller.IsZero() {
				t.Fatalf("no resume seen: offers at the %s %v", dir.callee.Name, offers)
			}
			if strings.Join(offers, " ") != "sendrecv sendonly sendrecv" {
				t.Errorf("the %s got offers %v, want [sendrecv sendonly sendrecv]", dir.callee.Name, offers)
			}
			if strings.Join(answers, " ") != "sendrecv recvonly sendrecv" {
				t.Errorf("the %s got answers %v, want [sendrecv recvonly sendrecv]", dir.caller.Name, answers)
			}
			// After the resume: the whole pcap again, each way.
			c := relayAudio(dir.callee)
			c.From = resumeAtCallee
			r.CheckAudio(t, c)
			c = relayAudio(dir.caller)
			c.From = resumeAtCaller
			r.CheckAudio(t, c)
		})
	}
	stopDaemon(t, d)
}

// 6. DTMF: after the audio the caller sends RFC 4733 events (digits 1, 5, 9;
// 30 packets of PT 101); every one reaches the callee, in order, end bits
// included.
func TestCallDTMF(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := placeCall(t, l, dir, "uac-dtmf.xml", "uas-pcap.xml", 0, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			checkTwoWay(t, r, dir, 1)
			checkDTMF(t, r, relayAudio(dir.callee))
		})
	}
	stopDaemon(t, d)
}

// 7. Early media: the callee answers 183 with SDP and plays the whole pcap
// before its 200; the caller hears ≥ 99 % of it before the 200 arrives.
func TestCallEarlyMedia(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := placeCall(t, l, dir, "uac-pcap.xml", "uas-early.xml", time.Second, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			checkEarlyMedia(t, r, dir)
		})
	}
	stopDaemon(t, d)
}

// checkEarlyMedia asserts that the caller of dir got a 183 with SDP and
// heard ≥ 99 % of the pcap before its 200; it returns the 183 and the 200.
func checkEarlyMedia(t *testing.T, r *CallRun, dir callDir) (p183, ok200 WireSIP) {
	t.Helper()
	to := r.SIPTo(dir.caller)
	p183, ok := FirstSIP(to, isResponse(183, "INVITE"))
	if !ok {
		t.Fatalf("the %s got no 183", dir.caller.Name)
	}
	if _, ok := ParseSDPAudio(p183.Body()); !ok {
		t.Errorf("the %s got a 183 without SDP:\n%s", dir.caller.Name, p183.Text)
	}
	if ok200, ok = FirstSIP(to, isResponse(200, "INVITE")); !ok {
		t.Fatalf("the %s got no 200", dir.caller.Name)
	}
	c := relayAudio(dir.caller)
	c.To = ok200.T
	r.CheckAudio(t, c)
	return p183, ok200
}

// 8. Media timeout (rtp.media_timeout 5s): both ends play the pcap once
// (7 s, longer than the timeout) and then fall silent; both get a BYE from
// the daemon 5 s (+ slack) after the last packet, not while media flows.
func TestCallMediaTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 5 * time.Second
	l, d := callLab(t, DaemonConfig{RTP: "{port_min: 55000, port_max: 56000, media_timeout: 5s}"})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := placeCall(t, l, dir, "uac-pcap-waitbye.xml", "uas-pcap.xml", 0, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			checkTwoWay(t, r, dir, 1)
			for _, at := range []Endpoint{dir.caller, dir.callee} {
				media := Select(r.Pkts[at.NS], RTPWithPT(PTPCMA))
				if len(media) == 0 {
					t.Errorf("no media at the %s", at.Name)
					continue
				}
				checkByeAfter(t, r, at, media[len(media)-1].T, "the last RTP packet", timeout)
			}
		})
	}
	stopDaemon(t, d)
}

// checkByeAfter fails unless at got the daemon's BYE about timeout after
// last (the media timeout's moment; what is named in the messages), within
// timeout-1s .. timeout+6s.
func checkByeAfter(t *testing.T, r *CallRun, at Endpoint, last time.Time, what string, timeout time.Duration) {
	t.Helper()
	bye, ok := FirstSIP(r.SIPTo(at), func(m WireSIP) bool { return m.Method == "BYE" })
	if !ok {
		t.Errorf("the %s got no BYE after %s", at.Name, what)
		return
	}
	gap := bye.T.Sub(last)
	t.Logf("%s: BYE %v after %s", at.Name, gap.Round(time.Millisecond), what)
	if gap < timeout-time.Second || gap > timeout+6*time.Second {
		t.Errorf("the %s got the BYE %v after %s, want about %v (%v..%v)",
			at.Name, gap.Round(time.Millisecond), what, timeout, timeout-time.Second, timeout+6*time.Second)
	}
}

// 9. Pool exhaustion: with rtp 55000-55003 (two RTP/RTCP pairs: two calls,
// one provider-side pair each) a third call gets 503 with Retry-After and
// never reaches the provider. Ended calls' ports are quarantined (bound and
// drained), but only pairs in use exhaust the pool: two calls right after
// take both pairs over, with audio both ways.
func TestCallPoolExhausted(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{RTP: "{port_min: 55000, port_max: 55003}"})
	twoCalls := func(hold time.Duration) *CallRun {
		return l.StartCall(CallSetup{
			Caller:  SippSpec{Endpoint: PBXCaller, Scenario: "uac-pcap.xml", Calls: 2, Hold: hold, Timeout: 45 * time.Second},
			Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Calls: 2, Timeout: 45 * time.Second},
			Capture: []string{NSPBX, NSPhone, NSProvider, NSLM},
		})
	}
	oneMore := func(port int) *Sipp {
		s := l.StartSipp(SippSpec{Endpoint: PBXCaller.WithPort(port), Scenario: "uac-pcap.xml", Hold: time.Second, Timeout: 20 * time.Second})
		if _, err := s.Wait(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		return s
	}
	check503 := func(s *Sipp, what string) {
		t.Helper()
		if a := s.Answer(); a != 503 {
			t.Errorf("%s: the PBX's INVITE was answered %d, want 503\n%s", what, a, s.Trace())
			return
		}
		for _, m := range s.Messages() {
			if !m.Sent && m.Code == 503 {
				ra := WireSIP{Text: m.Text}.Header("Retry-After")
				if len(ra) == 0 {
					t.Errorf("%s: 503 without Retry-After:\n%s", what, m.Text)
				} else if f := strings.Fields(ra[0]); len(f) == 0 || atoiOr(f[0], 0) <= 0 {
					t.Errorf("%s: Retry-After %q, want a positive number of seconds", what, ra[0])
				} else {
					t.Logf("%s: %s, Retry-After: %s", what, m.First, ra[0])
				}
				break
			}
		}
	}

	// Two calls take both pairs.
	ab := twoCalls(12 * time.Second)
	deadline := time.Now().Add(15 * time.Second)
	for ab.Caller.ReceivedResponse(200, "INVITE") < 2 {
		if ab.Caller.Exited() || time.Now().After(deadline) {
			ab.Finish(t)
			ab.ExplainOnFailure(t)
			t.Fatalf("the two calls that fill the pool were not both answered: %v", ab.Caller.Finals())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The daemon says so: /status at 100 % naming the fix, and one warning
	// in its log (issue 10, item 2).
	if body, err := l.AdminGet("/status"); err != nil {
		t.Errorf("/status: %v", err)
	} else {
		var st admin.Status
		if err := json.Unmarshal([]byte(body), &st); err != nil || st.Ports == nil || st.Ports.Capacity.Calls != 2 ||
			st.Ports.Capacity.Max != 2 || !strings.Contains(st.Ports.Capacity.Warning, "rtp.port_min and rtp.port_max (now 55000-55003") {
			t.Errorf("/status while the pool is full (%v): want 2 of 2 calls and the warning: %s", err, body)
		}
	}
	d.WaitSeen(t, 5*time.Second, func(e map[string]any) bool {
		return e["level"] == "warn" && strings.HasPrefix(fmt.Sprint(e["msg"]), "relay ports 100 % used (2 of 2 calls)")
	})
	// A third one: 503 with Retry-After, and nothing reaches the provider.
	check503(oneMore(5080), "third call while the pool is full")
	ab.Finish(t)
	func() {
		defer ab.ExplainOnFailure(t)
		if ab.Caller.ReceivedResponse(200, "INVITE") < 2 || ab.Caller.ExitCode() != 0 {
			t.Errorf("the two calls did not complete (exit %d)", ab.Caller.ExitCode())
		}
		c := relayAudio(PhoneCallee)
		c.Streams = 2
		ab.CheckAudio(t, c)
		c = relayAudio(PBXCaller)
		c.Streams = 2
		ab.CheckAudio(t, c)
		ids := map[string]bool{}
		for _, m := range ab.SIP[NSProvider] {
			if m.Method == "INVITE" && m.Src.Addr() == netip.MustParseAddr(WANIP1) {
				ids[m.CallID] = true
			}
		}
		if len(ids) != 2 {
			t.Errorf("the provider got INVITEs of %d calls from the daemon, want 2 (the refused call must not reach it)", len(ids))
		}
	}()

	// Both pairs are quarantined now, which no longer holds calls up: the
	// next two take them over at once (the relay's latching keeps late
	// packets of the old calls out), with audio both ways.
	again := twoCalls(8 * time.Second)
	again.Finish(t)
	defer again.ExplainOnFailure(t)
	if n := again.Caller.ReceivedResponse(200, "INVITE"); n < 2 {
		t.Fatalf("right after the first two ended, %d of 2 calls were answered (finals %v): quarantined pairs were not reused", n, again.Caller.Finals())
	}
	c := relayAudio(PhoneCallee)
	c.Streams = 2
	again.CheckAudio(t, c)
	c = relayAudio(PBXCaller)
	c.Streams = 2
	again.CheckAudio(t, c)
	stopDaemon(t, d)
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// 10. 50 concurrent calls (the PBX calls the phone 50 times at 25 calls/s,
// each held 9 s, all 50 up at once), each with two-way audio: 50 streams of
// ≥ 99 % of the pcap per direction, each from its own relay port.
func TestCallConcurrent50(t *testing.T) {
	t.Parallel()
	const calls = 50
	// 25 calls/s is above pbx.max_call_rate's default of 10.
	l, d := callLab(t, DaemonConfig{LogLevel: "info", PBX: "max_call_rate: 30"})
	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: PBXCaller, Scenario: "uac-pcap.xml", Calls: calls, Rate: 25, Hold: 9 * time.Second, Timeout: 75 * time.Second},
		Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Calls: calls, Timeout: 75 * time.Second},
		Capture: []string{NSPBX, NSPhone},
	})
	r.Finish(t)
	defer r.ExplainOnFailure(t)
	r.CheckAllAnswered(t, PBXCaller, calls)
	// All up at once: at the phone, between its 200 and the BYE it got.
	up, maxUp := map[string]int{}, 0
	cur := 0
	for _, m := range r.SIP[NSPhone] {
		switch {
		case m.Code == 200 && m.CSeqMethod() == "INVITE" && m.Src.Addr() == netip.MustParseAddr(PhoneIP):
			if up[m.CallID] == 0 {
				up[m.CallID] = 1
				cur++
			}
		case m.Method == "BYE" && m.Dst.Addr() == netip.MustParseAddr(PhoneIP):
			if up[m.CallID] == 1 {
				up[m.CallID] = 2
				cur--
			}
		}
		maxUp = max(maxUp, cur)
	}
	t.Logf("at most %d calls were up at once", maxUp)
	if maxUp != calls {
		t.Errorf("at most %d calls were up at once, want %d", maxUp, calls)
	}
	// The capture is the witness; if a busy machine made tcpdump drop
	// packets, the relay's per-call counters tell its loss from ours.
	for _, at := range []Endpoint{PhoneCallee, PBXCaller} {
		c := relayAudio(at)
		c.Streams = calls
		if r.Dropped[at.NS] > 0 {
			c.Relayed = relayedTo(t, d, at, calls)
		}
		r.CheckAudio(t, c)
	}
	stopDaemon(t, d)
}

// 11. The pinhole race (nat-findings 4): the remote starts its RTP at once:
// the phone as caller the instant the 200 arrives (before its ACK), the
// phone as callee 0 ms after the ACK. The daemon's pinhole must leave
// first: audio is two-way, the phone hears the port the SDP announced, and
// the router mapped the daemon's port to itself (port-preserving) with no
// UNREPLIED inbound entry on it.
func TestCallPinholeRace(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct {
		name           string
		dir            callDir
		caller, callee string
	}{
		{"inbound/phone-sends-before-ack", inbound, "uac-pcap-preack.xml", "uas-pcap.xml"},
		{"outbound/phone-sends-at-ack", outbound, "uac-pcap.xml", "uas-pcap.xml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := placeCall(t, l, c.dir, c.caller, c.callee, 8*time.Second, 0)
			defer r.ExplainOnFailure(t)
			// conntrack entries live 20 s after the last packet: read them now
			ct, err := l.ConntrackList()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("pinhole timeline:\n%s", r.PinholeTimeline())
			requireCompleted(t, r, 200)
			checkTwoWay(t, r, c.dir, 1)
			checkLegs(t, r)
			for a := range AnnouncedTo(r.SIP[NSPhone], PhoneIP) {
				if a.Addr() != netip.MustParseAddr(WANIP1) {
					continue
				}
				port := int(a.Port())
				mapped := false
				for _, e := range ct {
					if e.Orig.Src == DaemonIP && e.Orig.Sport == port && e.Orig.Dst == PhoneIP {
						mapped = true
						if e.Reply.Dst != WANIP1 || e.Reply.Dport != port {
							t.Errorf("the router maps the daemon's %s:%d to %s:%d, want %s:%d: %s", DaemonIP, port, e.Reply.Dst, e.Reply.Dport, WANIP1, port, e.Raw)
						}
					}
					if e.Orig.Src == PhoneIP && e.Orig.Dst == WANIP1 && e.Orig.Dport == port {
						t.Errorf("the phone's RTP reached %s:%d before the daemon's pinhole (an inbound conntrack entry): %s", WANIP1, port, e.Raw)
					}
				}
				if !mapped {
					t.Errorf("no conntrack entry for the daemon's media port %d towards the phone", port)
				}
			}
		})
	}
	stopDaemon(t, d)
}

// 12. RTP injection: during an outbound call, after the phone's audio has
// latched, 100 RTP packets with a foreign SSRC come from another port of the
// phone's host to the daemon's public media port. The router forwards the
// pool to the daemon (as the README's firewall rules do), so they do reach
// it (checked in the lm namespace); none may reach the PBX, and the real
// audio stays two-way.
func TestCallRTPInjection(t *testing.T) {
	t.Parallel()
	const (
		injected = 100
		ssrc     = 0x1badb002
	)
	l, d := callLab(t, DaemonConfig{})
	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: PBXCaller, Scenario: "uac-pcap.xml", Hold: 9 * time.Second, Timeout: 45 * time.Second},
		Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Timeout: 45 * time.Second},
		Capture: []string{NSPBX, NSPhone, NSLM},
	})
	defer r.ExplainOnFailure(t)
	// The phone's ACK: its audio starts now; give the daemon a second to latch.
	var target netip.AddrPort
	deadline := time.Now().Add(20 * time.Second)
	for r.Callee.Received("ACK") == 0 {
		if r.Callee.Exited() || time.Now().After(deadline) {
			r.Finish(t)
			t.Fatal("the call to the phone was not set up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range r.Callee.Messages() {
		if !m.Sent && strings.HasPrefix(m.First, "INVITE ") {
			if s, ok := ParseSDPAudio(WireSIP{Text: m.Text}.Body()); ok {
				target = s.Addr
			}
		}
	}
	if !target.IsValid() {
		r.Finish(t)
		t.Fatal("no SDP in the INVITE the phone got")
	}
	time.Sleep(time.Second)
	if err := l.ForwardRTPPool(); err != nil {
		t.Fatal(err)
	}
	conn, err := l.ListenUDP(NSPhone, PhoneIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Logf("injecting %d packets from %s to %s", injected, conn.LocalAddr(), target)
	payload := make([]byte, 240)
	for i := range payload {
		payload[i] = 0xee
	}
	for i := 0; i < injected; i++ {
		pkt := rtpPacket(PTPCMA, uint16(1000+i), uint32(240*i), ssrc, payload)
		if _, err := conn.WriteToUDPAddrPort(pkt, target); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Finish(t)
	requireCompleted(t, r, 200)
	daemonPort := func(p Packet) bool {
		return p.Dst == netip.AddrPortFrom(netip.MustParseAddr(DaemonIP), target.Port())
	}
	arrived := len(Select(r.Pkts[NSLM], RTPWithSSRC(ssrc), daemonPort))
	t.Logf("injected packets at the daemon's host: %d of %d", arrived, injected)
	if arrived < injected*9/10 {
		t.Fatalf("only %d of %d injected packets reached %s:%d: the test proves nothing", arrived, injected, DaemonIP, target.Port())
	}
	if n := len(Select(r.Pkts[NSPBX], RTPWithSSRC(ssrc))); n > 0 {
		t.Errorf("%d injected packets (SSRC %#x) reached the PBX", n, ssrc)
	}
	marker := 0
	for _, p := range Select(r.Pkts[NSPBX], To(PBXIP)) {
		if h, ok := ParseRTP(p.Payload); ok && len(h.Body) > 0 && allBytes(h.Body, 0xee) {
			marker++
		}
	}
	if marker > 0 {
		t.Errorf("%d packets with the injected payload reached the PBX", marker)
	}
	checkTwoWay(t, r, outbound, 1)
	stopDaemon(t, d)
}

func allBytes(b []byte, v byte) bool {
	for _, x := range b {
		if x != v {
			return false
		}
	}
	return true
}

// CheckAllAnswered asserts that calls calls reached at answered (a 200 to
// each INVITE) and that the sipp caller exited cleanly.
func (r *CallRun) CheckAllAnswered(t testing.TB, at Endpoint, calls int) {
	t.Helper()
	answered := map[string]bool{}
	for _, m := range r.SIPTo(at) {
		if m.Code == 200 && m.CSeqMethod() == "INVITE" {
			answered[m.CallID] = true
		}
	}
	if len(answered) != calls || r.Caller.ExitCode() != 0 {
		t.Errorf("%d of %d calls answered; sipp caller exit %d\n%s", len(answered), calls, r.Caller.ExitCode(), tail(r.Caller.Log(), 30))
	}
}

// Issue 9 item 10, in the lab: one dead direction ends the call. The PBX
// plays the pcap again and again and waits for a BYE; the phone plays it
// once (7 s) and then falls silent, as a provider leg that died would.
// With rtp.media_timeout 5s both get the daemon's BYE about 5 s after the
// phone's last packet, while the PBX still streams. The old rule (the
// later of the two directions) never ended such a call: the PBX's audio
// kept it up until sipp's own timeout.
func TestCallOneDeadDirectionEnds(t *testing.T) {
	t.Parallel()
	const timeout = 5 * time.Second
	l, d := callLab(t, DaemonConfig{RTP: "{port_min: 55000, port_max: 56000, media_timeout: 5s}"})
	// The caller: uac-pcap-waitbye.xml, its one play made a loop until the BYE.
	src, err := os.ReadFile(filepath.Join(l.sippDir, "uac-pcap-waitbye.xml"))
	if err != nil {
		t.Fatal(err)
	}
	play := "  <nop>\n    <action>\n      <exec play_pcap_audio=\"/usr/share/sip-tester/g711a.pcap\"/>\n    </action>\n  </nop>\n  <recv request=\"BYE\"/>"
	if !strings.Contains(string(src), play) {
		t.Fatal("uac-pcap-waitbye.xml no longer has the play step this test loops")
	}
	loop := "  <label id=\"play\"/>\n" + strings.TrimSuffix(play, "<recv request=\"BYE\"/>") +
		"<recv request=\"BYE\" timeout=\"7080\" ontimeout=\"play\"/>"
	scenario := filepath.Join(l.Dir, "uac-pcap-loop-waitbye.xml")
	if err := os.WriteFile(scenario, []byte(strings.Replace(string(src), play, loop, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: PBXCaller, Scenario: scenario, Timeout: 45 * time.Second},
		Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Timeout: 45 * time.Second},
		Capture: []string{NSPBX, NSPhone},
	})
	r.Finish(t)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 200)
	fromPhone := Select(r.Pkts[NSPBX], To(PBXIP), RTPWithPT(PTPCMA))   // the phone's audio, at the PBX
	fromPBX := Select(r.Pkts[NSPhone], To(PhoneIP), RTPWithPT(PTPCMA)) // the PBX's audio, at the phone
	if len(fromPhone) == 0 || len(fromPBX) == 0 {
		t.Fatalf("audio: %d packets at the PBX, %d at the phone", len(fromPhone), len(fromPBX))
	}
	phoneLast := fromPhone[len(fromPhone)-1].T
	for _, at := range []Endpoint{PBXCaller, PhoneCallee} {
		checkByeAfter(t, r, at, phoneLast, "the phone's last RTP packet", timeout)
	}
	// The PBX's direction was alive: it streamed past the phone's silence
	// by more than the timeout, up to the BYE.
	if pbxLast := fromPBX[len(fromPBX)-1].T; pbxLast.Sub(phoneLast) < timeout-time.Second {
		t.Errorf("the PBX's audio stopped %v after the phone's: not a call with one live direction", pbxLast.Sub(phoneLast).Round(time.Millisecond))
	}
	stopDaemon(t, d)
}
