package b2bua

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// pbxRealm is the digest realm we challenge the PBX with.
const pbxRealm = "linkmanager"

// nonceLifetime bounds replay of a captured INVITE's credentials.
const nonceLifetime = 5 * time.Minute

// pbxAuth checks the PBX's digest credentials (optional pbx.username).
//
// A captured Proxy-Authorization must not place other calls (one once
// placed calls to two other international numbers for 5 minutes), so:
//   - a nonce is issued per challenge and bound to the source IP it was
//     sent to (its HMAC covers both), and expires after nonceLifetime;
//   - the digest's uri must be the Request-URI being authorised;
//   - each nonce-count is accepted once, rising (RFC 7616 §3.4): a replay
//     with the same nonce and nc is refused, a UA that reuses a nonce with
//     nc+1 (preemptive auth) is not.
//
// Only hosts in pbx.allow reach this, so the nc table is bounded by what
// the PBX itself asks for; entries go when their nonce expires.
type pbxAuth struct {
	user, pass string
	key        [32]byte
	now        func() time.Time

	mu   sync.Mutex
	used map[string]uint64 // nonce -> highest nc accepted; guarded by mu
}

// maxTrackedNonces bounds the nc table; past it, the oldest nonces are
// forgotten, which only makes their holders authenticate again.
const maxTrackedNonces = 4096

func newPBXAuth(user, pass string) *pbxAuth {
	a := &pbxAuth{user: user, pass: pass, now: time.Now, used: map[string]uint64{}}
	rand.Read(a.key[:])
	return a
}

// nonce is "unix-time.random.mac", the mac over both and the source IP.
func (a *pbxAuth) nonce(src string) string {
	var r [8]byte
	rand.Read(r[:])
	head := strconv.FormatInt(a.now().Unix(), 10) + "." + hex.EncodeToString(r[:])
	return head + "." + a.mac(head, src)
}

func (a *pbxAuth) mac(head, src string) string {
	h := hmac.New(sha256.New, a.key[:])
	h.Write([]byte(head))
	h.Write([]byte{0})
	h.Write([]byte(src))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// fresh reports whether we issued nonce to src within its lifetime.
func (a *pbxAuth) fresh(nonce, src string) bool {
	i := strings.LastIndexByte(nonce, '.')
	if i < 0 || !hmac.Equal([]byte(nonce[i+1:]), []byte(a.mac(nonce[:i], src))) {
		return false
	}
	ts, _, _ := strings.Cut(nonce, ".")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	age := a.now().Sub(time.Unix(sec, 0))
	return age >= -time.Minute && age <= nonceLifetime
}

// firstUse records nc for nonce and reports whether it is higher than any
// accepted before. Without qop there is no nc: the nonce is used once.
func (a *pbxAuth) firstUse(nonce string, qop bool, nc int) bool {
	if !qop {
		nc = 1
	}
	if nc <= 0 {
		return false
	}
	n := uint64(nc)
	a.mu.Lock()
	defer a.mu.Unlock()
	if last, seen := a.used[nonce]; seen && n <= last {
		return false
	}
	if len(a.used) >= maxTrackedNonces {
		a.expireLocked()
	}
	a.used[nonce] = n
	return true
}

// expireLocked forgets expired nonces, or, if none has expired, the
// oldest half.
func (a *pbxAuth) expireLocked() {
	cut := a.now().Add(-nonceLifetime - time.Minute).Unix()
	for len(a.used) >= maxTrackedNonces {
		for k := range a.used {
			ts, _, _ := strings.Cut(k, ".")
			if sec, err := strconv.ParseInt(ts, 10, 64); err != nil || sec < cut {
				delete(a.used, k)
			}
		}
		cut += int64(nonceLifetime/time.Second) / 2
	}
}

// check verifies req's Proxy-Authorization as sent from src (its IP). It
// returns the challenge to send when the request carries none, a stale, a
// replayed or a wrong one.
func (a *pbxAuth) check(req *sip.Request, src string) (ok bool, challenge string) {
	chal := &digest.Challenge{Realm: pbxRealm, Nonce: a.nonce(src), Algorithm: "MD5", QOP: []string{"auth"}}
	h := req.GetHeader("Proxy-Authorization")
	if h == nil {
		return false, chal.String()
	}
	cred, err := digest.ParseCredentials(h.Value())
	if err != nil || cred.Username != a.user || cred.Realm != pbxRealm {
		return false, chal.String()
	}
	if !a.fresh(cred.Nonce, src) {
		chal.Stale = true
		return false, chal.String()
	}
	if !sameURI(cred.URI, req.Recipient) {
		return false, chal.String()
	}
	want, err := digest.Digest(&digest.Challenge{Realm: pbxRealm, Nonce: cred.Nonce, Algorithm: "MD5", QOP: qops(cred.QOP)},
		digest.Options{Method: string(req.Method), URI: cred.URI, Username: a.user, Password: a.pass,
			Cnonce: cred.Cnonce, Count: cred.Nc})
	if err != nil || subtle.ConstantTimeCompare([]byte(want.Response), []byte(cred.Response)) != 1 {
		return false, chal.String()
	}
	if !a.firstUse(cred.Nonce, cred.QOP != "", cred.Nc) {
		// A replay: the same nonce and count again. A fresh challenge
		// lets a real PBX that retried go on.
		return false, chal.String()
	}
	return true, ""
}

// sameURI reports whether the digest's uri names the Request-URI: the
// same user, host and port (RFC 3261 §22.4 lets the UA copy it verbatim,
// but some normalise parameters).
func sameURI(s string, ruri sip.Uri) bool {
	if s == ruri.String() {
		return true
	}
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		return false
	}
	return u.User == ruri.User && strings.EqualFold(u.Host, ruri.Host) && u.Port == ruri.Port
}

func qops(q string) []string {
	if q == "" {
		return nil
	}
	return []string{q}
}
