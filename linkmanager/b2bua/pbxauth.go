package b2bua

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// pbxRealm is the digest realm we challenge the PBX with.
const pbxRealm = "linkmanager"

// nonceLifetime bounds replay of a captured INVITE's credentials.
const nonceLifetime = 5 * time.Minute

// pbxAuth checks the PBX's digest credentials (optional pbx.username).
// Nonces are stateless, a timestamp with its HMAC, so a flood of
// challenges costs no memory.
type pbxAuth struct {
	user, pass string
	key        [32]byte
	now        func() time.Time
}

func newPBXAuth(user, pass string) *pbxAuth {
	a := &pbxAuth{user: user, pass: pass, now: time.Now}
	rand.Read(a.key[:])
	return a
}

func (a *pbxAuth) nonce() string {
	ts := strconv.FormatInt(a.now().Unix(), 10)
	return ts + "." + a.mac(ts)
}

func (a *pbxAuth) mac(ts string) string {
	h := hmac.New(sha256.New, a.key[:])
	h.Write([]byte(ts))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// fresh reports whether we issued nonce within its lifetime.
func (a *pbxAuth) fresh(nonce string) bool {
	ts, mac, ok := strings.Cut(nonce, ".")
	if !ok || !hmac.Equal([]byte(mac), []byte(a.mac(ts))) {
		return false
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	age := a.now().Sub(time.Unix(sec, 0))
	return age >= -time.Minute && age <= nonceLifetime
}

// check verifies req's Proxy-Authorization. It returns the challenge to
// send when the request carries none, a stale or a wrong one.
func (a *pbxAuth) check(req *sip.Request) (ok bool, challenge string) {
	chal := &digest.Challenge{Realm: pbxRealm, Nonce: a.nonce(), Algorithm: "MD5", QOP: []string{"auth"}}
	h := req.GetHeader("Proxy-Authorization")
	if h == nil {
		return false, chal.String()
	}
	cred, err := digest.ParseCredentials(h.Value())
	if err != nil || cred.Username != a.user || cred.Realm != pbxRealm {
		return false, chal.String()
	}
	if !a.fresh(cred.Nonce) {
		chal.Stale = true
		return false, chal.String()
	}
	want, err := digest.Digest(&digest.Challenge{Realm: pbxRealm, Nonce: cred.Nonce, Algorithm: "MD5", QOP: qops(cred.QOP)},
		digest.Options{Method: string(req.Method), URI: cred.URI, Username: a.user, Password: a.pass,
			Cnonce: cred.Cnonce, Count: cred.Nc})
	if err != nil || subtle.ConstantTimeCompare([]byte(want.Response), []byte(cred.Response)) != 1 {
		return false, chal.String()
	}
	return true, ""
}

func qops(q string) []string {
	if q == "" {
		return nil
	}
	return []string{q}
}
