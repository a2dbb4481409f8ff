package b2bua

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// signedInvite answers chal the way a PBX would, for a call to number,
// with nonce-count nc.
func signedInvite(t *testing.T, chal, user, pass string) *sip.Request {
	return signedCall(t, chal, user, pass, "0301234567", 1)
}

func signedCall(t *testing.T, chal, user, pass, number string, nc int) *sip.Request {
	t.Helper()
	c, err := digest.ParseChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: number, Host: "192.168.100.2"})
	cred, err := digest.Digest(c, digest.Options{Method: "INVITE", URI: req.Recipient.String(), Username: user, Password: pass,
		Cnonce: "0a4f113b", Count: nc})
	if err != nil {
		t.Fatal(err)
	}
	req.AppendHeader(sip.NewHeader("Proxy-Authorization", cred.String()))
	return req
}

const authPBXIP = "192.168.100.20"

func TestPBXAuth(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	a := newPBXAuth("pbx", "s3cret")
	a.now = func() time.Time { return now }
	challenge := func() string {
		_, chal := a.check(sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", Host: "x"}), authPBXIP)
		return chal
	}

	ok, chal := a.check(sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", Host: "x"}), authPBXIP)
	if ok || !strings.Contains(chal, `realm="linkmanager"`) {
		t.Fatalf("no credentials: ok=%v challenge %q", ok, chal)
	}
	if ok, _ := a.check(signedInvite(t, chal, "pbx", "s3cret"), authPBXIP); !ok {
		t.Error("right credentials refused")
	}
	if ok, _ := a.check(signedInvite(t, challenge(), "pbx", "guess"), authPBXIP); ok {
		t.Error("wrong password accepted")
	}
	if ok, _ := a.check(signedInvite(t, challenge(), "admin", "s3cret"), authPBXIP); ok {
		t.Error("wrong user accepted")
	}
	forged := strings.Replace(challenge(), `nonce="`, `nonce="1`, 1)
	if ok, _ := a.check(signedInvite(t, forged, "pbx", "s3cret"), authPBXIP); ok {
		t.Error("a nonce we never issued was accepted")
	}
	old := signedInvite(t, challenge(), "pbx", "s3cret")
	now = now.Add(nonceLifetime + time.Second)
	ok, again := a.check(old, authPBXIP)
	if ok || !strings.Contains(again, "stale=true") {
		t.Errorf("replayed credentials after %v: ok=%v challenge %q, want a stale challenge", nonceLifetime, ok, again)
	}
}

// Issue 9 item 2: one captured Proxy-Authorization placed calls to two
// other international numbers for 5 minutes. Each way of reusing it is
// refused; a PBX that reuses its nonce with a rising nc is not.
func TestPBXAuthReplay(t *testing.T) {
	a := newPBXAuth("pbx", "s3cret")
	challenge := func(src string) string {
		_, chal := a.check(sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", Host: "x"}), src)
		return chal
	}
	chal := challenge(authPBXIP)
	call := signedCall(t, chal, "pbx", "s3cret", "+4930123456", 1)
	if ok, _ := a.check(call, authPBXIP); !ok {
		t.Fatal("the genuine call was refused")
	}
	// The same INVITE again (captured and replayed, same nonce and nc).
	if ok, _ := a.check(signedCall(t, chal, "pbx", "s3cret", "+4930123456", 1), authPBXIP); ok {
		t.Error("a replay with the same nonce and nc was accepted")
	}
	// The captured header on an INVITE to another number.
	other := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "+905551234567", Host: "192.168.100.2"})
	other.AppendHeader(call.GetHeader("Proxy-Authorization"))
	if ok, _ := a.check(other, authPBXIP); ok {
		t.Error("the captured credentials placed a call to another number (uri not checked)")
	}
	// A nonce issued to one address, used from another.
	rogueChal := challenge(authPBXIP)
	if ok, _ := a.check(signedCall(t, rogueChal, "pbx", "s3cret", "+4930123456", 1), "192.168.100.66"); ok {
		t.Error("a nonce issued to the PBX was accepted from another host")
	}
	// Preemptive auth: the PBX reuses its nonce with nc 2, then 3.
	for nc := 2; nc <= 3; nc++ {
		if ok, _ := a.check(signedCall(t, chal, "pbx", "s3cret", "+4930123456", nc), authPBXIP); !ok {
			t.Errorf("nc %d on the PBX's own nonce refused", nc)
		}
	}
	// Each challenge has its own nonce.
	if c1, c2 := challenge(authPBXIP), challenge(authPBXIP); c1 == c2 {
		t.Error("two challenges carry the same nonce")
	}
}

func TestPBXAuthNonceTableBounded(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	a := newPBXAuth("pbx", "s3cret")
	a.now = func() time.Time { return now }
	for i := range maxTrackedNonces + 100 {
		_, chal := a.check(sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", Host: "x"}), authPBXIP)
		if ok, _ := a.check(signedInvite(t, chal, "pbx", "s3cret"), authPBXIP); !ok {
			t.Fatalf("call %d refused", i)
		}
		if i%1000 == 0 {
			now = now.Add(2 * time.Minute)
		}
	}
	if n := len(a.used); n > maxTrackedNonces {
		t.Errorf("%d nonces tracked, want at most %d", n, maxTrackedNonces)
	}
}

// Issue 9 item 3: IP-only trust is said plainly at start (and on reload).
func TestIPOnlyTrustWarns(t *testing.T) {
	ua, err := sipgo.NewUA()
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	client, err := sipgo.NewClient(ua)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user string
		warnings   int
	}{{"address only", "", 1}, {"digest", "pbx", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.WarnLevel)
			_, err := New(Config{Logger: zap.New(core), LAN: Side{Client: client}, WAN: Side{Client: client},
				Router: fakeRouter{}, Media: &fakeMedia{},
				PBX: PBXOptions{Allow: []netip.Prefix{netip.MustParsePrefix("192.168.100.20/32")}, Username: tc.user, Password: "x"}})
			if err != nil {
				t.Fatal(err)
			}
			if n := logs.FilterMessageSnippet("trusted by its address alone").Len(); n != tc.warnings {
				t.Errorf("%d IP-only trust warnings, want %d", n, tc.warnings)
			}
		})
	}
}
