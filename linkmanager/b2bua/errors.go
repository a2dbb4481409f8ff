package b2bua

import (
	"errors"

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
