//go:build linux

package e2e

// Dialog handling end to end (issue 3, "Full dialog handling on both legs"),
// the features calls_test.go does not cover: UPDATE hold/resume from either
// side, a hold that outlasts rtp.media_timeout, a codec change by
// re-INVITE, OPTIONS inside the dialog, failure responses with their
// reason phrase, the ring timeout, RFC 4028 session refreshes from the
// provider side (with and without SDP), the re-ACK of a retransmitted 2xx (and the daemon's own 2xx
// retransmission), and a T.38 switch with UDPTL through the relay.
//
// Real peers as in calls_test.go: sipp as the PBX (192.168.100.20) and as
// the phone behind Kamailio (198.51.100.70), the daemon in between, tcpdump
// in every namespace the call touches. TestDialogLabScenarios proves the
// new scenarios through Kamailio without the daemon, so a failure of the
// other tests is the daemon's.

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// side is a call party's scenario.
type side struct {
	Scenario string
	Hold     time.Duration // -d
	Args     []string
}

// dialogCall runs one call from caller to callee through the lab (through
// the daemon, or for the lab validation through Kamailio alone) and waits
// until it is over, bounded by the sipp timeouts (45 s each).
func dialogCall(t *testing.T, l *Lab, caller, callee Endpoint, a, b side) *CallRun {
	t.Helper()
	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: caller, Scenario: a.Scenario, Hold: a.Hold, Args: a.Args, Timeout: 45 * time.Second},
		Callee:  SippSpec{Endpoint: callee, Scenario: b.Scenario, Hold: b.Hold, Args: b.Args, Timeout: 45 * time.Second},
		Capture: captureFor(caller, callee),
	})
	r.Finish(t)
	return r
}

// captureFor is every namespace a call between caller and callee touches.
func captureFor(caller, callee Endpoint) []string {
	nss := []string{caller.NS, callee.NS, NSProvider}
	if caller.NS == NSPBX || callee.NS == NSPBX {
		nss = append(nss, NSLM)
	}
	return nss
}

// relayIP is the daemon's address as at sees it.
func relayIP(at Endpoint) string {
	if at.NS == NSPhone {
		return WANIP1
	}
	return DaemonIP
}

// relayRange is the daemon's relay port range facing at.
func relayRange(at Endpoint) (int, int) {
	if at.NS == NSPhone {
		return PoolMin, PoolMax
	}
	return LANPoolMin, LANPoolMax
}

// requireDaemonQuiet fails on daemon log lines that mean a dialog went
// wrong on the daemon's side.
func requireDaemonQuiet(t *testing.T, d *Daemon) {
	t.Helper()
	for _, msg := range []string{"peer never acknowledged our 2xx; hanging up", "media timeout", "bad SDP in re-INVITE answer", "no usable answer in the ACK to a delayed offer"} {
		for _, e := range logsWith(d, msg) {
			t.Errorf("daemon logged %q: %v", msg, e)
		}
	}
}

// checkUpdatesCarryContact asserts that every UPDATE that reached at from
// the daemon names a Contact: RFC 3311 Table 1 makes Contact mandatory in
// UPDATE (a target refresh request).
func checkUpdatesCarryContact(t *testing.T, r *CallRun, at Endpoint) {
	t.Helper()
	for _, m := range distinct(r.SIPTo(at), isRequest("UPDATE")) {
		if len(contactOf(m)) == 0 {
			t.Errorf("the %s got an UPDATE without Contact (RFC 3311 Table 1: mandatory in UPDATE): %s", at.Name, strings.ReplaceAll(m.Text, "\r\n", " | "))
		}
	}
}

// checkUpdateHold asserts one UPDATE hold and resume: the held party got
// the hold offer (direction holdDir, c=0.0.0.0 if rfc2543) and the resume
// (sendrecv) as UPDATEs with SDP, the holder got recvonly then sendrecv in
// the 200s, and after the resume the whole pcap arrives again at both, from
// the relay's announced address.
func checkUpdateHold(t *testing.T, r *CallRun, holder, held Endpoint, holdDir string, rfc2543 bool) {
	t.Helper()
	var offers []string
	var resumeAtHeld, resumeAtHolder time.Time
	for _, m := range distinct(r.SIPTo(held), isRequest("UPDATE")) {
		s, ok := ParseSDPAudio(m.Body())
		if !ok {
			t.Errorf("the %s got an UPDATE without audio SDP:\n%s", held.Name, m.Text)
			continue
		}
		d := s.Direction
		if s.Addr.Addr().IsUnspecified() {
			d += "@0.0.0.0"
		}
		offers = append(offers, d)
		if len(offers) == 2 {
			resumeAtHeld = m.T
		}
	}
	want := holdDir
	if rfc2543 {
		want += "@0.0.0.0"
	}
	if strings.Join(offers, " ") != want+" sendrecv" {
		t.Errorf("the %s got UPDATE offers %v, want [%s sendrecv]", held.Name, offers, want)
	}
	if ups := distinct(r.SIPFrom(holder), isRequest("UPDATE")); len(ups) == 2 {
		resumeAtHolder = ups[1].T
	} else {
		t.Errorf("the %s sent %d UPDATEs, want 2", holder.Name, len(ups))
	}
	var answers []string
	for _, m := range distinct(r.SIPTo(holder), isResponse(200, "UPDATE")) {
		if s, ok := ParseSDPAudio(m.Body()); ok {
			answers = append(answers, s.Direction)
		} else {
			answers = append(answers, "(no SDP)")
		}
	}
	if strings.Join(answers, " ") != "recvonly sendrecv" {
		t.Errorf("the %s got 200s to its UPDATEs with %v, want [recvonly sendrecv]", holder.Name, answers)
	}
	if resumeAtHeld.IsZero() || resumeAtHolder.IsZero() {
		t.Fatalf("no resume seen (offers at the %s: %v)", held.Name, offers)
	}
	c := relayAudio(held)
	c.From = resumeAtHeld
	withoutHeldSDP(r, held).CheckAudio(t, c)
	c = relayAudio(holder)
	c.From = resumeAtHolder
	r.CheckAudio(t, c)
}

// 1a. UPDATE hold/resume by the caller (RFC 3311): the PBX and the phone as
// callers offer a=sendonly, then a=sendrecv, in UPDATEs; each is relayed
// with the SDP rewritten to the callee, answered 200 with its SDP, and the
// audio is two-way again after the resume.
func TestDialogUpdateHoldByCaller(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: "uac-update-hold.xml", Hold: 2 * time.Second}, side{Scenario: "uas-update-held.xml"})
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			checkUpdateHold(t, r, dir.caller, dir.callee, "sendonly", false)
			t.Run("update-carries-contact", func(t *testing.T) { checkUpdatesCarryContact(t, r, dir.callee) })
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// 1b. UPDATE hold/resume by the callee, RFC 2543 style (c=0.0.0.0 with
// a=sendonly): the 0.0.0.0 reaches the caller unchanged, the resume with
// a real address gets the relay's address, and the audio is two-way again.
func TestDialogUpdateHoldByCallee(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: "uac-update-held.xml"}, side{Scenario: "uas-update-hold.xml", Hold: 2 * time.Second})
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			checkUpdateHold(t, r, dir.callee, dir.caller, "sendonly", true)
			t.Run("update-carries-contact", func(t *testing.T) { checkUpdatesCarryContact(t, r, dir.caller) })
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// 1c. A hold longer than rtp.media_timeout: rtp.media_timeout 5s, the
// caller holds with UPDATE a=sendonly (answered a=recvonly) and stays on
// hold 9 s with no RTP either way, then resumes. Held calls use the hold
// timeout (rtpbridge.DefaultHoldTimeout, 1 h), not the media timeout
// (README "Media timeout"; issue 3 §9): nobody may get a BYE before the
// caller hangs up, and the resume works.
func TestDialogHoldOutlastsMediaTimeout(t *testing.T) {
	t.Parallel()
	const timeout, hold = 5 * time.Second, 9 * time.Second
	l, d := callLab(t, DaemonConfig{RTP: "{port_min: 55000, port_max: 56000, media_timeout: 5s}"})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			seen := len(logsWith(d, "media timeout"))
			r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: "uac-update-hold.xml", Hold: hold}, side{Scenario: "uas-update-held.xml"})
			defer r.ExplainOnFailure(t)
			ups := distinct(r.SIPFrom(dir.caller), isRequest("UPDATE"))
			if len(ups) == 0 {
				t.Fatalf("the %s never put the call on hold", dir.caller.Name)
			}
			holdAt := ups[0].T
			// The only BYE is the caller's, after the resume.
			callerBye, _ := FirstSIP(r.SIPFrom(dir.caller), isRequest("BYE"))
			for _, at := range []Endpoint{dir.caller, dir.callee} {
				for _, m := range distinct(r.SIPTo(at), isRequest("BYE")) {
					if at == dir.caller || callerBye.T.IsZero() || m.T.Before(callerBye.T) {
						t.Errorf("the %s got a BYE %v after the hold began (hold %v, media timeout %v): the daemon hung up a held call",
							at.Name, m.T.Sub(holdAt).Round(time.Millisecond), hold, timeout)
					}
				}
			}
			for _, e := range logsWith(d, "media timeout")[seen:] {
				t.Logf("daemon: media timeout, held %v, %v", e["held"], e)
			}
			requireCompleted(t, r, 200)
			checkUpdateHold(t, r, dir.caller, dir.callee, "sendonly", false)
		})
	}
	stopDaemon(t, d)
}

// 2. Codec change: the caller re-INVITEs offering PCMU (RTP/AVP 0 101)
// instead of PCMA on the same port. The callee gets exactly that (payload
// types, rtpmap, fmtp, ptime untouched) on the same relay address as
// before, the caller gets the PCMU answer on its same relay address, and a
// whole PCMU pcap (PT 0) crosses each way after the whole PCMA one.
func TestDialogCodecChange(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	sc := scenarioCopies(t, l, "uac-codec.xml", "uas-codec.xml")
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: sc["uac-codec.xml"]}, side{Scenario: sc["uas-codec.xml"]})
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			check := func(at Endpoint, what string, msgs []WireSIP) {
				t.Helper()
				if len(msgs) != 2 {
					t.Errorf("the %s got %d %s with SDP, want 2 (initial, codec change)", at.Name, len(msgs), what)
					return
				}
				first, ok1 := ParseSDPAudio(msgs[0].Body())
				second, ok2 := ParseSDPAudio(msgs[1].Body())
				if !ok1 || !ok2 {
					t.Errorf("the %s got %s without audio SDP", at.Name, what)
					return
				}
				if first.Formats != "8 101" || second.Formats != "0 101" {
					t.Errorf("the %s got %s with formats %q then %q, want \"8 101\" then \"0 101\"", at.Name, what, first.Formats, second.Formats)
				}
				have := strings.Join(second.Lines, "\n")
				for _, l := range []string{"a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=ptime:30", "a=sendrecv"} {
					if !strings.Contains(have, l) {
						t.Errorf("the %s got the codec change without %q:\n%s", at.Name, l, have)
					}
				}
				if strings.Contains(have, "PCMA") {
					t.Errorf("the %s got the codec change still naming PCMA:\n%s", at.Name, have)
				}
				if first.Addr != second.Addr {
					t.Errorf("the %s was told %s, then %s for the codec change: the relay ports must stay", at.Name, first.Addr, second.Addr)
				}
				t.Logf("%s: %s %s@%s then %s@%s", at.Name, what, first.Formats, first.Addr, second.Formats, second.Addr)
			}
			withSDP := func(pred func(WireSIP) bool) func(WireSIP) bool {
				return func(m WireSIP) bool { _, ok := ParseSDPAudio(m.Body()); return ok && pred(m) }
			}
			check(dir.callee, "INVITEs", distinct(r.SIPTo(dir.callee), withSDP(isRequest("INVITE"))))
			check(dir.caller, "200s to INVITE", distinct(r.SIPTo(dir.caller), withSDP(isResponse(200, "INVITE"))))
			for _, at := range []Endpoint{dir.caller, dir.callee} {
				r.CheckAudio(t, relayAudio(at))
				checkPCMU(t, r, at, relayIP(at), true)
			}
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// checkPCMU asserts that the whole g711u.pcap (236 packets of PT 0, which
// CheckAudio cannot ask for: its PT 0 means PT 8) reached at from one
// source at srcIP, at most once each; with announced, that source is an
// address some SDP gave at.
func checkPCMU(t *testing.T, r *CallRun, at Endpoint, srcIP string, announced bool) {
	t.Helper()
	got := BySource(Select(r.Pkts[at.NS], To(at.IP), RTPWithPT(PTPCMU)))
	ann := AnnouncedTo(r.SIP[at.NS], at.IP)
	total := 0
	for src, n := range got {
		total += n
		if src.Addr() != netip.MustParseAddr(srcIP) || (announced && !ann[src]) {
			t.Errorf("the %s got %d PCMU packets from %s; want them from %s, on an address its SDP named (%v)", at.Name, n, src, srcIP, ann)
		}
		if n > G711Packets {
			t.Errorf("the %s got %d PCMU packets from %s, more than the %d sent", at.Name, n, src, G711Packets)
		}
	}
	if len(got) != 1 || total < MinDelivered(G711Packets) {
		t.Errorf("the %s got %d PCMU (PT 0) packets from %d sources, want >= %d of %d from one: %v", at.Name, total, len(got), MinDelivered(G711Packets), G711Packets, got)
	}
	t.Logf("%s received PT 0: %v", at.Name, got)
}

// 3. OPTIONS inside the dialog from each side: the caller 1 s after its
// ACK, the callee 2 s after it. The daemon answers both 200 itself (from
// its own address on that leg); the far side never sees them.
func TestDialogOptions(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: "uac-options.xml"}, side{Scenario: "uas-options.xml"})
			defer r.ExplainOnFailure(t)
			for _, p := range []struct {
				at  Endpoint
				ua  *Sipp
				far Endpoint
			}{{dir.caller, r.Caller, dir.callee}, {dir.callee, r.Callee, dir.caller}} {
				sent := distinct(r.SIPFrom(p.at), func(m WireSIP) bool { return m.Method == "OPTIONS" && hasToTag(m) })
				oks := distinct(r.SIPTo(p.at), isResponse(200, "OPTIONS"))
				if len(sent) != 1 || len(oks) != 1 {
					t.Errorf("the %s sent %d in-dialog OPTIONS and got %d 200s, want 1 and 1 (its responses: %v)", p.at.Name, len(sent), len(oks),
						codesTo(r.SIPTo(p.at), "OPTIONS"))
				} else {
					t.Logf("%s: OPTIONS -> %q after %v, Allow: %v", p.at.Name, oks[0].First, oks[0].T.Sub(sent[0].T).Round(time.Millisecond), oks[0].Header("Allow"))
				}
				if n := len(distinct(r.SIPTo(p.far), isRequest("OPTIONS"))); n > 0 {
					t.Errorf("the %s's OPTIONS reached the %s (%d): the daemon must answer in-dialog OPTIONS itself", p.at.Name, p.far.Name, n)
				}
			}
			// The 200 is the daemon's: from pbx.listen to the PBX, from
			// 65002 (through the NAT) to the provider.
			if ok, found := FirstSIP(r.SIPTo(pbxOf(dir)), isResponse(200, "OPTIONS")); found && ok.Src != netip.MustParseAddrPort(DaemonIP+":5060") {
				t.Errorf("the PBX got the 200 to its OPTIONS from %s, want %s:5060", ok.Src, DaemonIP)
			}
			wan := netip.AddrPortFrom(netip.MustParseAddr(WANIP1), DaemonSIPPort)
			if _, found := FirstSIP(r.SIP[NSProvider], func(m WireSIP) bool { return isResponse(200, "OPTIONS")(m) && m.Src == wan && hasToTag(m) }); !found {
				t.Errorf("no 200 to an in-dialog OPTIONS reached the provider from %s", wan)
			}
			requireCompleted(t, r, 200)
			checkLegs(t, r)
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

func pbxOf(dir callDir) Endpoint {
	if dir.caller.NS == NSPBX {
		return dir.caller
	}
	return dir.callee
}

func codesTo(msgs []WireSIP, method string) []string {
	var res []string
	for _, m := range msgs {
		if m.Code > 0 && m.CSeqMethod() == method {
			res = append(res, m.First)
		}
	}
	return res
}

// 4. Failure responses reach the caller with their code and reason phrase:
// the callee answers 486 "User Busy", 404 "No Such Extension" or 603
// "Declined" (none of them RFC 3261's own phrase, so a made-up phrase
// shows); the caller gets exactly that status line, ACKs it, and the
// callee's final response is ACKed too. Both directions (through Kamailio,
// which passes codes and phrases on; 503 is avoided: a proxy turns it into
// 500, RFC 3261 §16.7).
func TestDialogFailureMapping(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct{ scenario, status string }{
		{"uas-busy.xml", "486 User Busy"},
		{"uas-notfound.xml", "404 No Such Extension"},
		{"uas-decline.xml", "603 Declined"},
	}
	for _, dir := range []callDir{outbound, inbound} {
		for _, c := range cases {
			code, _ := strconv.Atoi(c.status[:3])
			t.Run(dir.name+"/"+c.status[:3], func(t *testing.T) {
				r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: "uac-pcap.xml", Hold: time.Second}, side{Scenario: c.scenario})
				defer r.ExplainOnFailure(t)
				want := "SIP/2.0 " + c.status
				var finals []string
				for _, m := range r.Caller.Messages() {
					if !m.Sent && m.Code >= 200 && strings.HasSuffix(m.CSeq, "INVITE") && m.Code != 401 && m.Code != 407 {
						finals = append(finals, m.First)
					}
				}
				if len(finals) == 0 || finals[0] != want {
					t.Errorf("the %s got final responses %q, want %q", dir.caller.Name, finals, want)
				}
				for _, f := range finals {
					if f != want {
						t.Errorf("the %s also got %q", dir.caller.Name, f)
					}
				}
				if r.Caller.ReceivedResponse(200, "INVITE") > 0 {
					t.Errorf("the %s got a 200 for a call the %s refused", dir.caller.Name, dir.callee.Name)
				}
				if r.Callee.Received("ACK") == 0 {
					t.Errorf("the %s's %d was never ACKed", dir.callee.Name, code)
				}
				if r.Caller.ExitCode() != 0 || r.Callee.ExitCode() != 0 {
					t.Errorf("sipp exit codes: caller %d, callee %d (0: scenario completed)", r.Caller.ExitCode(), r.Callee.ExitCode())
				}
				checkLegs(t, r)
				if len(finals) > 0 {
					t.Logf("%s got %q", dir.caller.Name, finals[0])
				}
			})
		}
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// 5. Ring timeout (pbx.ring_timeout 5s, the least the config allows): the
// callee rings for ever (uas-cancel.xml: 180, then waits for CANCEL). About
// 5 s after the INVITE the caller gets 408 and the callee a CANCEL (and its
// 487 is ACKed); nobody gets a BYE. Both directions: Kamailio's own INVITE
// timer (fr_inv_timer) is 60 s, so the 408 is the daemon's.
func TestDialogRingTimeout(t *testing.T) {
	t.Parallel()
	const ring = 5 * time.Second
	l, d := callLab(t, DaemonConfig{PBX: "ring_timeout: 5s"})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			r := dialogCall(t, l, dir.caller, dir.callee, side{Scenario: "uac-pcap.xml"}, side{Scenario: "uas-cancel.xml"})
			defer r.ExplainOnFailure(t)
			inv, ok1 := FirstSIP(r.SIPFrom(dir.caller), isRequest("INVITE"))
			res, ok2 := FirstSIP(r.SIPTo(dir.caller), func(m WireSIP) bool {
				return m.CSeqMethod() == "INVITE" && m.Code >= 300 && m.Code != 401 && m.Code != 407
			})
			if !ok1 || !ok2 {
				t.Fatalf("no INVITE from the %s or no final failure back (finals %v)", dir.caller.Name, r.Caller.Finals())
			}
			after := res.T.Sub(inv.T)
			t.Logf("the %s got %q %v after its INVITE", dir.caller.Name, res.First, after.Round(time.Millisecond))
			if res.Code != 408 {
				t.Errorf("the %s got %q, want 408", dir.caller.Name, res.First)
			}
			if after < ring-100*time.Millisecond || after > ring+2*time.Second {
				t.Errorf("the %s got its %d %v after the INVITE, want about %v", dir.caller.Name, res.Code, after.Round(time.Millisecond), ring)
			}
			cinv, ok1 := FirstSIP(r.SIPTo(dir.callee), isRequest("INVITE"))
			cancel, ok2 := FirstSIP(r.SIPTo(dir.callee), isRequest("CANCEL"))
			if !ok1 || !ok2 {
				t.Errorf("the %s got no CANCEL", dir.callee.Name)
			} else {
				after := cancel.T.Sub(cinv.T)
				t.Logf("the %s got CANCEL %v after its INVITE", dir.callee.Name, after.Round(time.Millisecond))
				if after < ring-time.Second || after > ring+2*time.Second {
					t.Errorf("the %s got CANCEL %v after its INVITE, want about %v", dir.callee.Name, after.Round(time.Millisecond), ring)
				}
			}
			if r.Callee.Received("ACK") == 0 {
				t.Errorf("the %s's 487 was never ACKed", dir.callee.Name)
			}
			for _, ua := range []*Sipp{r.Caller, r.Callee} {
				if n := ua.Received("BYE"); n > 0 {
					t.Errorf("the %s got %d BYE for a call never answered", ua.Spec.Name, n)
				}
			}
			if r.Caller.ExitCode() != 0 || r.Callee.ExitCode() != 0 {
				t.Errorf("sipp exit codes: caller %d, callee %d (0: scenario completed)", r.Caller.ExitCode(), r.Callee.ExitCode())
			}
			checkLegs(t, r)
		})
	}
	if n := len(logsWith(d, "ring timeout")); n != 2 {
		t.Errorf("the daemon logged %d ring timeouts, want 2", n)
	}
	stopDaemon(t, d)
}

// 6. Session-timer refresh from the provider side (RFC 4028): the phone,
// as caller (refresher=uac) and as callee (refresher=uas), refreshes the
// session 4 times, 1.5 s apart, while the audio plays: re-INVITE with the
// SDP unchanged, UPDATE without SDP, re-INVITE, UPDATE. Real refreshes come
// every Session-Expires/2 (15 min by default); the daemon has no session
// timer of its own, so what matters is that it relays every refresh and
// answers it whatever the interval: 1.5 s stands for 15 minutes. Each
// refresh reaches the PBX (the re-INVITEs with the relay's SDP), is
// answered 200 on both legs, the call is not dropped (the only BYE is the
// phone's at the end) and the audio keeps flowing, after the last refresh
// too.
func TestDialogSessionRefresh(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct {
		name                   string
		dir                    callDir
		callerSc, calleeSc     string
		refresher, passive     Endpoint
		refresherUA, passiveUA func(*CallRun) *Sipp
	}{
		{"inbound/phone-caller-refreshes", inbound, "uac-refresh.xml", "uas-refreshed.xml", PhoneCaller, PBXCallee, (*CallRun).caller, (*CallRun).callee},
		{"outbound/phone-callee-refreshes", outbound, "uac-refreshed.xml", "uas-refresh.xml", PhoneCallee, PBXCaller, (*CallRun).callee, (*CallRun).caller},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialogCall(t, l, c.dir.caller, c.dir.callee, side{Scenario: c.callerSc}, side{Scenario: c.calleeSc})
			defer r.ExplainOnFailure(t)
			inDialog := func(method string) func(WireSIP) bool {
				return func(m WireSIP) bool { return m.Method == method && hasToTag(m) }
			}
			// The refreshes as the phone sent them, and their answers.
			var refreshes []WireSIP
			for _, m := range distinct(r.SIPFrom(c.refresher), func(m WireSIP) bool { return (m.Method == "INVITE" || m.Method == "UPDATE") && hasToTag(m) }) {
				refreshes = append(refreshes, m)
			}
			var kinds []string
			var lastOK time.Time
			for i, m := range refreshes {
				kinds = append(kinds, m.Method)
				if len(m.Header("Session-Expires")) == 0 {
					t.Errorf("refresh %d (%s) without Session-Expires: the scenario is wrong", i+1, m.Method)
				}
				ok, found := FirstSIP(r.SIPTo(c.refresher), func(x WireSIP) bool { return x.Code >= 200 && x.CSeq == m.CSeq && x.CallID == m.CallID })
				switch {
				case !found:
					t.Errorf("refresh %d (%s, CSeq %s) got no final response", i+1, m.Method, m.CSeq)
				case ok.Code != 200:
					t.Errorf("refresh %d (%s, CSeq %s) got %q, want 200", i+1, m.Method, m.CSeq, ok.First)
				default:
					lastOK = ok.T
					t.Logf("refresh %d: %s -> %q after %v", i+1, m.Method, ok.First, ok.T.Sub(m.T).Round(time.Millisecond))
				}
			}
			if strings.Join(kinds, " ") != "INVITE UPDATE INVITE UPDATE" {
				t.Errorf("the phone sent refreshes %v, want [INVITE UPDATE INVITE UPDATE]", kinds)
			}
			// Relayed to the PBX, each answered there.
			reinvites := distinct(r.SIPTo(c.passive), inDialog("INVITE"))
			updates := distinct(r.SIPTo(c.passive), inDialog("UPDATE"))
			if len(reinvites) != 2 || len(updates) != 2 {
				t.Errorf("the PBX got %d re-INVITEs and %d UPDATEs, want 2 and 2", len(reinvites), len(updates))
			}
			var versions []string
			for _, m := range reinvites {
				if _, ok := ParseSDPAudio(m.Body()); !ok {
					t.Errorf("the PBX got a refresh re-INVITE without SDP:\n%s", m.Text)
				}
				for _, l := range strings.Split(m.Body(), "\r\n") {
					if strings.HasPrefix(l, "o=") {
						versions = append(versions, strings.Fields(l)[2])
					}
				}
			}
			for _, m := range updates {
				if m.Body() != "" {
					t.Errorf("the PBX got the SDP-less refresh UPDATE with a body:\n%s", m.Text)
				}
			}
			// An SDP we relay unchanged keeps its o= version (RFC 3264 §8;
			// asserted in b2bua's TestRefusedOfferRollsBack; logged here).
			var back []string
			for _, m := range distinct(r.SIPTo(c.refresher), isResponse(200, "INVITE")) {
				for _, l := range strings.Split(m.Body(), "\r\n") {
					if strings.HasPrefix(l, "o=") {
						back = append(back, strings.Fields(l)[2])
					}
				}
			}
			t.Logf("o= versions: refresh re-INVITEs at the PBX %v, 200s to INVITE at the phone %v (the phone's own SDP never changes)", versions, back)
			t.Run("update-carries-contact", func(t *testing.T) { checkUpdatesCarryContact(t, r, c.passive) })
			for _, m := range append(reinvites, updates...) {
				if _, ok := FirstSIP(r.SIPFrom(c.passive), func(x WireSIP) bool { return x.Code == 200 && x.CSeq == m.CSeq && x.CallID == m.CallID }); !ok {
					t.Errorf("the PBX did not answer the relayed %s (CSeq %s) with 200", m.Method, m.CSeq)
				}
			}
			// Not dropped: the phone hangs up at the end, nobody else.
			if n := len(distinct(r.SIPTo(c.refresher), isRequest("BYE"))); n > 0 {
				t.Errorf("the phone got %d BYE: the call was dropped", n)
			}
			if n := len(distinct(r.SIPTo(c.passive), isRequest("BYE"))); n != 1 {
				t.Errorf("the PBX got %d BYEs, want 1 (the phone's)", n)
			}
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			// The audio: two whole plays each way, the second after the last
			// refresh.
			for _, at := range []Endpoint{c.refresher, c.passive} {
				a := relayAudio(at)
				a.PerCall = 2 * G711Packets
				r.CheckAudio(t, a)
				if !lastOK.IsZero() {
					n := rtpCount(r, at, relayIP(at), PTPCMA, lastOK)
					t.Logf("%s: %d RTP packets after the last refresh's 200", at.Name, n)
					if n < MinDelivered(G711Packets) {
						t.Errorf("the %s got %d RTP packets after the last refresh, want >= %d (the second play)", at.Name, n, MinDelivered(G711Packets))
					}
				}
			}
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// 6b. Session refresh with re-INVITEs without SDP (RFC 4028 allows them;
// some providers send nothing else): the phone, as caller and as callee,
// sends 4 of them, 1.5 s apart. Each needs a 200 whose SDP is an offer,
// answered in the phone's ACK. The daemon answers them itself with the SDP
// it last sent on that leg (same address, same o= version: nothing
// changed) and leaves the PBX alone; the call and its audio carry on.
func TestDialogSessionRefreshOfferless(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct {
		name               string
		dir                callDir
		callerSc, calleeSc string
		phone, pbx         Endpoint
	}{
		{"inbound/phone-caller-refreshes", inbound, "uac-refresh-offerless.xml", "uas-pcap.xml", PhoneCaller, PBXCallee},
		{"outbound/phone-callee-refreshes", outbound, "uac-pcap-waitbye.xml", "uas-refresh-offerless.xml", PhoneCallee, PBXCaller},
	}
	version := func(body string) string {
		for _, l := range strings.Split(body, "\r\n") {
			if f := strings.Fields(l); strings.HasPrefix(l, "o=") && len(f) >= 3 {
				return f[2]
			}
		}
		return ""
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialogCall(t, l, c.dir.caller, c.dir.callee, side{Scenario: c.callerSc}, side{Scenario: c.calleeSc})
			defer r.ExplainOnFailure(t)
			// The SDP the phone got when the call was set up.
			first, ok := FirstSIP(r.SIPTo(c.phone), func(m WireSIP) bool {
				_, sdp := ParseSDPAudio(m.Body())
				return sdp && !hasToTag(m) || sdp && m.Code == 200 && m.CSeqMethod() == "INVITE"
			})
			if !ok {
				t.Fatalf("the phone got no SDP at call set-up")
			}
			want, _ := ParseSDPAudio(first.Body())
			prevVersion := version(first.Body())
			refreshes := distinct(r.SIPFrom(c.phone), func(m WireSIP) bool { return m.Method == "INVITE" && hasToTag(m) })
			if len(refreshes) != 4 {
				t.Errorf("the phone sent %d refresh re-INVITEs, want 4", len(refreshes))
			}
			var lastOK time.Time
			for i, m := range refreshes {
				if m.Body() != "" {
					t.Errorf("refresh %d carries a body: the scenario is wrong", i+1)
				}
				ok, found := FirstSIP(r.SIPTo(c.phone), func(x WireSIP) bool { return x.Code >= 200 && x.CSeq == m.CSeq && x.CallID == m.CallID })
				if !found {
					t.Errorf("refresh %d (CSeq %s) got no final response", i+1, m.CSeq)
					continue
				}
				s, hasSDP := ParseSDPAudio(ok.Body())
				switch {
				case ok.Code != 200:
					t.Errorf("refresh %d got %q, want 200", i+1, ok.First)
				case !hasSDP:
					t.Errorf("refresh %d got a 200 without SDP: an offerless re-INVITE needs an offer in the 2xx (RFC 3261 §14.2)", i+1)
				default:
					lastOK = ok.T
					if s.Addr != want.Addr || s.Formats != want.Formats || s.Direction != "sendrecv" {
						t.Errorf("refresh %d: the 200 offers %s %q %s, want the leg's SDP %s %q sendrecv", i+1, s.Addr, s.Formats, s.Direction, want.Addr, want.Formats)
					}
					if v := version(ok.Body()); v != prevVersion {
						t.Errorf("refresh %d: the 200's o= version is %s after %s: an unchanged SDP keeps its version (RFC 3264 §8)", i+1, v, prevVersion)
					}
					t.Logf("refresh %d: %q with %s %q o= version %s, after %v", i+1, ok.First, s.Addr, s.Formats, version(ok.Body()), ok.T.Sub(m.T).Round(time.Millisecond))
				}
			}
			for _, m := range distinct(r.SIPTo(c.pbx), func(m WireSIP) bool { return (m.Method == "INVITE" || m.Method == "UPDATE") && hasToTag(m) }) {
				t.Errorf("the PBX got %q (CSeq %s) for an offerless refresh the daemon can answer itself", m.First, m.CSeq)
			}
			if n := len(distinct(r.SIPTo(c.phone), isRequest("BYE"))); n > 0 {
				t.Errorf("the phone got %d BYE: the call was dropped", n)
			}
			if n := len(distinct(r.SIPTo(c.pbx), isRequest("BYE"))); n != 1 {
				t.Errorf("the PBX got %d BYEs, want 1 (the phone's)", n)
			}
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			a := relayAudio(c.pbx)
			a.PerCall = 2 * G711Packets
			r.CheckAudio(t, a)
			r.CheckAudio(t, relayAudio(c.phone))
			if !lastOK.IsZero() {
				n := rtpCount(r, c.pbx, DaemonIP, PTPCMA, lastOK)
				t.Logf("pbx: %d RTP packets after the last refresh's 200", n)
				if n < MinDelivered(G711Packets) {
					t.Errorf("the PBX got %d RTP packets after the last refresh, want >= %d (the phone's second play)", n, MinDelivered(G711Packets))
				}
			}
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// 7a. Re-ACK of a retransmitted 2xx: the daemon's first ACK to the callee
// is dropped in the callee's namespace (one iptables rule there, nothing
// anywhere else). The callee retransmits its 200 (sipp retrans 500 ms, RFC
// 3261 §13.3.1.4), the retransmission reaches the daemon, which must ACK
// again; the callee then carries on (audio both ways), and the call ends
// with the caller's BYE, not with the callee giving up. A third case does
// the same with the 200 to a re-INVITE (the phone switches to T.38; the
// PBX's 200 to that re-INVITE loses its first ACK).
func TestDialogReACK(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct {
		name               string
		dir                callDir
		callerSc, calleeSc string
		reinvite           bool // the PBX caller answers the phone's re-INVITE
		from               string
	}{
		{"outbound/phone-200-retransmitted", outbound, "uac-pcap.xml", "uas-pcap.xml", false, ProviderIP},
		{"inbound/pbx-200-retransmitted", inbound, "uac-pcap.xml", "uas-pcap.xml", false, DaemonIP},
		{"outbound/pbx-200-to-reinvite-retransmitted", outbound, "uac-t38.xml", "uas-t38.xml", true, DaemonIP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// at answers the INVITE whose 200 loses its first ACK.
			at, ua := c.dir.callee, (*CallRun).callee
			a, b := side{Scenario: c.callerSc, Hold: 8500 * time.Millisecond}, side{Scenario: c.calleeSc}
			if c.reinvite {
				at, ua = c.dir.caller, (*CallRun).caller
				// T.38 ports that absorb the relay's pinholes.
				pc, pp := newUDPTLPeer(t, l, c.dir.caller), newUDPTLPeer(t, l, c.dir.callee)
				a = side{Scenario: c.callerSc, Hold: 3 * time.Second, Args: []string{"-key", "t38port", strconv.Itoa(pc.port)}}
				b.Args = []string{"-key", "t38port", strconv.Itoa(pp.port)}
			}
			drop := dropFirstACK(t, l, at.NS, c.from, at.Port)
			defer drop.Remove()
			r := dialogCall(t, l, c.dir.caller, c.dir.callee, a, b)
			defer r.ExplainOnFailure(t)
			if n := drop.Dropped(t); n != 1 {
				t.Fatalf("the rule dropped %d ACKs at the %s, want 1: the test proves nothing", n, at.Name)
			}
			oks := Select(r.Pkts[at.NS], From(at.IP), func(p Packet) bool {
				return isSIP(p.Payload) && strings.HasPrefix(string(p.Payload), "SIP/2.0 200") && strings.Contains(string(p.Payload), " INVITE\r\n")
			})
			acks := distinctTimes(r.SIPTo(at), isRequest("ACK"))
			t.Logf("the %s sent its 200 %d times; ACKs on the wire at %v (the first one dropped)", at.Name, len(oks), acks)
			if len(oks) < 2 {
				t.Errorf("the %s sent its 200 %d times: it never retransmitted it", at.Name, len(oks))
			}
			if len(acks) < 2 {
				t.Errorf("the %s got %d ACK on the wire (the dropped one included), want 2: the daemon did not ACK the retransmitted 200 (sent %d times)",
					at.Name, len(acks), len(oks))
			} else if len(oks) >= 2 {
				if gap := acks[1].Sub(oks[1].T); gap < 0 || gap > time.Second {
					t.Errorf("the re-ACK reached the %s %v after the first retransmission of the 200, want within 1 s", at.Name, gap.Round(time.Millisecond))
				}
			}
			if ua(r).Received("ACK") == 0 {
				t.Errorf("the %s never got an ACK for its 200", at.Name)
			}
			if n := len(distinct(r.SIPFrom(c.dir.callee), isRequest("BYE"))); n > 0 {
				t.Errorf("the %s sent %d BYE", c.dir.callee.Name, n)
			}
			requireCompleted(t, r, 200)
			if !c.reinvite {
				checkTwoWay(t, r, c.dir, 1)
			}
			checkLegs(t, r)
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// distinctTimes returns when each message matching pred was seen
// (retransmissions included: an ACK has no response to tell copies apart).
func distinctTimes(msgs []WireSIP, pred func(WireSIP) bool) []time.Time {
	var res []time.Time
	for _, m := range msgs {
		if pred(m) {
			res = append(res, m.T)
		}
	}
	return res
}

// 7b. The daemon's own 2xx retransmission (RFC 3261 §13.3.1.4): the
// caller's first ACK for the daemon's 200 is dropped in the daemon's
// namespace. The daemon must resend its 200 (T1 = 500 ms) until an ACK
// arrives; the caller ACKs the copy and the call carries on with audio
// both ways; it is not hung up for a missing ACK.
func TestDialog2xxRetransmission(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	cases := []struct {
		name  string
		dir   callDir
		from  string // whose ACK reaches the daemon
		dport int
	}{
		{"outbound/pbx-ack-lost", outbound, PBXIP, 5060},
		{"inbound/provider-ack-lost", inbound, ProviderIP, DaemonSIPPort},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			drop := dropFirstACK(t, l, NSLM, c.from, c.dport)
			defer drop.Remove()
			r := dialogCall(t, l, c.dir.caller, c.dir.callee, side{Scenario: "uac-pcap.xml", Hold: 8500 * time.Millisecond}, side{Scenario: "uas-pcap.xml"})
			defer r.ExplainOnFailure(t)
			if n := drop.Dropped(t); n != 1 {
				t.Fatalf("the rule dropped %d ACKs at the daemon, want 1: the test proves nothing", n)
			}
			oks := distinctTimes(r.SIPTo(c.dir.caller), isResponse(200, "INVITE"))
			t.Logf("the %s got the 200 %d times, at %v", c.dir.caller.Name, len(oks), oks)
			if len(oks) < 2 {
				t.Errorf("the %s got the 200 %d times: the daemon did not retransmit it when the ACK was lost", c.dir.caller.Name, len(oks))
			} else if gap := oks[1].Sub(oks[0]); gap < 300*time.Millisecond || gap > 1500*time.Millisecond {
				t.Errorf("the 200 was retransmitted %v after the first, want about T1 = 500 ms", gap.Round(time.Millisecond))
			}
			src := netip.MustParseAddr(c.from)
			acks := distinctTimes(r.SIP[NSLM], func(m WireSIP) bool { return m.Method == "ACK" && m.Src.Addr() == src && hasToTag(m) })
			if len(acks) < 2 {
				t.Errorf("%d ACKs from %s reached the daemon's host, want 2 (the dropped one and the answer to the retransmission)", len(acks), c.from)
			}
			requireCompleted(t, r, 200)
			checkTwoWay(t, r, c.dir, 1)
			checkLegs(t, r)
			if r.Callee.Received("BYE") == 0 {
				t.Errorf("the %s got no BYE after the %s hung up", c.dir.callee.Name, c.dir.caller.Name)
			}
		})
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// t38Attrs are the T.38 attributes of uac-t38.xml and uas-t38.xml, in order.
var t38Attrs = []string{"a=T38FaxVersion:0", "a=T38MaxBitRate:14400", "a=T38FaxFillBitRemoval:0",
	"a=T38FaxTranscodingMMR:0", "a=T38FaxTranscodingJBIG:0", "a=T38FaxRateManagement:transferredTCF",
	"a=T38FaxMaxBuffer:262", "a=T38FaxMaxDatagram:176", "a=T38FaxUdpEC:t38UDPRedundancy"}

// udptlPeer is a test-owned socket that plays one party's T.38 gateway.
type udptlPeer struct {
	at   Endpoint
	conn *net.UDPConn
	port int

	mu    sync.Mutex
	udptl map[uint16]int         // by sequence number
	from  map[netip.AddrPort]int // UDPTL sources
	rtp   map[uint32]int         // control RTP, by SSRC
	other int
	done  chan struct{}
}

func newUDPTLPeer(t *testing.T, l *Lab, at Endpoint) *udptlPeer {
	t.Helper()
	conn, err := l.ListenUDP(at.NS, at.IP+":0")
	if err != nil {
		t.Fatal(err)
	}
	p := &udptlPeer{at: at, conn: conn, port: conn.LocalAddr().(*net.UDPAddr).Port,
		udptl: map[uint16]int{}, from: map[netip.AddrPort]int{}, rtp: map[uint32]int{}, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		buf := make([]byte, 2048)
		for {
			n, src, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b := buf[:n]
			p.mu.Lock()
			if seq, ok := parseUDPTL(b); ok {
				p.udptl[seq]++
				p.from[netip.AddrPortFrom(src.Addr().Unmap(), src.Port())]++
			} else if h, ok := ParseRTP(b); ok && h.PT == PTPCMA {
				p.rtp[h.SSRC]++
			} else {
				p.other++
			}
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-p.done })
	return p
}

func (p *udptlPeer) counts() (udptl int, from map[netip.AddrPort]int, rtp map[uint32]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.udptl {
		udptl += min(n, 1)
	}
	from = map[netip.AddrPort]int{}
	for k, v := range p.from {
		from[k] = v
	}
	rtp = map[uint32]int{}
	for k, v := range p.rtp {
		rtp[k] = v
	}
	return udptl, from, rtp
}

// t38Exchange sends n UDPTL datagrams each way (20 ms apart, sequence
// numbers from 0 like a fax gateway), from each peer to the address the
// SDP gave it, then (control) n RTP packets of PT 8 the same way.
func t38Exchange(t *testing.T, a, b *udptlPeer, toA, toB netip.AddrPort, n int) {
	t.Helper()
	send := func(p *udptlPeer, dst netip.AddrPort, pkt func(i int) []byte) {
		for i := range n {
			if _, err := p.conn.WriteToUDPAddrPort(pkt(i), dst); err != nil {
				t.Errorf("send from the %s to %s: %v", p.at.Name, dst, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	for _, x := range []struct {
		p   *udptlPeer
		dst netip.AddrPort
	}{{a, toA}, {b, toB}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(x.p, x.dst, func(i int) []byte { return udptlPacket(uint16(i)) })
		}()
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond)
	payload := make([]byte, 160)
	for i, x := range []struct {
		p   *udptlPeer
		dst netip.AddrPort
	}{{a, toA}, {b, toB}} {
		wg.Add(1)
		ssrc := uint32(0x7e570000 + i)
		go func() {
			defer wg.Done()
			send(x.p, x.dst, func(i int) []byte { return rtpPacket(PTPCMA, uint16(i), uint32(160*i), ssrc, payload) })
		}()
	}
	wg.Wait()
	time.Sleep(300 * time.Millisecond)
}

// 8. T.38: the callee (a fax gateway that detected a fax) re-INVITEs with
// the audio m-line replaced by m=image PORT udptl t38. The caller gets the
// offer with the relay's address and port and the T38 attributes
// untouched, its answer goes back the same way; then UDPTL (sequence
// numbers from 0, as gateways send it) crosses the relay both ways: 100
// datagrams each way, >= 99 must arrive, from the announced address. A
// control of 100 RTP packets each way over the same sockets and addresses
// follows, to tell a closed path from a relay that drops UDPTL.
func TestDialogT38(t *testing.T) {
	t.Parallel()
	const n = 100
	l, d := callLab(t, DaemonConfig{})
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			caller, callee := newUDPTLPeer(t, l, dir.caller), newUDPTLPeer(t, l, dir.callee)
			r := l.StartCall(CallSetup{
				Caller: SippSpec{Endpoint: dir.caller, Scenario: "uac-t38.xml", Hold: 8 * time.Second, Timeout: 45 * time.Second,
					Args: []string{"-key", "t38port", strconv.Itoa(caller.port)}},
				Callee: SippSpec{Endpoint: dir.callee, Scenario: "uas-t38.xml", Timeout: 45 * time.Second,
					Args: []string{"-key", "t38port", strconv.Itoa(callee.port)}},
				Capture: captureFor(dir.caller, dir.callee),
			})
			defer r.ExplainOnFailure(t)
			// The daemon ACKs the answerer's 200 itself and relays the 200
			// through the provider, so the answerer's ACK can come before
			// the offerer has the answer: await both.
			deadline := time.Now().Add(20 * time.Second)
			var offer, answer SDPImage
			for ok := false; !ok; {
				if r.Caller.Received("ACK") > 0 { // the ACK of its 200 to the T.38 offer
					offer, answer, ok = t38SDPs(r)
				}
				if ok {
					break
				}
				if r.Caller.Exited() || r.Callee.Exited() || time.Now().After(deadline) {
					r.Finish(t)
					t.Fatalf("the switch to T.38 did not complete: no T.38 offer at the %s or no answer at the %s", dir.caller.Name, dir.callee.Name)
				}
				time.Sleep(50 * time.Millisecond)
			}
			checkT38SDP(t, dir.caller, "offer", offer)
			checkT38SDP(t, dir.callee, "answer", answer)
			t.Logf("T.38: the %s sends to %s, the %s to %s", dir.caller.Name, offer.Addr, dir.callee.Name, answer.Addr)
			t38Exchange(t, caller, callee, offer.Addr, answer.Addr, n)
			r.Finish(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			for _, x := range []struct {
				p   *udptlPeer
				via netip.AddrPort // what this peer was told: the relay port facing it
			}{{caller, offer.Addr}, {callee, answer.Addr}} {
				got, from, rtp := x.p.counts()
				ctl := 0
				for _, c := range rtp {
					ctl += c
				}
				t.Logf("the %s's T.38 socket got %d of %d UDPTL datagrams (from %v) and %d of %d control RTP packets",
					x.p.at.Name, got, n, from, ctl, n)
				if got < MinDelivered(n) {
					t.Errorf("the %s got %d of %d UDPTL datagrams through the relay (want >= %d); the control RTP over the same path: %d of %d",
						x.p.at.Name, got, n, MinDelivered(n), ctl, n)
				}
				for src := range from {
					if src != x.via {
						t.Errorf("the %s got UDPTL from %s, not from the relay address %s its SDP named", x.p.at.Name, src, x.via)
					}
				}
				if ctl < MinDelivered(n) {
					t.Errorf("the %s got %d of %d control RTP packets: the T.38 media path itself is broken", x.p.at.Name, ctl, n)
				}
			}
			// What reached the daemon's host, for the record.
			if lm, ok := r.Pkts[NSLM]; ok {
				udptlAt := func(f func(Packet) bool) int {
					return len(Select(lm, f, func(p Packet) bool { _, ok := parseUDPTL(p.Payload); return ok }))
				}
				t.Logf("daemon host: %d UDPTL datagrams arrived, %d left", udptlAt(To(DaemonIP)), udptlAt(From(DaemonIP)))
			}
		})
	}
	for _, e := range callEnded(d) {
		t.Logf("daemon call ended: reason %v, dropped_malformed a_to_b %v b_to_a %v, packets a_to_b %v b_to_a %v",
			e["reason"], mediaField(e, "a_to_b", "dropped_malformed"), mediaField(e, "b_to_a", "dropped_malformed"),
			mediaField(e, "a_to_b", "packets"), mediaField(e, "b_to_a", "packets"))
	}
	requireDaemonQuiet(t, d)
	stopDaemon(t, d)
}

// t38SDPs returns the T.38 offer the caller got (in the callee's
// re-INVITE) and the answer the callee got (in the 200 to it), from the
// sipp traces.
func t38SDPs(r *CallRun) (offer, answer SDPImage, ok bool) {
	var ok1, ok2 bool
	for _, m := range r.Caller.Messages() {
		if !m.Sent && strings.HasPrefix(m.First, "INVITE ") {
			offer, ok1 = ParseSDPImage(WireSIP{Text: m.Text}.Body())
		}
	}
	for _, m := range r.Callee.Messages() {
		if !m.Sent && m.Code == 200 && strings.HasSuffix(m.CSeq, "INVITE") {
			answer, ok2 = ParseSDPImage(WireSIP{Text: m.Text}.Body())
		}
	}
	return offer, answer, ok1 && ok2
}

// checkT38SDP asserts that the T.38 SDP at got names the relay's address
// and a port of its pool, as udptl t38 with every T38 attribute as sent,
// and no active audio stream.
func checkT38SDP(t *testing.T, at Endpoint, what string, s SDPImage) {
	t.Helper()
	lo, hi := relayRange(at)
	if s.Addr.Addr() != netip.MustParseAddr(relayIP(at)) || int(s.Addr.Port()) < lo || int(s.Addr.Port()) > hi {
		t.Errorf("the %s got the T.38 %s for %s, want %s and a port in %d-%d", at.Name, what, s.Addr, relayIP(at), lo, hi)
	}
	if s.Proto != "udptl" || s.Fmt != "t38" {
		t.Errorf("the %s got the T.38 %s as m=image ... %s %s, want udptl t38", at.Name, what, s.Proto, s.Fmt)
	}
	if !slices.Equal(s.Attrs, t38Attrs) {
		t.Errorf("the %s got the T.38 %s with attributes\n%s\nwant\n%s", at.Name, what, strings.Join(s.Attrs, "\n"), strings.Join(t38Attrs, "\n"))
	}
	if s.Audio {
		t.Errorf("the %s got the T.38 %s with an active m=audio line too", at.Name, what)
	}
}

// TestDialogLabScenarios proves the dialog tests' scenarios through
// Kamailio without the daemon, as TestLabCallScenarios does for the calls
// tests: a sipp that authenticates as the trunk calls the phone, and the
// phone calls a sipp registered as the trunk. If these fail, a TestDialog…
// failure says nothing about the daemon.
func TestDialogLabScenarios(t *testing.T) {
	t.Parallel()
	forEachLabGroup(t, func(t *testing.T, l *Lab, caller, callee Endpoint) {
		g := struct{ caller, callee Endpoint }{caller, callee}
		direct := func(at, from Endpoint, plays int, pt uint8) AudioCheck {
			return AudioCheck{At: at, SrcIP: from.IP, PerCall: plays * G711Packets, PT: pt}
		}
		completed := func(t *testing.T, r *CallRun) {
			t.Helper()
			if r.Caller.ExitCode() != 0 || r.Callee.ExitCode() != 0 {
				t.Errorf("sipp exit codes: caller %d, callee %d\n%s", r.Caller.ExitCode(), r.Callee.ExitCode(), r.Traces())
			}
		}
		run := func(t *testing.T, a, b side) *CallRun {
			r := dialogCall(t, l, g.caller, g.callee, a, b)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("flows at the caller:\n%s\nflows at the callee:\n%s", r.Flows(g.caller.NS), r.Flows(g.callee.NS))
				}
			})
			return r
		}
		t.Run("update-hold-by-caller", func(t *testing.T) {
			r := run(t, side{Scenario: "uac-update-hold.xml", Hold: 2 * time.Second}, side{Scenario: "uas-update-held.xml"})
			completed(t, r)
			r.CheckAudio(t, direct(g.callee, g.caller, 2, PTPCMA))
			r.CheckAudio(t, direct(g.caller, g.callee, 2, PTPCMA))
		})
		t.Run("update-hold-by-callee", func(t *testing.T) {
			r := run(t, side{Scenario: "uac-update-held.xml"}, side{Scenario: "uas-update-hold.xml", Hold: 2 * time.Second})
			completed(t, r)
			withoutHeldSDP(r, g.caller).CheckAudio(t, direct(g.caller, g.callee, 2, PTPCMA))
			r.CheckAudio(t, direct(g.callee, g.caller, 2, PTPCMA))
		})
		t.Run("codec-change", func(t *testing.T) {
			sc := scenarioCopies(t, l, "uac-codec.xml", "uas-codec.xml")
			r := run(t, side{Scenario: sc["uac-codec.xml"]}, side{Scenario: sc["uas-codec.xml"]})
			completed(t, r)
			r.CheckAudio(t, direct(g.callee, g.caller, 1, PTPCMA))
			r.CheckAudio(t, direct(g.caller, g.callee, 1, PTPCMA))
			checkPCMU(t, r, g.callee, g.caller.IP, false)
			checkPCMU(t, r, g.caller, g.callee.IP, false)
		})
		t.Run("options", func(t *testing.T) {
			// -aa: without the daemon each side's OPTIONS reaches the other.
			r := run(t, side{Scenario: "uac-options.xml", Args: []string{"-aa"}}, side{Scenario: "uas-options.xml", Args: []string{"-aa"}})
			completed(t, r)
			if r.Caller.ReceivedResponse(200, "OPTIONS") == 0 || r.Callee.ReceivedResponse(200, "OPTIONS") == 0 {
				t.Errorf("OPTIONS unanswered:\n%s", r.Traces())
			}
		})
		for _, c := range []struct{ scenario, status string }{
			{"uas-busy.xml", "486 User Busy"}, {"uas-notfound.xml", "404 No Such Extension"}, {"uas-decline.xml", "603 Declined"},
		} {
			t.Run("reject-"+c.status[:3], func(t *testing.T) {
				r := run(t, side{Scenario: "uac-pcap.xml", Hold: time.Second}, side{Scenario: c.scenario})
				completed(t, r)
				got := ""
				for _, m := range r.Caller.Messages() {
					if !m.Sent && m.Code >= 300 && m.Code != 401 && m.Code != 407 && strings.HasSuffix(m.CSeq, "INVITE") {
						got = m.First
						break
					}
				}
				if got != "SIP/2.0 "+c.status {
					t.Errorf("the caller got %q, want %q", got, "SIP/2.0 "+c.status)
				}
			})
		}
		for _, c := range []struct{ name, caller, callee string }{
			{"refresh-by-caller", "uac-refresh.xml", "uas-refreshed.xml"},
			{"refresh-by-callee", "uac-refreshed.xml", "uas-refresh.xml"},
			{"refresh-offerless-by-caller", "uac-refresh-offerless.xml", "uas-refreshed.xml"},
			{"refresh-offerless-by-callee", "uac-refreshed.xml", "uas-refresh-offerless.xml"},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := run(t, side{Scenario: c.caller}, side{Scenario: c.callee})
				completed(t, r)
				r.CheckAudio(t, direct(g.callee, g.caller, 2, PTPCMA))
				r.CheckAudio(t, direct(g.caller, g.callee, 2, PTPCMA))
			})
		}
		t.Run("re-ack", func(t *testing.T) {
			drop := dropFirstACK(t, l, g.callee.NS, ProviderIP, g.callee.Port)
			defer drop.Remove()
			r := run(t, side{Scenario: "uac-pcap.xml", Hold: 8500 * time.Millisecond}, side{Scenario: "uas-pcap.xml"})
			completed(t, r)
			if n := drop.Dropped(t); n != 1 {
				t.Errorf("dropped %d ACKs, want 1", n)
			}
			if r.Callee.Received("ACK") == 0 {
				t.Errorf("the callee never got an ACK: sipp as caller does not re-ACK a retransmitted 200\n%s", r.Traces())
			}
		})
		t.Run("t38", func(t *testing.T) {
			caller, callee := newUDPTLPeer(t, l, g.caller), newUDPTLPeer(t, l, g.callee)
			r := l.StartCall(CallSetup{
				Caller: SippSpec{Endpoint: g.caller, Scenario: "uac-t38.xml", Hold: 8 * time.Second, Timeout: 45 * time.Second,
					Args: []string{"-key", "t38port", strconv.Itoa(caller.port)}},
				Callee: SippSpec{Endpoint: g.callee, Scenario: "uas-t38.xml", Timeout: 45 * time.Second,
					Args: []string{"-key", "t38port", strconv.Itoa(callee.port)}},
				Capture: []string{g.caller.NS, g.callee.NS},
			})
			deadline := time.Now().Add(20 * time.Second)
			for r.Caller.Received("ACK") == 0 {
				if r.Caller.Exited() || r.Callee.Exited() || time.Now().After(deadline) {
					r.Finish(t)
					t.Fatalf("the switch to T.38 did not complete\n%s", r.Traces())
				}
				time.Sleep(50 * time.Millisecond)
			}
			offer, answer, ok := t38SDPs(r)
			if !ok {
				r.Finish(t)
				t.Fatalf("no T.38 SDPs\n%s", r.Traces())
			}
			want := func(e Endpoint, p *udptlPeer) netip.AddrPort {
				return netip.AddrPortFrom(netip.MustParseAddr(e.IP), uint16(p.port))
			}
			if offer.Addr != want(g.callee, callee) || answer.Addr != want(g.caller, caller) || !slices.Equal(offer.Attrs, t38Attrs) {
				t.Errorf("T.38 SDPs: offer %v %v, answer %v", offer.Addr, offer.Attrs, answer.Addr)
			}
			t38Exchange(t, caller, callee, offer.Addr, answer.Addr, 100)
			r.Finish(t)
			completed(t, r)
			for _, p := range []*udptlPeer{caller, callee} {
				if got, from, _ := p.counts(); got < 99 {
					t.Errorf("the %s got %d of 100 UDPTL datagrams (from %v)", p.at.Name, got, from)
				}
			}
		})
	})
}
