package b2bua

import (
	"errors"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sdp"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrConfig     = errors.New("b2bua: config needs both clients, a router and media")
	ErrNoRoute    = errors.New("b2bua: no trunk for number")
	ErrUnresolved = errors.New("b2bua: trunk not resolved yet")
	ErrGlare      = errors.New("b2bua: offer refused by glare too often")
	ErrCallEnded  = errors.New("b2bua: call ended")
	ErrNoAnswer   = errors.New("b2bua: no final response")
	ErrAnswered   = errors.New("b2bua: the INVITE has its final response")
)

// statusFor maps an error to the SIP response we give the caller: the one
// place where domain errors become status codes.
func statusFor(err error) (int, string) {
	switch {
	case errors.Is(err, rtpbridge.ErrPoolExhausted):
		return 503, "Service Unavailable"
	case errors.Is(err, sdp.ErrMalformed), errors.Is(err, sdp.ErrTooLarge):
		return 400, "Bad Request"
	case errors.Is(err, sdp.ErrNoMedia), errors.Is(err, sdp.ErrIPv6), errors.Is(err, sdp.ErrUnsupported):
		return 488, "Not Acceptable Here"
	default:
		return 500, "Server Internal Error"
	}
}

// sendStatus is what the caller gets when its INVITE could not be sent on:
// 513 when sipgo refused the relayed message as too large for UDP (above
// sip.UDPMTUSize-200 bytes; there is no TCP transport yet, RFC 3261
// §18.1.1), 503 otherwise.
func sendStatus(err error) (int, string) {
	if errors.Is(err, sip.ErrUDPMTUCongestion) {
		return 513, "Message Too Large"
	}
	return 503, "Service Unavailable"
}
