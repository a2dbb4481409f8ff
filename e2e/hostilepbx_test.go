//go:build linux

package e2e

// Hostile LAN (issue 9 items 2 and 3): a captured digest replayed, the
// PBX's address faked, and in-dialog requests forged for a live call.

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

const (
	pbxAuthUser = "pbx"
	pbxAuthPass = "pbx-secret"
	rogueLANIP  = "192.168.100.66" // a second address on the PBX's LAN interface
	otherNumber = "905551234567"   // an international number the attacker wants
)

// pbxAuthConfig is the daemon's config with digest auth for the PBX.
func pbxAuthConfig() DaemonConfig {
	return DaemonConfig{PBX: fmt.Sprintf("username: %s, password: %q", pbxAuthUser, pbxAuthPass)}
}

// addRogueLANHost gives the PBX's LAN interface a second address, the
// rogue host's, inside the lab namespace.
func (l *Lab) addRogueLANHost(t *testing.T) {
	t.Helper()
	if out, err := l.Exec(NSPBX, "ip", "addr", "add", rogueLANIP+"/24", "dev", "eth0"); err != nil {
		t.Fatalf("rogue LAN address: %v\n%s", err, out)
	}
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

// Issue 9 item 2: one captured Proxy-Authorization once placed calls to
// two other international numbers for 5 minutes. The PBX (sipp, with
// pbx.username set) calls the phone; while that call is up, its
// authorised INVITE's Proxy-Authorization is replayed from the PBX's own
// address: to the same number (its nonce-count used already), to another
// number (the digest's uri names the first), and to another number with
// the uri edited to match (the response no longer does). Every replay is
// refused with 407 or 403, none reaches the provider, and the PBX's own
// call keeps its two-way audio. The nonce's expiry (5 minutes) and its
// binding to the source are in b2bua's unit tests.
func TestHostilePBXDigestReplay(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, pbxAuthConfig())
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

	attacker := l.startRawUA(t, NSPBX, PBXIP+":0", nil)
	daemon := netip.MustParseAddrPort(DaemonIP + ":5060")
	other := fmt.Sprintf("sip:%s@%s:5060", otherNumber, DaemonIP)
	replays := []struct {
		name, ruri, auth string
	}{
		{"same number, nonce-count reused", ruri, auth},
		{"another number", other, auth},
		{"another number, uri edited", other, digestURIRE.ReplaceAllString(auth, `uri="`+other+`"`)},
	}
	for i, rp := range replays {
		user := strings.TrimPrefix(strings.SplitN(rp.ruri, "@", 2)[0], "sip:")
		req := rawRequest{Method: "INVITE", RURI: rp.ruri, Via: attacker.Addr(),
			From: fmt.Sprintf("<sip:200@%s>;tag=replay%d", PBXIP, i), To: fmt.Sprintf("<sip:%s@%s>", user, DaemonIP),
			CallID: fmt.Sprintf("replay-%d@%s", i, PBXIP), CSeq: 2,
			Headers: []string{"Proxy-Authorization: " + rp.auth}, Body: sdp}
		attacker.Send(daemon, req.String())
		resp, ok := attacker.Await(10*time.Second, finalFor(req.CallID))
		if !ok {
			t.Errorf("replay %q: no final answer in 10 s", rp.name)
			continue
		}
		attacker.Send(daemon, ackFor(req, resp))
		t.Logf("replay %q: %s", rp.name, resp.First)
		if resp.Code != 407 && resp.Code != 403 {
			t.Errorf("replay %q was answered %q, want 407 or 403", rp.name, resp.First)
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
