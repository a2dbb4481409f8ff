//go:build linux

package e2e

// Hostile LAN (issue 9 items 2, 3 and 4): a captured digest replayed, the
// PBX's address faked, in-dialog requests forged for a live call, and
// numbers the trunk denies.

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/icholy/digest"
)

const (
	pbxAuthUser = "pbx"
	pbxAuthPass = "pbx-secret"
	otherNumber = "905551234567" // an international number the attacker wants
)

// pbxAuthConfig is the daemon's config with digest auth for the PBX.
func pbxAuthConfig() DaemonConfig {
	return DaemonConfig{PBX: fmt.Sprintf("username: %s, password: %q", pbxAuthUser, pbxAuthPass)}
}

// awaitSippResponse waits (bounded, or until sipp exits) for the sipp
// caller to receive code to its INVITE and returns that message.
func awaitSippResponse(t *testing.T, s *Sipp, code int, timeout time.Duration) SIPMessage {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		for _, m := range s.Messages() {
			if !m.Sent && m.Code == code && strings.HasSuffix(m.CSeq, "INVITE") {
				return m
			}
		}
		if s.Exited() || time.Now().After(deadline) {
			t.Fatalf("the caller got no %d to its INVITE:\n%s", code, tail(s.Log(), 20))
		}
	}
}

// invitesTo is the distinct Call-IDs of the INVITEs that reached dst.
func invitesTo(msgs []WireSIP, dst netip.Addr) map[string]bool {
	res := map[string]bool{}
	for _, m := range msgs {
		if m.Method == "INVITE" && m.Dst.Addr() == dst {
			res[m.CallID] = true
		}
	}
	return res
}

var digestURIRE = regexp.MustCompile(`uri="[^"]*"`)

// nextCount is a valid Proxy-Authorization for the nonce and cnonce of
// auth with the next nonce-count, computed with the PBX's password.
func nextCount(t *testing.T, auth, uri string) string {
	t.Helper()
	cred, err := digest.ParseCredentials(auth)
	if err != nil {
		t.Fatalf("%q: %v", auth, err)
	}
	next, err := digest.Digest(&digest.Challenge{Realm: cred.Realm, Nonce: cred.Nonce, Algorithm: cred.Algorithm, QOP: []string{cred.QOP}},
		digest.Options{Method: "INVITE", URI: uri, Username: pbxAuthUser, Password: pbxAuthPass, Cnonce: cred.Cnonce, Count: cred.Nc + 1})
	if err != nil {
		t.Fatal(err)
	}
	return next.String()
}

// Issue 9 item 2: one captured Proxy-Authorization once placed calls to
// two other international numbers for 5 minutes. The PBX (sipp, with
// pbx.username set) calls the phone; while that call is up, its
// authorised INVITE's Proxy-Authorization is replayed from the PBX's own
// address: to the same number (its nonce-count used already), to another
// number (the digest's uri names the first), and to another number with
// the uri edited to match (the response no longer does); and from another
// LAN host that pbx.allow admits, with the next nonce-count (the nonce is
// bound to the address it was issued to). Every replay is refused with 407
// or 403, none reaches the provider, and the PBX's own call keeps its
// two-way audio. The nonce's expiry (5 minutes) is in b2bua's unit tests.
func TestHostilePBXDigestReplay(t *testing.T) {
	t.Parallel()
	cfg := pbxAuthConfig()
	cfg.PBXAllow = "192.168.100.0/24" // the rogue host may try too: its credentials must not work
	l, d := callLab(t, cfg)
	l.addRogueLANHost(t)
	ruri := fmt.Sprintf("sip:%s@%s:5060", PhoneNumber, DaemonIP)
	caller := PBXCaller
	r := l.StartCall(CallSetup{
		Caller: SippSpec{Endpoint: caller, Scenario: "uac-pcap.xml", Hold: 9 * time.Second, Timeout: 45 * time.Second,
			Args: []string{"-au", pbxAuthUser, "-ap", pbxAuthPass, "-auth_uri", strings.TrimPrefix(ruri, "sip:")}}, // sipp adds the "sip:"
		Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Timeout: 45 * time.Second},
		Capture: []string{NSPBX, NSPhone, NSProvider, NSLM},
	})
	defer r.ExplainOnFailure(t)
	awaitSippResponse(t, r.Caller, 200, 20*time.Second)
	var auth, sdp string
	for _, m := range r.Caller.Messages() {
		w := WireSIP{Text: m.Text}
		if h := w.Header("Proxy-Authorization"); m.Sent && strings.HasPrefix(m.First, "INVITE ") && len(h) > 0 {
			auth, sdp = h[0], w.Body()
		}
	}
	if auth == "" {
		r.Finish(t)
		t.Fatal("the PBX's INVITE carried no Proxy-Authorization: was it challenged?")
	}
	t.Logf("captured: Proxy-Authorization: %s", auth)

	daemon := netip.MustParseAddrPort(DaemonIP + ":5060")
	other := fmt.Sprintf("sip:%s@%s:5060", otherNumber, DaemonIP)
	replays := []struct {
		name, from, ruri, auth string
	}{
		{"same number, nonce-count reused", PBXIP, ruri, auth},
		{"another number", PBXIP, other, auth},
		{"another number, uri edited", PBXIP, other, digestURIRE.ReplaceAllString(auth, `uri="`+other+`"`)},
		// Valid credentials (the test knows the password) for the PBX's
		// nonce with a fresh nonce-count: only the nonce's binding to the
		// address it was issued to refuses them.
		{"another allowed LAN host, the PBX's nonce, next nonce-count", rogueLANIP, ruri, nextCount(t, auth, ruri)},
	}
	for i, rp := range replays {
		attacker := l.startRawUA(t, NSPBX, rp.from+":0", nil)
		user := strings.TrimPrefix(strings.SplitN(rp.ruri, "@", 2)[0], "sip:")
		req := rawRequest{Method: "INVITE", RURI: rp.ruri, Via: attacker.Addr(),
			From: fmt.Sprintf("<sip:200@%s>;tag=replay%d", rp.from, i), To: fmt.Sprintf("<sip:%s@%s>", user, DaemonIP),
			CallID: fmt.Sprintf("replay-%d@%s", i, rp.from), CSeq: 2,
			Headers: []string{"Proxy-Authorization: " + rp.auth}, Body: sdp}
		attacker.Send(daemon, req.String())
		resp, ok := attacker.Await(10*time.Second, finalFor(req.CallID))
		if !ok {
			t.Errorf("replay %q: no final answer in 10 s", rp.name)
			continue
		}
		attacker.Send(daemon, ackOf(resp, req.RURI))
		t.Logf("replay %q: %s", rp.name, resp.First)
		if resp.Code != 407 && resp.Code != 403 {
			t.Errorf("replay %q was answered %q, want 407 or 403", rp.name, resp.First)
		}
		// A nonce used from an address it was not issued to is stale:
		// the refusal's reason, as the credentials are otherwise valid.
		if stale := strings.Contains(strings.Join(resp.Header("Proxy-Authenticate"), ""), "stale=true"); stale != (rp.from != PBXIP) {
			t.Errorf("replay %q: stale=%v in %q", rp.name, stale, resp.Header("Proxy-Authenticate"))
		}
	}
	r.Finish(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, outbound, 1)
	if got := invitesTo(r.SIP[NSProvider], netip.MustParseAddr(ProviderIP)); len(got) != 1 {
		t.Errorf("the provider got INVITEs of %d calls, want 1 (the PBX's own): %v", len(got), got)
	}
	stopDaemon(t, d)
}

// ipOnlyWarning is how the daemon's start-up warning about pbx auth
// being off begins.
const ipOnlyWarning = "the PBX is trusted by its address alone"

// warnedIPOnly reports whether the daemon logged the IP-only warning.
func warnedIPOnly(d *Daemon) bool {
	for _, e := range d.Entries() {
		if m, _ := e["msg"].(string); strings.HasPrefix(m, ipOnlyWarning) && e["level"] == "warn" {
			return true
		}
	}
	return false
}

// Issue 9 item 3 (a): with no pbx.username a rogue LAN host that faked
// the PBX's address and sent a blind ACK placed an answered call to
// +90.... The rogue sends from the PBX's IP (another port on the PBX's
// interface: what the daemon sees from a host that spoofs it) an INVITE
// to an international number and, without waiting for any answer, an ACK
// with a guessed tag. With digest auth on, no INVITE reaches the provider.
// The control, IP-only trust, shows the attack is real: the INVITE does
// reach the provider, and the daemon warned at start that it would.
func TestHostilePBXSpoofedInvite(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		auth bool
	}{{"digest-auth", true}, {"ip-only-control", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg := DaemonConfig{}
			if c.auth {
				cfg = pbxAuthConfig()
			}
			l, d := callLab(t, cfg)
			if warned := warnedIPOnly(d); warned == c.auth {
				t.Errorf("pbx auth on: %v; the start-up warning %q logged: %v", c.auth, ipOnlyWarning, warned)
			}
			capture := l.StartCapture(NSProvider, "eth0", "udp port 5060")
			spoofer := l.startRawUA(t, NSPBX, PBXIP+":0", nil)
			daemon := netip.MustParseAddrPort(DaemonIP + ":5060")
			inv := rawRequest{Method: "INVITE", RURI: fmt.Sprintf("sip:%s@%s:5060", otherNumber, DaemonIP), Via: spoofer.Addr(),
				From: fmt.Sprintf("<sip:200@%s>;tag=spoof", PBXIP), To: fmt.Sprintf("<sip:%s@%s>", otherNumber, DaemonIP),
				CallID: "spoof-1@" + PBXIP, CSeq: 1, Body: labSDP(PBXIP, 30000)}
			spoofer.Send(daemon, inv.String())
			blind := inv
			blind.Method, blind.Body, blind.To = "ACK", "", inv.To+";tag=guessed"
			spoofer.Send(daemon, blind.String())
			// The test awaits the daemon's final answer (407, or the
			// provider's refusal relayed) as the sign that the INVITE has
			// been dealt with, resending the INVITE as Timer A would.
			resp, ok := spoofer.AwaitResending(20*time.Second, daemon, inv.String(), finalFor(inv.CallID))
			pkts, err := ReadPcap(capture.Stop())
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Fatal("the spoofed INVITE got no final answer in 20 s")
			}
			got := invitesTo(SIPMessages(pkts), netip.MustParseAddr(ProviderIP))
			t.Logf("spoofed INVITE answered %q; the provider got INVITEs of %d calls", resp.First, len(got))
			switch {
			case c.auth && len(got) > 0:
				t.Errorf("with pbx digest auth, the spoofed INVITE reached the provider (%d calls)", len(got))
			case c.auth && resp.Code != 407:
				t.Errorf("the spoofed INVITE was answered %q, want 407", resp.First)
			case !c.auth && len(got) != 1:
				t.Errorf("control: with IP-only trust the spoofed INVITE should reach the provider; it got %d calls", len(got))
			}
			stopDaemon(t, d)
		})
	}
}

// Issue 9 item 3 (b): a BYE from any LAN host that carried a guessable
// Call-ID hung up a call. While the PBX talks to the phone, forged BYE,
// UPDATE (moving the media to the rogue) and ACK requests with the live
// call's Call-ID and tags come from a rogue LAN address and from an
// Internet host that is not the provider (through the SIP port forward),
// and the same with wrong tags from the PBX's own address. The call stays
// up until the PBX hangs up, with its whole audio both ways.
func TestHostileInDialogSpoof(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	l.addRogueLANHost(t)
	if err := l.ForwardSIP(); err != nil {
		t.Fatal(err)
	}
	r := l.StartCall(CallSetup{
		Caller:  SippSpec{Endpoint: PBXCaller, Scenario: "uac-pcap.xml", Hold: 9 * time.Second, Timeout: 45 * time.Second},
		Callee:  SippSpec{Endpoint: PhoneCallee, Scenario: "uas-pcap.xml", Timeout: 45 * time.Second},
		Capture: []string{NSPBX, NSPhone, NSLM},
	})
	defer r.ExplainOnFailure(t)
	lanOK := WireSIP{Text: awaitSippResponse(t, r.Caller, 200, 20*time.Second).Text}
	for deadline := time.Now().Add(10 * time.Second); r.Callee.Received("ACK") == 0; time.Sleep(20 * time.Millisecond) {
		if r.Callee.Exited() || time.Now().After(deadline) {
			r.Finish(t)
			t.Fatal("the phone got no ACK")
		}
	}
	var wanInvite WireSIP // the INVITE the phone got: the provider leg's Call-ID and our tag
	for _, m := range r.Callee.Messages() {
		if !m.Sent && strings.HasPrefix(m.First, "INVITE ") {
			wanInvite = WireSIP{Text: m.Text}
		}
	}
	first := func(m WireSIP, h string) string {
		if v := m.Header(h); len(v) > 0 {
			return v[0]
		}
		t.Fatalf("no %s in:\n%s", h, m.Text)
		return ""
	}
	lanCallID, lanFrom, lanTo := first(lanOK, "Call-ID"), first(lanOK, "From"), first(lanOK, "To")
	wanCallID, wanFrom := first(wanInvite, "Call-ID"), first(wanInvite, "From")
	// The phone's To tag is in its 200.
	var wanTo string
	for _, m := range r.Callee.Messages() {
		if m.Sent && m.Code == 200 && strings.HasSuffix(m.CSeq, "INVITE") {
			wanTo = first(WireSIP{Text: m.Text}, "To")
		}
	}

	lanDaemon := netip.MustParseAddrPort(DaemonIP + ":5060")
	wanDaemon := netip.AddrPortFrom(netip.MustParseAddr(WANIP1), DaemonSIPPort)
	withTag := func(nameAddr, tag string) string { return strings.Split(nameAddr, ";tag=")[0] + ";tag=" + tag }
	for _, f := range []struct {
		who, ns, laddr string
		dst            netip.AddrPort
		callID         string
		from, to       string
		want481        bool // a known source with the wrong tags: 481 (a stranger may get a 403 or nothing)
	}{
		{"rogue LAN host, the call's tags", NSPBX, rogueLANIP + ":5060", lanDaemon, lanCallID, lanFrom, lanTo, false},
		{"PBX address, wrong To tag", NSPBX, PBXIP + ":0", lanDaemon, lanCallID, lanFrom, withTag(lanTo, "wrong"), true},
		{"PBX address, wrong From tag", NSPBX, PBXIP + ":0", lanDaemon, lanCallID, withTag(lanFrom, "wrong"), lanTo, true},
		{"Internet host, the call's tags", NSSTUN, STUN1IP + ":5060", wanDaemon, wanCallID, wanTo, wanFrom, false},
	} {
		ua := l.startRawUA(t, f.ns, f.laddr, nil)
		var bye rawRequest
		for i, method := range []string{"UPDATE", "ACK", "BYE"} {
			req := rawRequest{Method: method, RURI: "sip:" + f.dst.String(), Via: ua.Addr(), From: f.from, To: f.to,
				CallID: f.callID, CSeq: 100 + i}
			if method == "UPDATE" {
				req.Body = labSDP(ua.Addr().Addr().String(), 30000) // the media, to the forger
			}
			ua.Send(f.dst, req.String())
			bye = req
		}
		if f.want481 {
			isBye := func(m WireSIP) bool { return m.CallID == bye.CallID && m.Code >= 200 && m.CSeqMethod() == "BYE" }
			if m, ok := ua.Await(5*time.Second, isBye); !ok || m.Code != 481 {
				t.Errorf("%s: the forged BYE was answered %q, want 481", f.who, m.First)
			}
		}
		for _, m := range ua.Received(func(m WireSIP) bool { return m.CallID == f.callID }) {
			t.Logf("%s: %s [%s]", f.who, m.First, m.CSeq)
		}
	}
	r.Finish(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, outbound, 1)
	e := d.WaitSeen(t, 5*time.Second, func(e map[string]any) bool { return e["msg"] == "call ended" })
	if e["reason"] != "bye from pbx" {
		t.Errorf("the call ended with %q, want the PBX's own BYE", e["reason"])
	}
	stopDaemon(t, d)
}

// Issue 9 item 4, in the lab: the trunk's outbound_deny stops a number at
// the daemon, and an emergency number goes out even though a deny rule
// matches it. The PBX (IP-only trust) dials three numbers with deny rules
// "90*" and "1*": the international 90… and 1234 get 403 and no INVITE
// for them reaches the provider; 112 reaches it (what the provider then
// answers is its business). The IP-only control of
// TestHostilePBXSpoofedInvite shows the 90… number reaching the provider
// without the rule.
func TestHostileOutboundPolicy(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{Trunk: `outbound_deny: ["90*", "1*"]`})
	capture := l.StartCapture(NSProvider, "eth0", "udp port 5060")
	ua := l.startRawUA(t, NSPBX, PBXIP+":0", nil)
	daemon := netip.MustParseAddrPort(DaemonIP + ":5060")
	answers := map[string]WireSIP{}
	for i, num := range []string{otherNumber, "1234", "112"} {
		inv := rawRequest{Method: "INVITE", RURI: fmt.Sprintf("sip:%s@%s:5060", num, DaemonIP), Via: ua.Addr(),
			From: fmt.Sprintf("<sip:200@%s>;tag=pol%d", PBXIP, i), To: fmt.Sprintf("<sip:%s@%s>", num, DaemonIP),
			CallID: fmt.Sprintf("policy-%d@%s", i, PBXIP), CSeq: 1, Body: labSDP(PBXIP, 30000+2*i)}
		ua.Send(daemon, inv.String())
		resp, ok := ua.AwaitResending(60*time.Second, daemon, inv.String(), finalFor(inv.CallID))
		if !ok {
			t.Fatalf("the INVITE to %s got no final answer in 60 s", num)
		}
		ua.Send(daemon, ackOf(resp, inv.RURI))
		answers[num] = resp
	}
	pkts, err := ReadPcap(capture.Stop())
	if err != nil {
		t.Fatal(err)
	}
	// The provider leg has Call-IDs of its own: count its calls, and read
	// the number from their Request-URIs (in the trunk's number format).
	calls := invitesTo(SIPMessages(pkts), netip.MustParseAddr(ProviderIP))
	var uris []string
	for _, m := range SIPMessages(pkts) {
		if m.Method == "INVITE" && m.Dst.Addr() == netip.MustParseAddr(ProviderIP) && !slices.Contains(uris, m.First) {
			uris = append(uris, m.First)
		}
	}
	t.Logf("answers: %s %q, 1234 %q, 112 %q; the provider got %d call(s): %q", otherNumber, answers[otherNumber].First,
		answers["1234"].First, answers["112"].First, len(calls), uris)
	for _, num := range []string{otherNumber, "1234"} {
		if answers[num].Code != 403 {
			t.Errorf("denied %s: answered %q, want 403", num, answers[num].First)
		}
	}
	if len(calls) != 1 || len(uris) != 1 || !strings.Contains(uris[0], "112@") {
		t.Errorf("the provider got %d call(s) (%q); want exactly one, the emergency call to 112 (a deny rule must not stop it)", len(calls), uris)
	}
	stopDaemon(t, d)
}
