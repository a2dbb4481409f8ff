//go:build linux

package e2e

// The calls tests' sipp scenarios and capture counting, proven without the
// daemon: the same caller/callee pairs talk through Kamailio directly (no
// NAT), from a host that authenticates as the trunk to the phone, and from
// the phone to a sipp that registered as the trunk. If these fail, the
// TestCall… failures say nothing about the daemon.

import (
	"testing"
	"time"
)

// Stand-ins for the daemon on the Internet side (the stun namespace has two
// addresses; coturn only uses port 3478).
var (
	// Calls the phone through Kamailio like the daemon's provider leg does.
	labTrunkCaller = Endpoint{Name: "trunkhost", NS: NSSTUN, IP: STUN1IP, Port: 5070, Target: ProviderAddr, Number: PhoneNumber, Auth: true}
	// Registered as the trunk, so Kamailio relays the phone's DID calls to it.
	labTrunkCallee = Endpoint{Name: "trunkhost", NS: NSSTUN, IP: STUN2IP, Port: 5060}
)

type scenarioCase struct {
	name           string
	caller, callee string
	callerHold     time.Duration
	calleeHold     time.Duration
	check          func(t *testing.T, r *CallRun, caller, callee Endpoint)
}

// twoWay checks the full g711a.pcap in both directions, straight from the
// other sipp (no relay: any port).
func twoWay(plays int) func(t *testing.T, r *CallRun, caller, callee Endpoint) {
	return func(t *testing.T, r *CallRun, caller, callee Endpoint) {
		r.CheckAudio(t, AudioCheck{At: callee, SrcIP: caller.IP, PerCall: plays * G711Packets})
		r.CheckAudio(t, AudioCheck{At: caller, SrcIP: callee.IP, PerCall: plays * G711Packets})
	}
}

func labScenarioCases() []scenarioCase {
	return []scenarioCase{
		{name: "audio", caller: "uac-pcap.xml", callee: "uas-pcap.xml", callerHold: 8 * time.Second, check: twoWay(1)},
		{name: "callee-hangs-up", caller: "uac-pcap-waitbye.xml", callee: "uas-pcap-bye.xml", calleeHold: 8 * time.Second, check: twoWay(1)},
		{name: "pre-ack-audio", caller: "uac-pcap-preack.xml", callee: "uas-pcap.xml", callerHold: 8 * time.Second, check: twoWay(1)},
		{name: "cancel", caller: "uac-cancel.xml", callee: "uas-cancel.xml", check: func(t *testing.T, r *CallRun, caller, callee Endpoint) {
			if n := r.Callee.Received("CANCEL"); n == 0 {
				t.Errorf("the callee got no CANCEL")
			}
			if a := r.Caller.Answer(); a != 487 {
				t.Errorf("the caller's INVITE was answered %d, want 487", a)
			}
		}},
		{name: "early-media", caller: "uac-pcap.xml", callee: "uas-early.xml", callerHold: time.Second, check: func(t *testing.T, r *CallRun, caller, callee Endpoint) {
			ok200, found := FirstSIP(r.SIPTo(caller), func(m WireSIP) bool { return m.Code == 200 && m.CSeqMethod() == "INVITE" })
			if !found {
				t.Fatalf("the caller got no 200")
			}
			r.CheckAudio(t, AudioCheck{At: caller, SrcIP: callee.IP, To: ok200.T})
		}},
		{name: "dtmf", caller: "uac-dtmf.xml", callee: "uas-pcap.xml", check: func(t *testing.T, r *CallRun, caller, callee Endpoint) {
			twoWay(1)(t, r, caller, callee)
			checkDTMF(t, r, AudioCheck{At: callee, SrcIP: caller.IP})
		}},
		{name: "hold-resume", caller: "uac-hold.xml", callee: "uas-hold.xml", check: twoWay(2)},
	}
}

// forEachLabGroup runs body in a fresh lab, in parallel, once per call
// direction through Kamailio without the daemon: a sipp authenticating as
// the trunk calls the phone, and the phone calls a sipp registered as the
// trunk (at 198.51.100.61:5060, registered once, then left to the callee).
func forEachLabGroup(t *testing.T, body func(t *testing.T, l *Lab, caller, callee Endpoint)) {
	groups := []struct {
		name           string
		caller, callee Endpoint
		trunkUA        bool
	}{
		{"trunk-to-phone", labTrunkCaller, PhoneCallee, false},
		{"phone-to-trunk", PhoneCaller, labTrunkCallee, true},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			if g.trunkUA {
				if _, err := l.StartRegisteringUA(UASpec{NS: NSSTUN, IP: STUN2IP, Port: 5060, OneShot: true}); err != nil {
					t.Fatal(err)
				}
				if _, err := l.WaitKamailioContact(TrunkUser, 5*time.Second, func(c ULContact) bool { return c.Received == STUN2IP+":5060" }); err != nil {
					t.Fatal(err)
				}
				time.Sleep(500 * time.Millisecond) // the one-shot UA lets go of 5060
			}
			body(t, l, g.caller, g.callee)
		})
	}
}

func TestLabCallScenarios(t *testing.T) {
	t.Parallel()
	forEachLabGroup(t, func(t *testing.T, l *Lab, caller, callee Endpoint) {
		g := struct{ caller, callee Endpoint }{caller, callee}
		for _, c := range labScenarioCases() {
			t.Run(c.name, func(t *testing.T) {
				r := l.StartCall(CallSetup{
					Caller:  SippSpec{Endpoint: g.caller, Scenario: c.caller, Hold: c.callerHold, Timeout: 40 * time.Second},
					Callee:  SippSpec{Endpoint: g.callee, Scenario: c.callee, Hold: c.calleeHold, Timeout: 40 * time.Second},
					Capture: []string{g.caller.NS, g.callee.NS},
				})
				r.Finish(t)
				if r.Caller.ExitCode() != 0 || r.Callee.ExitCode() != 0 {
					t.Errorf("sipp exit codes: caller %d, callee %d\n%s", r.Caller.ExitCode(), r.Callee.ExitCode(), r.Traces())
				}
				c.check(t, r, g.caller, g.callee)
				if t.Failed() {
					t.Logf("flows at the caller:\n%s\nflows at the callee:\n%s", r.Flows(g.caller.NS), r.Flows(g.callee.NS))
				}
			})
		}
	})
}
