package b2bua

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// signedInvite answers chal the way a PBX would.
func signedInvite(t *testing.T, chal, user, pass string) *sip.Request {
	t.Helper()
	c, err := digest.ParseChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "0301234567", Host: "192.168.100.2"})
	cred, err := digest.Digest(c, digest.Options{Method: "INVITE", URI: req.Recipient.String(), Username: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	req.AppendHeader(sip.NewHeader("Proxy-Authorization", cred.String()))
	return req
}

func TestPBXAuth(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	a := newPBXAuth("pbx", "s3cret")
	a.now = func() time.Time { return now }

	ok, chal := a.check(sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", Host: "x"}))
	if ok || !strings.Contains(chal, `realm="linkmanager"`) {
		t.Fatalf("no credentials: ok=%v challenge %q", ok, chal)
	}
	if ok, _ := a.check(signedInvite(t, chal, "pbx", "s3cret")); !ok {
		t.Error("right credentials refused")
	}
	if ok, _ := a.check(signedInvite(t, chal, "pbx", "guess")); ok {
		t.Error("wrong password accepted")
	}
	if ok, _ := a.check(signedInvite(t, chal, "admin", "s3cret")); ok {
		t.Error("wrong user accepted")
	}
	forged := strings.Replace(chal, `nonce="`, `nonce="1`, 1)
	if ok, _ := a.check(signedInvite(t, forged, "pbx", "s3cret")); ok {
		t.Error("a nonce we never issued was accepted")
	}
	old := signedInvite(t, chal, "pbx", "s3cret")
	now = now.Add(nonceLifetime + time.Second)
	ok, again := a.check(old)
	if ok || !strings.Contains(again, "stale=true") {
		t.Errorf("replayed credentials after %v: ok=%v challenge %q, want a stale challenge", nonceLifetime, ok, again)
	}
}
