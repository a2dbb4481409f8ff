package rtpbridge

import "errors"

var (
	// ErrPoolExhausted means no port pair could be bound: every pair is in use
	// or quarantined, or binding failed MaxRetries times. The condition is
	// temporary, so the SIP layer answers 503 with Retry-After.
	ErrPoolExhausted = errors.New("rtpbridge: port pool exhausted")

	// ErrInvalidPool is wrapped by Pool.Validate for a bad range, network or
	// address.
	ErrInvalidPool = errors.New("rtpbridge: invalid pool configuration")

	// ErrPoolClosed is returned by Allocate after Pool.Close (and so after
	// Bridge.Close).
	ErrPoolClosed = errors.New("rtpbridge: pool closed")

	// ErrNotValidated is returned by a Pool that is used before Validate.
	ErrNotValidated = errors.New("rtpbridge: pool not validated")

	// ErrNotUDPConn is returned when an injected ListenPacket yields a
	// net.PacketConn that is not a *net.UDPConn, which the allocation-free
	// packet path needs.
	ErrNotUDPConn = errors.New("rtpbridge: ListenPacket did not return a *net.UDPConn")

	// ErrInvalidConfig is wrapped by New for a bad Config.
	ErrInvalidConfig = errors.New("rtpbridge: invalid configuration")

	// ErrInvalidLeg is returned for a Leg other than LegA or LegB.
	ErrInvalidLeg = errors.New("rtpbridge: invalid leg")

	// ErrSessionClosed is returned by methods of a closed Session.
	ErrSessionClosed = errors.New("rtpbridge: session closed")

	// ErrBridgeClosed is returned by NewSession after Bridge.Close.
	ErrBridgeClosed = errors.New("rtpbridge: bridge closed")
)
