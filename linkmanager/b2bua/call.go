package b2bua

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/sdp"
	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// DefaultRingTimeout bounds how long a call may ring: sipgo's Timer B
// stops at the first 1xx, so nothing else would.
const DefaultRingTimeout = 120 * time.Second

const byeTimeout = 4 * time.Second

// cancelTimeout bounds a CANCEL's transaction: Timer F would be 32 s.
const cancelTimeout = 8 * time.Second

// DefaultHopTimeout is how long an INVITE waits for any answer, even a
// 100, before the next hop gets it. sipgo's Timer B would wait 32 s; a
// live proxy answers within one or two retransmissions (T1 = 500 ms).
const DefaultHopTimeout = 4 * time.Second

// side is one network the B2BUA talks to: the LAN (PBX) or the Internet
// (providers). Each has its own socket, sipgo client and addresses.
type side struct {
	name   string // "pbx" or "provider", for logs
	leg    rtpbridge.Leg
	client *sipgo.Client
	// contact is what we write into Via and Contact on this side: the
	// public address on the Internet side.
	contact func() netip.AddrPort
	// trusts is who the peer's route set and Contact may send our
	// in-dialog requests to (where); nil: only the dialog's first hop.
	trusts func(netip.Addr) bool
	hops   *nextHops
}

// dialog is our half of one SIP dialog on one side. The INVITE handler,
// BYE, re-INVITE and stray-2xx handlers of one call run on different
// goroutines, so the fields that change after creation are behind mu.
type dialog struct {
	side     *side
	callID   string
	localTag string
	local    sip.Uri // our From (UAC) / To (UAS) address
	remote   sip.Uri
	// dst is where the initial INVITE went (the trunk's next hop, the
	// PBX) or came from: in-dialog requests go there when the route set
	// or remote target points somewhere the side does not trust.
	dst netip.AddrPort

	mu        sync.Mutex
	remoteTag string       // guarded by mu
	target    sip.Uri      // guarded by mu; the peer's Contact
	routes    []sip.Uri    // guarded by mu; route set, in the order to put into Route
	cseq      uint32       // guarded by mu; our last CSeq on this dialog
	version   uint64       // guarded by mu; o= version of the SDP we send on this side
	lastAck   *sip.Request // guarded by mu; resent when the peer retransmits its 2xx
	lastSDP   []byte       // guarded by mu; the SDP we last sent on this leg
	dropped   bool         // guarded by mu; a fork we ACKed only to hang it up
	rseq      uint32       // guarded by mu; the last reliable provisional we PRACKed (RFC 3262)
}

// offerVersion is the o= version of the next offer we send on this leg:
// one above the last SDP we sent (RFC 3264 §8). It changes nothing: the
// offer counts only once its answer commits it.
func (d *dialog) offerVersion() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.version + 1
}

// commit records SDP we sent on this leg, with its o= version, once it
// counts: an answer as we send it, an offer once the peer accepted it. A
// refused offer is never committed, so the dialog stays as it was.
func (d *dialog) commit(body []byte, version uint64) []byte {
	if body != nil {
		d.mu.Lock()
		d.lastSDP, d.version = body, version
		d.mu.Unlock()
	}
	return body
}

// sent is the SDP we last sent on this leg and its o= version.
func (d *dialog) sent() ([]byte, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastSDP, d.version
}

// sdp is the SDP we last sent on this leg.
func (d *dialog) sdp() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastSDP
}

// confirmed reports whether the peer answered (a To tag): only then can
// we send it in-dialog requests.
func (d *dialog) confirmed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.remoteTag != ""
}

// dialogID identifies a dialog: Call-ID and both tags (RFC 3261 §12).
type dialogID struct{ callID, local, remote string }

func (d *dialog) id() dialogID {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dialogID{callID: d.callID, local: d.localTag, remote: d.remoteTag}
}

// forkFor is the dialog of our INVITE with the peer that answered with
// tag: a forking proxy brings one per callee (RFC 3261 §12.1.2), each
// with its own tag, target and route set. It starts from the INVITE's
// state: CSeq, and the SDP we sent.
func (d *dialog) forkFor(tag string) *dialog {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &dialog{side: d.side, callID: d.callID, localTag: d.localTag, local: d.local, remote: d.remote,
		dst: d.dst, remoteTag: tag, target: d.target, routes: d.routes, cseq: d.cseq, version: d.version,
		lastSDP: d.lastSDP}
}

// call is one bridged call: a dialog on each side and a media session.
type call struct {
	id    string // the first leg's Call-ID, used in logs
	dir   string // "outbound" (PBX to provider) or "inbound"
	trunk string
	from  string // caller's number, as received
	to    string // callee's number, as sent on
	codec string // of the answer's first format; guarded by mu
	// offerHeld: the last offer put the call on hold; guarded by mu. An
	// answer cannot take a hold back (a recvonly answer to a sendonly
	// offer is still a hold).
	offerHeld bool
	log       *zap.Logger
	media     Session
	index     int // relayed m-line; guarded by mu (a delayed offer sets it late)
	start     time.Time
	answer    time.Time

	done      chan struct{} // closed by finish
	abort     chan struct{} // closed by hangup while the INVITE handler still owns the call
	abortOnce sync.Once

	uac rtpbridge.Leg // the leg of our INVITE
	// offered is the leg our initial offer went out on: the UAC leg, or
	// with a delayed offer the caller's, in our 2xx; guarded by mu.
	offered rtpbridge.Leg

	mu sync.Mutex
	// legs are the call's two dialogs, by rtpbridge.Leg; guarded by mu.
	// On the UAC leg it is the INVITE's until a 2xx picks a fork.
	legs  [2]*dialog
	forks map[string]*dialog // guarded by mu; the UAC leg's dialogs by remote tag
	onEnd []func()           // guarded by mu; run once by finish, before the call-ended event
	ended bool               // guarded by mu
	// setup: the INVITE handler owns the call until it has answered it
	// or ended it; abortReason is why hangup told it to give up.
	setup       bool   // guarded by mu
	abortReason string // guarded by mu
	// holding: the callee has answered and our 2xx to the caller waits
	// for its PRACK (holdAnswer); the caller's dialog is still early.
	holding bool // guarded by mu
	// remoteSends: the last SDP from each leg's remote says it sends RTP;
	// natRepaired: repairNAT ran, natMoved: its re-INVITE was accepted.
	remoteSends [2]bool // guarded by mu
	natRepaired bool    // guarded by mu
	natMoved    bool    // guarded by mu
	// offers is the offer/answer exchange under way on each leg: one at
	// a time per dialog (RFC 3264 §4); acks are the ACKs our 2xx
	// responses wait for. Both guarded by mu.
	offers [2]exchange
	acks   map[ackKey]chan *sip.Request
	// rel sends our provisionals to the caller reliably (reliable.go);
	// nil: the caller asked for none. Set before the call is tracked.
	rel *reliable
}

// setupDone hands the answered call from the INVITE handler to hangup.
func (c *call) setupDone() {
	c.mu.Lock()
	c.setup = false
	c.mu.Unlock()
	if c.rel != nil {
		c.rel.stop()
	}
}

// fork returns the UAC leg's dialog for the tag of res (a 1xx or 2xx to
// our INVITE), made on first sight, with what res says of target and
// route set; nil for a response without a tag.
func (c *call) fork(res *sip.Response) *dialog {
	tag := sipmsg.Tag(res.To())
	if tag == "" {
		return nil
	}
	c.mu.Lock()
	d, ok := c.forks[tag]
	if !ok {
		d = c.legs[c.uac].forkFor(tag)
		c.forks[tag] = d
	}
	c.mu.Unlock()
	d.learnTarget(res, true)
	return d
}

// answered makes the fork d the call's dialog on the UAC leg.
func (c *call) answered(d *dialog) {
	c.mu.Lock()
	c.legs[c.uac] = d
	c.mu.Unlock()
}

// dialogFor finds the dialog a response to our INVITE belongs to: one of
// the legs, or a fork of the UAC leg (extra: not the one the call took),
// made now if res is the first we hear of it. Nil when none fits.
func (c *call) dialogFor(id dialogID, res *sip.Response) (d *dialog, extra bool) {
	c.mu.Lock()
	for _, l := range c.legs {
		if l != nil && l.id() == id {
			c.mu.Unlock()
			return l, false
		}
	}
	uac := c.legs[c.uac]
	c.mu.Unlock()
	// Only once a 2xx picked a fork is another one extra: before, the
	// INVITE's transaction has the response, and a retransmission will
	// follow.
	if uac == nil || id.remote == "" || !uac.confirmed() || uac.callID != id.callID || uac.localTag != id.local {
		return nil, false
	}
	return c.fork(res), true
}

// legOf is the call's dialog on leg.
func (c *call) legOf(leg rtpbridge.Leg) *dialog {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.legs[leg]
}

// other returns the dialog on the far side of d.
func (c *call) other(leg rtpbridge.Leg) *dialog {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.legs[1-leg]
}

// bridgeParams says where the new leg's INVITE goes.
type bridgeParams struct {
	to        *side
	ruri      sip.Uri
	from, at  sip.Uri      // From and To of the new leg
	headers   []sip.Header // added to the new leg's INVITE (identity.go)
	dst       netip.AddrPort
	alt       []netip.AddrPort     // next hops for failover, in order
	hopFailed func(netip.AddrPort) // told of a hop that failed; may be nil
	user      string               // digest credentials for the new leg; empty: none
	pass      string
	trunk     string
	dir       string
	latch     rtpbridge.Latching // the trunk's rtp_latching, for the Internet leg
	// emergency calls go out while draining too (policy.Emergency).
	emergency bool
	// onEnd runs when the call ends, before the call-ended event: what it
	// held in the admission counters (it must be idempotent; the caller
	// runs it too if the call never got set up).
	onEnd func()
}

// bridge handles an initial INVITE that arrived on in: it builds the
// other leg, relays provisional and final responses, and returns once the
// incoming transaction has a final response (sipgo requires the handler to
// block until then).
func (b *B2BUA) bridge(in *side, req *sip.Request, tx sip.ServerTransaction, p bridgeParams) {
	tx = guardInvite(tx, req)
	callID := req.CallID().Value()
	log := b.log.With(zap.String("call_id", callID), zap.String("trunk", p.trunk), zap.String("direction", p.dir))
	if b.refuseUnsupported(tx, req, nil) {
		return
	}
	if b.draining() && !p.emergency {
		log.Info("call refused: shutting down")
		b.reply(tx, req, nil, sip.StatusServiceUnavailable, "Service Unavailable", nil, sip.NewHeader("Retry-After", "60"))
		return
	}
	// An INVITE without SDP is a delayed offer (RFC 3261 §13.2.1): it
	// goes on without SDP, the offer comes in the 2xx and the answer in
	// the ACK (delayedAnswer).
	var offer *sdp.Session
	idx := 0
	reqSDP := sdpBody(req)
	if len(reqSDP) > 0 {
		var err error
		if offer, err = sdp.Parse(reqSDP); err != nil {
			log.Info("call refused: unusable SDP offer", zap.Error(err))
			code, reason := statusFor(err)
			b.reply(tx, req, nil, code, reason, nil)
			return
		}
		var ok bool
		if idx, ok = relayable(offer); !ok {
			b.reply(tx, req, nil, sip.StatusNotAcceptableHere, "Not Acceptable Here", nil)
			return
		}
	}
	media, err := b.media.NewSession(callID, p.latch)
	if err != nil {
		log.Warn("call refused: no relay ports", zap.Error(err))
		code, reason := statusFor(err)
		b.reply(tx, req, nil, code, reason, nil, sip.NewHeader("Retry-After", "30"))
		return
	}
	c := &call{id: callID, dir: p.dir, trunk: p.trunk, log: log, media: media, index: idx, start: time.Now(),
		from: req.From().Address.User, to: p.at.User,
		acks: map[ackKey]chan *sip.Request{}, done: make(chan struct{}), abort: make(chan struct{}), uac: p.to.leg, offered: p.to.leg,
		forks: map[string]*dialog{}, setup: true}
	if p.onEnd != nil {
		c.onEnd = append(c.onEnd, p.onEnd)
	}
	in_ := uasDialog(in, req)
	c.legs[in.leg] = in_
	c.rel = b.reliableFor(c, tx, req, in_)
	out := &dialog{side: p.to, callID: sip.GenerateTagN(24) + "@linkmanager", localTag: sip.GenerateTagN(12),
		local: p.from, remote: p.at, target: p.ruri, dst: p.dst}
	var outSDP []byte
	if offer != nil {
		if err := c.applyOffer(in.leg, offer); err != nil {
			log.Warn("bad media address in offer", zap.Error(err))
		}
		// The initial offer is committed as it leaves: there is no
		// earlier state to go back to, and every fork starts from it.
		var version uint64
		if outSDP, version, err = b.rewrite(c, out, reqSDP); err != nil {
			b.finish(c, "sdp rewrite failed: "+err.Error())
			code, reason := statusFor(err)
			b.reply(tx, req, in_, code, reason, nil)
			return
		}
		out.commit(outSDP, version)
	}
	b.reply(tx, req, in_, sip.StatusTrying, "Trying", nil)
	c.legs[p.to.leg] = out
	if !b.track(c) {
		log.Info("call refused: shutting down")
		b.finish(c, "shutdown")
		b.reply(tx, req, in_, sip.StatusServiceUnavailable, "Service Unavailable", nil, sip.NewHeader("Retry-After", "60"))
		return
	}

	cancelled := make(chan struct{})
	var once sync.Once
	tx.OnCancel(func(*sip.Request) { once.Do(func() { close(cancelled) }) })

	invite := out.newRequest(sip.INVITE, outSDP)
	if offer != nil {
		// We PRACK the callee's reliable provisionals (prack.go) and take
		// their SDP as the early answer. To a delayed offer a reliable 1xx
		// would carry the callee's offer, whose answer belongs in our
		// PRACK (RFC 3262 §5), and we do not build one: a callee that sees
		// 100rel offered may send it so and then fail the call for want
		// of that answer, so there 100rel is not offered.
		invite.AppendHeader(sip.NewHeader("Supported", sipmsg.Supported))
	}
	for _, h := range p.headers {
		invite.AppendHeader(h)
	}
	ring := time.NewTimer(b.ringTimeout)
	defer ring.Stop()
	// Tied to the B2BUA's base context, not the handler's: a CANCEL or
	// a late 2xx must still be handled after the caller is gone.
	octx, ocancel := context.WithCancel(b.ctx)
	defer ocancel()

	otx, err := b.send(octx, out, invite)
	if err != nil {
		b.finish(c, "invite send failed: "+err.Error())
		code, reason := sendStatus(err)
		b.reply(tx, req, in_, code, reason, nil)
		return
	}
	authed := false
	// RFC 3263 §4.3 failover: until a hop answers at all, hopTimer
	// runs; until it rings (a 1xx other than 100), a 408 or 503 from it,
	// or its transaction's end, moves the INVITE to the next hop.
	hopTimer := time.NewTimer(b.hopTimeout)
	defer hopTimer.Stop()
	answered, ringing := false, false
	// failover reports the hop as failed and, if another is left and the
	// call still wants one, sends the INVITE there: a new transaction
	// with the next CSeq, on the same dialog.
	failover := func(why string) (bool, error) {
		if p.hopFailed != nil {
			p.hopFailed(out.dst)
		}
		if ringing || cancelled == nil || len(p.alt) == 0 {
			return false, nil
		}
		log.Info("next hop for the call", zap.Stringer("failed", out.dst), zap.Stringer("next", p.alt[0]), zap.String("why", why))
		out.retarget(p.alt[0])
		p.alt = p.alt[1:]
		invite = out.resend(invite)
		otx.Terminate()
		var err error
		if otx, err = b.send(octx, out, invite); err != nil {
			return false, err
		}
		answered, authed = false, false
		hopTimer.Reset(b.hopTimeout)
		return true, nil
	}
	sendFailed := func(err error) {
		b.finish(c, "invite send failed: "+err.Error())
		code, reason := sendStatus(err)
		b.reply(tx, req, in_, code, reason, nil)
	}
	for {
		select {
		case <-hopTimer.C:
			if answered {
				continue
			}
			// No alternative: keep waiting for sipgo's Timer B.
			if _, err := failover("no answer"); err != nil {
				sendFailed(err)
				return
			}
			continue
		case <-cancelled:
			// sipgo already answered the CANCEL with 200 and the INVITE
			// with 487; pass the CANCEL on and wait for the far side's
			// final answer, which ends the loop.
			b.cancel(out, invite)
			cancelled = nil
			continue
		case <-c.abort:
			// Shutdown (or a media timeout) while ringing: the callee
			// gets a CANCEL, the caller a 503; neither dialog is
			// confirmed, so no BYE.
			c.mu.Lock()
			reason := c.abortReason
			c.mu.Unlock()
			log.Info("call abandoned while ringing", zap.String("reason", reason))
			b.cancel(out, invite)
			b.reply(tx, req, in_, sip.StatusServiceUnavailable, "Service Unavailable", nil, sip.NewHeader("Retry-After", "60"))
			b.awaitCancelled(c, otx, out, invite)
			b.finish(c, reason)
			return
		case <-ring.C:
			log.Info("ring timeout", zap.Duration("after", b.ringTimeout))
			b.cancel(out, invite)
			b.reply(tx, req, in_, sip.StatusRequestTimeout, "Request Timeout", nil)
			b.awaitCancelled(c, otx, out, invite)
			b.finish(c, "ring timeout")
			return
		case <-otx.Done():
			if !answered {
				if moved, err := failover("transaction ended"); err != nil {
					sendFailed(err)
					return
				} else if moved {
					continue
				}
			}
			b.finish(c, "no answer from "+out.side.name)
			b.reply(tx, req, in_, sip.StatusRequestTimeout, "Request Timeout", nil)
			return
		case res := <-otx.Responses():
			code := int(res.StatusCode)
			answered = true
			if (code == 408 || code == 503) && !ringing {
				if moved, err := failover(fmt.Sprintf("%d %s", code, res.Reason)); err != nil {
					sendFailed(err)
					return
				} else if moved {
					continue
				}
			}
			switch {
			case code == 100:
			case code < 200 && offer == nil:
				// SDP in an unreliable 1xx to a delayed offer is not an
				// offer we can answer (RFC 3261 §13.2.1): relay the state.
				// A callee that sends it reliably all the same gets its
				// PRACK, or it would resend it and fail the call.
				if b.prack(c, c.fork(res), res) {
					continue
				}
				b.provisional(c, tx, req, in_, code, res.Reason, nil)
			case code < 200:
				ringing = true
				if b.prack(c, c.fork(res), res) {
					continue
				}
				body, err := b.answerSDP(c, in_, p.to.leg, sdpBody(res))
				if err != nil {
					log.Info("dropping SDP of provisional response", zap.Error(err))
				}
				b.provisional(c, tx, req, in_, code, res.Reason, body)
			case code < 300:
				if d := c.fork(res); d != nil {
					out = d
					c.answered(out)
				}
				if offer == nil {
					otx.Terminate()
					select {
					case <-cancelled:
						cancelled = nil
					default:
					}
					b.delayedAnswer(c, tx, req, in_, out, invite.CSeq().SeqNo, res, cancelled == nil)
					return
				}
				// Point the relay at the answerer, which sends the pinhole
				// packet, before the ACK: the callee may start sending the
				// instant our ACK reaches it, and if its RTP reaches the
				// NAT first the router gives our port to that flow
				// (nat-findings.md, finding 4).
				body, sdpErr := b.answerSDP(c, in_, p.to.leg, sdpBody(res))
				b.ack(out, invite.CSeq().SeqNo, nil)
				// sipgo keeps the transaction for 32 s and swallows 2xx
				// retransmissions; ended, they reach onStrayResponse,
				// which sends our ACK again.
				otx.Terminate()
				select {
				case <-cancelled:
					// The CANCEL and this 2xx arrived together.
					cancelled = nil
				default:
				}
				if cancelled == nil {
					// The far side answered while our CANCEL was on its
					// way: the caller is gone, so hang up at once.
					b.bye(out)
					b.finish(c, "answered after cancel")
					return
				}
				if sdpErr != nil {
					log.Warn("bad SDP in answer", zap.Error(sdpErr))
					b.bye(out)
					b.finish(c, "bad answer SDP")
					b.reply(tx, req, in_, sip.StatusNotAcceptableHere, "Not Acceptable Here", nil)
					return
				}
				if !b.holdAnswer(c, tx, req, in_, out, cancelled) {
					return
				}
				c.mu.Lock()
				c.answer = time.Now()
				c.mu.Unlock()
				c.setupDone()
				media.Established()
				acked := c.expectAck(in.leg, req.CSeq().SeqNo)
				ok := b.reply(tx, req, in_, sip.StatusOK, "OK", body)
				log.Info("call answered", zap.Duration("setup", time.Since(c.start)))
				b.goCall(func() { b.retransmitUntilAck(c, tx, ok, acked) })
				return
			case (code == 401 || code == 407) && p.user != "" && !authed:
				authed = true
				next, err := out.authorize(invite, res, p.user, p.pass)
				if err != nil {
					b.finish(c, "authentication: "+err.Error())
					b.reply(tx, req, in_, sip.StatusForbidden, "Forbidden", nil)
					return
				}
				invite = next
				otx.Terminate()
				if otx, err = b.send(octx, out, invite); err != nil {
					sendFailed(err)
					return
				}
			default:
				// Busy, not found and the rest go back as they came;
				// sipgo's transaction has already ACKed them.
				b.finish(c, fmt.Sprintf("%d %s", code, res.Reason))
				if code == 401 || code == 407 {
					code, res.Reason = sip.StatusForbidden, "Forbidden"
				}
				b.reply(tx, req, in_, code, res.Reason, nil, redirectContacts(res, in.contact())...)
				return
			}
		}
	}
}

// relayable picks the stream we relay: the first active audio or T.38
// stream. Others are declined (port 0) in what we send on.
func relayable(s *sdp.Session) (int, bool) {
	for _, m := range s.Media {
		if m.Port != 0 && (m.Kind == "audio" || m.Kind == "image") {
			return m.Index, true
		}
	}
	return 0, false
}

// held reports whether a stream is on hold in either direction: then
// silence is normal and the longer hold timeout applies.
func held(m sdp.Media) bool {
	return m.Hold || m.Direction == "recvonly" || m.Direction == "inactive"
}

func setRemote(s Session, leg rtpbridge.Leg, m sdp.Media) error {
	// T.38 (m=image ... udptl) is relayed like audio but is not RTP.
	s.SetRaw(strings.EqualFold(m.Proto, "udptl"))
	if m.Hold && m.Addr.IsUnspecified() || m.Port == 0 {
		return s.SetRemote(leg, netip.AddrPort{}, netip.AddrPort{})
	}
	rtcp := m.RTCP
	if m.RTCPMux || !rtcp.IsValid() {
		rtcp = netip.AddrPortFrom(m.Addr, uint16(m.Port+1))
	}
	return s.SetRemote(leg, netip.AddrPortFrom(m.Addr, uint16(m.Port)), rtcp)
}

// rewrite turns an SDP body from one side into what we send on dialog
// d: our address on d's side and our relay port for its leg, with the
// o= version of d's next offer, unless the result is what we last sent
// there: a description sent again unchanged (a repeated 18x, a session
// refresh) keeps its version (RFC 3264 §8), since a peer may take a new
// version for a media change. Nothing is recorded: the caller commits
// the result when it counts.
func (b *B2BUA) rewrite(c *call, d *dialog, body []byte) ([]byte, uint64, error) {
	s, err := sdp.Parse(body)
	if err != nil {
		return nil, 0, err
	}
	ports := make(map[int]int, len(s.Media))
	for _, m := range s.Media {
		ports[m.Index] = 0
	}
	if m, ok := c.stream(s); ok && m.Port != 0 {
		ports[m.Index] = int(c.media.LocalPort(d.side.leg))
	}
	addr := d.side.contact().Addr()
	if last, version := d.sent(); last != nil {
		if out, err := sdp.Rewrite(body, addr, ports, version); err == nil && bytes.Equal(out, last) {
			return out, version, nil
		}
	}
	version := d.offerVersion()
	out, err := sdp.Rewrite(body, addr, ports, version)
	return out, version, err
}

// stream is the relayed m-line of s.
func (c *call) stream(s *sdp.Session) (sdp.Media, bool) {
	c.mu.Lock()
	i := c.index
	c.mu.Unlock()
	if i >= len(s.Media) {
		return sdp.Media{}, false
	}
	return s.Media[i], true
}

// applyOffer points the relay at what the remote on leg offered, once
// the offer is committed (the initial one at once, a re-offer when it is
// answered).
func (c *call) applyOffer(leg rtpbridge.Leg, s *sdp.Session) error {
	m, ok := c.stream(s)
	if !ok {
		return nil
	}
	err := setRemote(c.media, leg, m)
	c.noteRemote(leg, m)
	c.mu.Lock()
	c.offerHeld = held(m)
	c.mu.Unlock()
	return err
}

// answerSDP takes an SDP answer from leg `from` for dialog to: it points
// the relay at the answerer and returns the body rewritten for to,
// committed there (an answer counts as it is sent). An empty body stays
// empty.
func (b *B2BUA) answerSDP(c *call, to *dialog, from rtpbridge.Leg, body []byte) ([]byte, error) {
	if len(body) == 0 {
		return nil, nil
	}
	s, err := sdp.Parse(body)
	if err != nil {
		return nil, err
	}
	if err := c.takeAnswer(from, s); err != nil {
		return nil, err
	}
	out, version, err := b.rewrite(c, to, body)
	if err != nil {
		return nil, err
	}
	return to.commit(out, version), nil
}

// takeAnswer points the relay at the answerer on leg and sets the hold
// state the exchange ends in.
func (c *call) takeAnswer(leg rtpbridge.Leg, s *sdp.Session) error {
	m, ok := c.stream(s)
	if !ok {
		return nil
	}
	if f := m.Formats; len(f) > 0 {
		c.mu.Lock()
		c.codec = codecName(f[0])
		c.mu.Unlock()
	}
	// The pinhole packet leaves inside SetRemote, before the answer is
	// passed on: the remote cannot have started sending yet.
	if err := setRemote(c.media, leg, m); err != nil {
		return err
	}
	c.noteRemote(leg, m)
	c.mu.Lock()
	hold := c.offerHeld || held(m)
	c.mu.Unlock()
	c.media.SetHold(hold)
	return nil
}

// uasDialog records the dialog an incoming INVITE opens.
func uasDialog(s *side, req *sip.Request) *dialog {
	d := &dialog{side: s, callID: req.CallID().Value(), localTag: sip.GenerateTagN(12),
		remoteTag: sipmsg.Tag(req.From()), local: req.To().Address, remote: req.From().Address}
	if c := req.Contact(); c != nil {
		d.target = c.Address
	}
	// Record-Route as received is the route set in order for a UAS.
	for _, h := range req.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			d.routes = append(d.routes, rr.Address)
		}
	}
	if src, err := netip.ParseAddrPort(req.Source()); err == nil {
		d.dst = src
	}
	return d
}

// learnTarget records the peer's Contact and, for a UAC, the route set
// (Record-Route reversed).
func (d *dialog) learnTarget(res *sip.Response, uac bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := res.Contact(); c != nil {
		d.target = c.Address
	}
	var routes []sip.Uri
	for _, h := range res.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			routes = append(routes, rr.Address)
		}
	}
	if uac {
		for i, j := 0, len(routes)-1; i < j; i, j = i+1, j-1 {
			routes[i], routes[j] = routes[j], routes[i]
		}
	}
	d.routes = routes
}

// newRequest builds a request on this dialog from scratch: nothing from
// the other leg is copied, so no header of one side leaks to the other.
// Before the peer answered (our initial INVITE) it goes to dst; in the
// dialog, where the route set and remote target say (routing, where).
func (d *dialog) newRequest(method sip.RequestMethod, body []byte) *sip.Request {
	d.mu.Lock()
	ruri, routes, hop := d.routing()
	req := sip.NewRequest(method, ruri)
	req.AppendHeader(sipmsg.NewVia(d.side.contact()))
	for _, r := range routes {
		req.AppendHeader(&sip.RouteHeader{Address: r})
	}
	req.AppendHeader(&sip.FromHeader{Address: d.local, Params: sipmsg.Params("tag", d.localTag)})
	to := &sip.ToHeader{Address: d.remote, Params: sip.NewParams()}
	if d.remoteTag != "" {
		to.Params.Add("tag", d.remoteTag)
	}
	req.AppendHeader(to)
	cid := sip.CallIDHeader(d.callID)
	req.AppendHeader(&cid)
	if method != sip.ACK && method != sip.CANCEL {
		d.cseq++
	}
	req.AppendHeader(&sip.CSeqHeader{SeqNo: d.cseq, MethodName: method})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	if method == sip.INVITE || method == sip.UPDATE {
		// RFC 3311 §7: UPDATE is a target refresh and carries Contact.
		req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: d.local.User,
			Host: d.side.contact().Addr().String(), Port: int(d.side.contact().Port())}})
	}
	if method == sip.INVITE {
		req.AppendHeader(sip.NewHeader("Allow", sipmsg.Allowed))
	}
	if body != nil {
		req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	}
	req.SetBody(body)
	dst, inDialog := d.dst, d.remoteTag != ""
	d.mu.Unlock()
	// Outside d.mu: where may look the hop up in DNS.
	if inDialog {
		dst = d.side.where(hop, dst)
	}
	req.SetDestination(dst.String())
	return req
}

// authorize answers a 401/407 to an INVITE with a copy carrying
// credentials, a new branch and the next CSeq.
func (d *dialog) authorize(req *sip.Request, res *sip.Response, user, pass string) (*sip.Request, error) {
	chal, hdr, err := sipmsg.Challenge(res)
	if err != nil {
		return nil, err
	}
	cred, err := digest.Digest(chal, digest.Options{Method: string(req.Method), URI: req.Recipient.String(),
		Username: user, Password: pass})
	if err != nil {
		return nil, err
	}
	next := d.resend(req)
	next.RemoveHeader(hdr)
	next.AppendHeader(sip.NewHeader(hdr, cred.String()))
	return next, nil
}

// retarget points the dialog's requests at dst: the INVITE moved to
// another hop before any dialog state came back.
func (d *dialog) retarget(dst netip.AddrPort) {
	d.mu.Lock()
	d.dst = dst
	d.mu.Unlock()
}

// resend is req for the dialog's current hop: a new transaction (new
// Via branch) with the next CSeq (RFC 3263 §4.3: a new request to the
// next server, not a retransmission).
func (d *dialog) resend(req *sip.Request) *sip.Request {
	next := req.Clone()
	next.RemoveHeader("Via")
	next.PrependHeader(sipmsg.NewVia(d.side.contact()))
	d.mu.Lock()
	d.cseq++
	next.CSeq().SeqNo = d.cseq
	dst := d.dst
	d.mu.Unlock()
	next.SetDestination(dst.String())
	return next
}

// send starts a client transaction from this side's socket.
func (b *B2BUA) send(ctx context.Context, d *dialog, req *sip.Request) (sip.ClientTransaction, error) {
	return d.side.client.TransactionRequest(ctx, req, sipgo.ClientRequestBuild)
}

// ack confirms a 2xx to the INVITE with CSeq number cseq (RFC 3261
// §13.2.2.4): end to end, so it is ours to send, to the target the 2xx
// named. body is the answer when the 2xx carried an offer.
func (b *B2BUA) ack(d *dialog, cseq uint32, body []byte) {
	ack := d.newRequest(sip.ACK, body)
	ack.CSeq().SeqNo = cseq
	d.mu.Lock()
	d.lastAck = ack
	d.mu.Unlock()
	if err := d.side.client.WriteRequest(ack, sipgo.ClientRequestBuild); err != nil {
		b.log.Warn("ack failed", zap.String("call_id", d.callID), zap.Error(err))
	}
}

// cancel sends CANCEL for our pending INVITE (RFC 3261 §9.1): same branch,
// same CSeq number.
func (b *B2BUA) cancel(d *dialog, invite *sip.Request) {
	req := sip.NewRequest(sip.CANCEL, invite.Recipient)
	req.AppendHeader(invite.Via().Clone())
	for _, h := range invite.GetHeaders("Route") {
		req.AppendHeader(h)
	}
	req.AppendHeader(invite.From())
	req.AppendHeader(invite.To())
	req.AppendHeader(invite.CallID())
	req.AppendHeader(&sip.CSeqHeader{SeqNo: invite.CSeq().SeqNo, MethodName: sip.CANCEL})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.SetBody(nil)
	req.SetDestination(invite.Destination())
	// CANCEL's transaction is bounded and owned: HangupAll waits for it,
	// and one that comes after HangupAll has stopped taking background
	// work runs here, so no CANCEL is lost at shutdown.
	send := func() {
		ctx, stop := context.WithTimeout(b.ctx, cancelTimeout)
		defer stop()
		if _, err := d.side.client.Do(ctx, req, sipgo.ClientRequestBuild); err != nil {
			b.log.Debug("cancel unanswered", zap.String("call_id", d.callID), zap.Error(err))
		}
	}
	if !b.goCall(send) {
		send()
	}
}

// awaitCancelled waits briefly for the final answer to a cancelled
// INVITE, hanging up if it was a 2xx that crossed our CANCEL.
func (b *B2BUA) awaitCancelled(c *call, tx sip.ClientTransaction, d *dialog, invite *sip.Request) {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return
		case <-b.ctx.Done():
			return
		case <-tx.Done():
			return
		case res := <-tx.Responses():
			if res.StatusCode >= 200 && res.StatusCode < 300 {
				if f := c.fork(res); f != nil {
					d = f
				}
				b.ack(d, invite.CSeq().SeqNo, nil)
				b.bye(d)
				return
			}
			if res.StatusCode >= 300 {
				return
			}
		}
	}
}

// bye hangs up one dialog. It waits at most byeTimeout (four
// retransmissions) for the answer: on shutdown the stop budget is the
// grace period plus this plus the unregister, inside systemd's
// TimeoutStopSec.
func (b *B2BUA) bye(d *dialog) {
	req := d.newRequest(sip.BYE, nil)
	ctx, stop := context.WithTimeout(b.ctx, b.byeTimeout)
	defer stop()
	if _, err := d.side.client.Do(ctx, req, sipgo.ClientRequestBuild); err != nil {
		b.log.Debug("bye unanswered", zap.String("call_id", d.callID), zap.Error(err))
	}
}

// reply answers an incoming request on dialog d (nil before we have one).
// An sdpBody among extra becomes the body.
func (b *B2BUA) reply(tx sip.ServerTransaction, req *sip.Request, d *dialog, code int, reason string, body []byte, extra ...sip.Header) *sip.Response {
	res := response(req, d, code, reason, body, extra...)
	if err := tx.Respond(res); err != nil {
		b.log.Debug("response failed", zap.Int("code", code), zap.Error(err))
	}
	return res
}

// response builds what reply sends.
func response(req *sip.Request, d *dialog, code int, reason string, body []byte, extra ...sip.Header) *sip.Response {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if d != nil && code > 100 {
		// sipgo puts a fresh random To tag on every response to a request
		// without one; the dialog's responses must all carry the tag its
		// later requests use (RFC 3261 §8.2.6.2, §12.1.1). A request in a
		// dialog already names our tag, which sipgo copied.
		if to := res.To(); to != nil && sipmsg.Tag(req.To()) == "" {
			to.Params.Add("tag", d.localTag)
		}
		if code < 300 {
			res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: d.local.User,
				Host: d.side.contact().Addr().String(), Port: int(d.side.contact().Port())}})
		}
	}
	for _, h := range extra {
		res.AppendHeader(h)
	}
	if body != nil {
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res.SetBody(body)
	}
	return res
}

// retransmitUntilAck resends our 2xx until its ACK arrives on acked
// (RFC 3261 §13.3.1.4): sipgo's server transaction does not (RFC 6026
// leaves it to us), and over UDP a lost 200 would leave the peer
// retrying while we think the exchange is over. No ACK within 64*T1
// ends the call. It returns the ACK, nil if none came.
func (b *B2BUA) retransmitUntilAck(c *call, tx sip.ServerTransaction, res *sip.Response, acked <-chan *sip.Request) *sip.Request {
	interval := sip.T1
	deadline := time.NewTimer(64 * sip.T1)
	defer deadline.Stop()
	for {
		t := time.NewTimer(interval)
		select {
		case ack := <-acked:
			t.Stop()
			return ack
		case <-c.done:
			t.Stop()
			return nil
		case <-deadline.C:
			t.Stop()
			c.log.Warn("peer never acknowledged our 2xx; hanging up", zap.Uint32("cseq", res.CSeq().SeqNo))
			b.hangup(c, "no ACK")
			return nil
		case <-t.C:
			if err := tx.Respond(res); err != nil {
				c.log.Debug("2xx retransmission failed", zap.Error(err))
			}
			interval = min(2*interval, sip.T2)
		}
	}
}
