// Package sipmsg holds the few SIP header helpers that the trunk and the
// B2BUA both need, so neither has to reach into the other.
package sipmsg

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// Allowed is what we accept, for Allow headers.
const Allowed = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK"

// Supported is the extensions we do ourselves, for Supported headers:
// reliable provisional responses (RFC 3262), both ways. Session timers
// are only relayed, so they are not named.
const Supported = "100rel"

// ErrChallenge is a 401/407 whose challenge we cannot answer.
var ErrChallenge = errors.New("sipmsg: unusable challenge")

// NewVia is a Via for a request we originate, with a fresh branch.
func NewVia(sentBy netip.AddrPort) *sip.ViaHeader {
	params := sip.NewParams()
	params.Add("branch", sip.GenerateBranch())
	// rport (RFC 3581) makes the peer answer to our NAT mapping and
	// tell us what that mapping is.
	params.Add("rport", "")
	return &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: "UDP",
		Host: sentBy.Addr().String(), Port: int(sentBy.Port()), Params: params}
}

// Params builds header parameters from key, value pairs.
func Params(kv ...string) sip.HeaderParams {
	p := sip.NewParams()
	for i := 0; i+1 < len(kv); i += 2 {
		p.Add(kv[i], kv[i+1])
	}
	return p
}

// Challenge reads the digest challenge of a 401 or 407 and names the
// header the answer goes into.
func Challenge(res *sip.Response) (*digest.Challenge, string, error) {
	name, reply := "WWW-Authenticate", "Authorization"
	if res.StatusCode == sip.StatusProxyAuthRequired {
		name, reply = "Proxy-Authenticate", "Proxy-Authorization"
	}
	h := res.GetHeader(name)
	if h == nil {
		return nil, "", fmt.Errorf("%w: %d without %s", ErrChallenge, res.StatusCode, name)
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		return nil, "", fmt.Errorf("%w: bad %s: %w", ErrChallenge, name, err)
	}
	return chal, reply, nil
}

// Tag is the tag parameter of a From or To header; "" when absent.
func Tag(h interface{ Value() string }) string {
	switch v := h.(type) {
	case *sip.ToHeader:
		if v != nil {
			t, _ := v.Params.Get("tag")
			return t
		}
	case *sip.FromHeader:
		if v != nil {
			t, _ := v.Params.Get("tag")
			return t
		}
	}
	return ""
}
