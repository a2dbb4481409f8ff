package rtpbridge

import (
	"fmt"
	"net/netip"
	"time"
)

// Latching is the rule that decides which sources a leg accepts media from
// before and after it has latched. Whatever the rule, nothing is accepted
// before the SIP layer has set the leg's SDP address, a latched source is
// only replaced once it has been silent for Config.RelatchAfter, and a
// burst or a new SSRC alone never moves the latch: RTP bleed (an attacker
// spraying the pool while calls are set up, or injecting short bursts while
// both ends talk) must not be able to steal the stream.
type Latching uint8

const (
	// LatchDefault takes the Bridge's rule for the leg (Config.Latching).
	LatchDefault Latching = iota
	// LatchStrict accepts only the exact SDP address (IP and port). Right
	// where the SDP is known to be exact, as a PBX's on the LAN is.
	LatchStrict
	// LatchIP accepts the SDP's IP from any port: a NAT in front of the
	// peer, or a router-granted mapping under symmetric NAT, may rewrite the
	// source port (shared/notes/nat-findings.md, finding 12), but not the
	// address its SBC or media server advertises.
	LatchIP
	// LatchAny accepts any source before the first packet, and after the
	// silence interval: classic symmetric-RTP latching for peers behind a
	// NAT whose SDP carries an address they are not reachable at. It stays
	// open to a sprayer that is faster than the peer, so use it only for
	// such peers.
	LatchAny
)

// Default rules. The Internet side talks to provider SBCs and media
// servers, which advertise their public IP; only the port may be rewritten
// by NATs on the way, so LatchIP keeps their audio while refusing every
// other host. The LAN side talks to the PBX, whose SDP address is exact
// (no NAT between it and us), so LatchStrict also refuses other processes
// and spoofed ports on the PBX's own address.
const (
	DefaultWANLatching = LatchIP
	DefaultLANLatching = LatchStrict
)

// DefaultRelatchAfter is how long a latched source must have been silent
// before another accepted source may replace it. Live audio sends every
// 20-60 ms, and network hiccups or jitter-buffer stalls stay well below a
// second, so a live stream is never mistaken for a dead one; a genuine move
// (the peer's NAT mapping changed, a transfer to another media server)
// loses about this much audio once. Longer would lengthen that gap, shorter
// would let an injector take over during ordinary pauses.
const DefaultRelatchAfter = time.Second

// rtcpRelatchAfter is the least silence before an RTCP latch moves. RTCP
// is sent every 5 s with a random factor of 0.5-1.5 (RFC 3550 §6.3.1), so a
// live RTCP peer is silent for up to 7.5 s between reports.
const rtcpRelatchAfter = 12 * time.Second

// ParseLatching reads the config values "strict", "ip" and "any"; "" is
// LatchDefault.
func ParseLatching(s string) (Latching, error) {
	switch s {
	case "":
		return LatchDefault, nil
	case "strict":
		return LatchStrict, nil
	case "ip":
		return LatchIP, nil
	case "any":
		return LatchAny, nil
	}
	return LatchDefault, fmt.Errorf("%w: latching %q, want strict, ip or any", ErrInvalidConfig, s)
}

func (l Latching) String() string {
	switch l {
	case LatchDefault:
		return "default"
	case LatchStrict:
		return "strict"
	case LatchIP:
		return "ip"
	case LatchAny:
		return "any"
	}
	return "invalid"
}

func (l Latching) valid() bool { return l <= LatchAny }

// allows reports whether the rule accepts src as a source for a leg whose
// SDP address is sdp.
func (l Latching) allows(src, sdp netip.AddrPort) bool {
	switch l {
	case LatchStrict:
		return src == sdp
	case LatchAny:
		return true
	default:
		return src.Addr() == sdp.Addr()
	}
}

// SessionOptions are per-call settings; the zero value takes the Config's.
type SessionOptions struct {
	// Latching overrides the rule of each leg, indexed by Leg; the SIP
	// layer sets leg B's per trunk. LatchDefault keeps Config.Latching.
	Latching [2]Latching
}

// limiter lets one log line through per interval and counts the rest, so
// a flood cannot flood the log. Each socket of each session has its own
// limiter per kind of event, so one call's flood cannot use up another's
// budget, nor a flood of refusals hide the takeover that follows it. It is
// owned by the socket's reader goroutine.
type limiter struct {
	last  int64 // ns since the session epoch; 0: never
	quiet int   // suppressed since last
}

// allow is checked before building log fields, which allocate.
func (l *limiter) allow(now int64, every time.Duration) bool {
	if l.last != 0 && now-l.last < int64(every) {
		l.quiet++
		return false
	}
	l.last = max(now, 1)
	return true
}

// suppressed returns the count of suppressed lines and resets it.
func (l *limiter) suppressed() int {
	n := l.quiet
	l.quiet = 0
	return n
}
