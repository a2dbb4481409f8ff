package b2bua

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/sdp"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// reinviteTimeout bounds our own re-INVITE: Timer B's 64*T1.
const reinviteTimeout = 32 * time.Second

// sends reports whether a stream's SDP says its sender sends RTP to us:
// only then is its silence a fault rather than its choice.
func sends(m sdp.Media) bool {
	return m.Port != 0 && !m.Hold && !strings.EqualFold(m.Proto, "udptl") &&
		(m.Direction == "sendrecv" || m.Direction == "sendonly")
}

// noteRemote records what the remote on leg said of its stream.
func (c *call) noteRemote(leg rtpbridge.Leg, m sdp.Media) {
	c.mu.Lock()
	c.remoteSends[leg] = sends(m)
	c.mu.Unlock()
}

// OnNoInbound is the media's callback for a call whose Internet leg has
// heard nothing while we sent: the remote started its RTP before our
// pinhole left, and the NAT router gave our advertised public port to that
// early flow (nat-findings 3 and 4), so our stream leaves from another port
// and the remote's audio is dropped at the router for the whole call. id
// is what NewSession got.
func (b *B2BUA) OnNoInbound(id string, leg rtpbridge.Leg) {
	c, ok := b.callByID(id)
	if !ok || leg != rtpbridge.LegB {
		return
	}
	b.goCall(func() { b.repairNAT(c, leg) })
}

// repairNAT moves the leg to a fresh port pair, whose pinhole leaves
// first, and re-INVITEs the remote with the new port. Only a leg we sent
// the initial offer on can have lost the race: a call we placed there,
// or a delayed offer from the provider, whose answer comes in the ACK it
// may send together with its first RTP (on a call the provider offered,
// our pinhole leaves before our answer). Only an answered one
// has a dialog to re-INVITE on, and only a remote whose SDP says it sends
// is expected to. Once per call: a remote that stays silent after that is
// silent by choice or beyond repair.
func (b *B2BUA) repairNAT(c *call, leg rtpbridge.Leg) {
	c.mu.Lock()
	eligible := !c.ended && !c.setup && c.offered == leg && c.remoteSends[leg] && !c.offerHeld && !c.natRepaired
	if eligible {
		c.natRepaired = true
	}
	d := c.legs[leg]
	c.mu.Unlock()
	if !eligible || d == nil || !d.confirmed() {
		return
	}
	old := c.media.LocalPort(leg)
	port, err := c.media.Rebind(leg)
	if err != nil {
		c.log.Warn("media from the provider leg never arrived: NAT race lost; no port to move to", zap.Error(err))
		return
	}
	const what = "media from the provider leg never arrived: NAT race lost"
	// The answer commits the move; it is recorded before the ACK, so
	// anyone who has seen the ACK sees the call as repaired.
	moved := func() {
		c.mu.Lock()
		c.natMoved = true
		c.mu.Unlock()
	}
	if b.reinviteWith(c, d, port, what, moved) {
		c.log.Info(what+"; moved to a new port and re-INVITEd", zap.Uint16("old_port", old), zap.Uint16("port", port))
	}
}

// reinviteWith re-INVITEs d, our dialog on leg d.side.leg, with the SDP
// we last sent on it, the relayed stream on port, our current address and
// the next o= version, and takes the answer: the remote's media address
// and target. It reports whether the remote accepted; commit, if set, runs
// once the answer has committed the offer, before the ACK. what says why,
// for the log.
func (b *B2BUA) reinviteWith(c *call, d *dialog, port uint16, what string, commit func()) bool {
	leg := d.side.leg
	c.mu.Lock()
	index := c.index
	c.mu.Unlock()
	body, version, err := withPort(d, index, port)
	if err != nil {
		c.log.Warn(what+"; cannot rewrite SDP", zap.Error(err))
		return false
	}
	ctx, stop := context.WithTimeout(b.ctx, b.reinviteTimeout)
	defer stop()
	res, req, err := b.offer(ctx, c, leg, body)
	switch {
	case errors.Is(err, ErrCallEnded):
		return false
	case err != nil:
		c.log.Warn(what+"; re-INVITE got no answer", zap.Uint16("port", port), zap.Error(err))
		return false
	case res.StatusCode >= 300:
		c.log.Warn(what+"; re-INVITE refused", zap.Uint16("port", port), zap.Int("status", int(res.StatusCode)))
		return false
	}
	d.refreshTarget(res.Contact())
	d.commit(body, version)
	if s, err := sdp.Parse(sdpBody(res)); err == nil {
		if err := c.takeAnswer(leg, s); err != nil {
			c.log.Warn("bad media address in re-INVITE answer", zap.Error(err))
		}
	}
	if commit != nil {
		commit()
	}
	b.ack(d, req.CSeq().SeqNo, nil)
	return true
}

// withPort is the SDP we last sent on d with the relayed stream on port
// and the next o= version (RFC 3264 §8), which it returns; the other
// streams keep theirs.
func withPort(d *dialog, index int, port uint16) ([]byte, uint64, error) {
	body := d.sdp()
	s, err := sdp.Parse(body)
	if err != nil {
		return nil, 0, err
	}
	ports := make(map[int]int, len(s.Media))
	for _, m := range s.Media {
		ports[m.Index] = m.Port
	}
	ports[index] = int(port)
	version := d.offerVersion()
	out, err := sdp.Rewrite(body, d.side.contact().Addr(), ports, version)
	return out, version, err
}
