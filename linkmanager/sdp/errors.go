package sdp

import "errors"

// Sentinel errors, tested with errors.Is; the wrapped message names the line.
// The SIP layer answers an offer it cannot parse with 400 if ErrMalformed or
// ErrTooLarge, and one it parses but cannot relay with 488 Not Acceptable
// Here.
var (
	// ErrMalformed means the body is not SDP we can trust to edit: no v=0
	// first, no o= line, a line that is not "x=...", a bad m= port, a
	// control character, or an active stream without a c= address.
	ErrMalformed = errors.New("sdp: malformed")

	// ErrTooLarge means the body exceeds MaxSize.
	ErrTooLarge = errors.New("sdp: body too large")

	// ErrNoMedia means there is no m= line, so there is nothing to relay.
	ErrNoMedia = errors.New("sdp: no media")

	// ErrIPv6 means a c= or a=rtcp address is IPv6. The relay's sockets are
	// IPv4 only.
	ErrIPv6 = errors.New("sdp: IPv6 media address")

	// ErrUnsupported means valid SDP the relay cannot serve: multicast, a
	// host name instead of an address, a port count (m=audio 49170/2), or a
	// network type other than IN.
	ErrUnsupported = errors.New("sdp: unsupported")

	// ErrBadRelay is returned by Rewrite for a relay address or port the
	// caller should never have passed: not a unicast IPv4 address, a port
	// outside 1..65534 (RTCP needs port+1), or an m-line that does not exist.
	ErrBadRelay = errors.New("sdp: bad relay address or port")
)
