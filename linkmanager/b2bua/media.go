package b2bua

import (
	"net/netip"

	"github.com/linkmanager/linkmanager/rtpbridge"
)

// Media makes the relay of one call. rtpbridge.Bridge is the real one,
// through an adapter in the package that wires both.
type Media interface {
	// NewSession reserves relay ports for a call, with latching as the
	// Internet leg's source rule (zero: the relay's default); errors wrap
	// rtpbridge.ErrPoolExhausted when none are left.
	NewSession(id string, latching rtpbridge.Latching) (Session, error)
}

// Session is the relay of one call, leg A on the PBX side and leg B on
// the Internet side. *rtpbridge.Session implements it.
type Session interface {
	LocalPort(rtpbridge.Leg) uint16
	SetRemote(l rtpbridge.Leg, rtp, rtcp netip.AddrPort) error
	SetRaw(raw bool)
	SetHold(held bool)
	Established()
	// Rebind moves a leg to a fresh port pair, pinhole first, and returns
	// its RTP port.
	Rebind(rtpbridge.Leg) (uint16, error)
	Stats() rtpbridge.Stats
	Close() error
}

var _ Session = (*rtpbridge.Session)(nil)

// addDirection adds one direction's counters to a total.
func addDirection(sum *rtpbridge.Direction, d rtpbridge.Direction) {
	sum.Packets += d.Packets
	sum.Bytes += d.Bytes
	sum.Foreign += d.Foreign
	sum.Refused += d.Refused
	sum.Relatched += d.Relatched
	sum.Malformed += d.Malformed
}
