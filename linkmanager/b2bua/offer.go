package b2bua

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/sdp"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// glareRetries bounds how often our own re-INVITE is sent again after a
// 491 (RFC 3261 §14.1) before we give up on it.
const glareRetries = 3

// exchange is the state of the offer/answer exchange on one leg.
type exchange uint8

const (
	idle     exchange = iota
	offerOut          // we sent an offer on the leg and await its answer
	offerIn           // the leg's peer sent an offer we have not answered
)

// refusal is how we turn down an offer that would start a second
// exchange on a leg; zero code: none.
type refusal struct {
	code   int
	reason string
}

// claimRelay starts the exchange of an offer that arrived on from and
// is relayed to the other leg. An exchange already under way on either
// leg refuses it: our own offer pending on from is glare (491, RFC 3261
// §14.2, RFC 3311 §5.2), so is any exchange on the other leg, on which we
// could not send (RFC 3261 §14.1); the peer's own earlier offer still
// unanswered gets 500 with Retry-After.
func (c *call) claimRelay(from rtpbridge.Leg) refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.offers[from] == offerIn:
		return refusal{sip.StatusInternalServerError, "Offer Pending"}
	case c.offers[from] != idle || c.offers[1-from] != idle:
		return refusal{sip.StatusRequestPending, "Request Pending"}
	}
	c.offers[from], c.offers[1-from] = offerIn, offerOut
	return refusal{}
}

// claimOwn starts an exchange of our own on leg: an offer we send in a
// re-INVITE or in a 2xx. One under way refuses it, as in claimRelay.
func (c *call) claimOwn(leg rtpbridge.Leg) refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.offers[leg] {
	case offerIn:
		return refusal{sip.StatusInternalServerError, "Offer Pending"}
	case offerOut:
		return refusal{sip.StatusRequestPending, "Request Pending"}
	}
	c.offers[leg] = offerOut
	return refusal{}
}

// refuse answers an offer that would start a second exchange.
func (b *B2BUA) refuse(tx sip.ServerTransaction, req *sip.Request, d *dialog, r refusal) {
	var extra []sip.Header
	if r.code == sip.StatusInternalServerError {
		extra = append(extra, retryAfter())
	}
	b.reply(tx, req, d, r.code, r.reason, nil, extra...)
}

// release ends the exchange on legs.
func (c *call) release(legs ...rtpbridge.Leg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range legs {
		c.offers[l] = idle
	}
}

// retryAfter is the Retry-After of a 500 to an offer that overlaps the
// peer's own: 0 to 10 s (RFC 3261 §14.2).
func retryAfter() sip.Header {
	return sip.NewHeader("Retry-After", strconv.Itoa(rand.IntN(11)))
}

// glareDelay is how long we wait before sending again a re-INVITE that
// got 491 (RFC 3261 §14.1), in steps of 10 ms: 2.1 to 4 s when we chose
// the dialog's Call-ID, 0 to 2 s when the peer did, so that the two ends
// do not collide again.
func glareDelay(owner bool) time.Duration {
	if owner {
		return 2100*time.Millisecond + time.Duration(rand.IntN(191))*10*time.Millisecond
	}
	return time.Duration(rand.IntN(201)) * 10 * time.Millisecond
}

// ackKey names the ACK a 2xx of ours waits for: the leg and the CSeq of
// the INVITE it answers.
type ackKey struct {
	leg  rtpbridge.Leg
	cseq uint32
}

// expectAck registers for the ACK of our 2xx to the INVITE with cseq on
// leg; call it before sending the 2xx, or the ACK may come first.
func (c *call) expectAck(leg rtpbridge.Leg, cseq uint32) <-chan *sip.Request {
	ch := make(chan *sip.Request, 1)
	c.mu.Lock()
	c.acks[ackKey{leg, cseq}] = ch
	c.mu.Unlock()
	return ch
}

// acked hands an ACK to the 2xx waiting for it; retransmissions of the
// ACK, and ACKs nobody waits for, are dropped.
func (c *call) acked(leg rtpbridge.Leg, ack *sip.Request) {
	k := ackKey{leg, ack.CSeq().SeqNo}
	c.mu.Lock()
	ch := c.acks[k]
	delete(c.acks, k)
	c.mu.Unlock()
	if ch != nil {
		ch <- ack
	}
}

// offer sends our own offer body in a re-INVITE on leg and returns the
// final response with the request it answers. A 491, or an exchange
// already under way on the leg, is glare: we wait the §14.1 delay and
// try again, at most glareRetries times. The exchange is ours until the
// final response; the caller commits a 2xx and ACKs it.
func (b *B2BUA) offer(ctx context.Context, c *call, leg rtpbridge.Leg, body []byte) (*sip.Response, *sip.Request, error) {
	d := c.legOf(leg)
	for attempt := 0; ; attempt++ {
		var res *sip.Response
		var req *sip.Request
		var err error
		if c.claimOwn(leg).code == 0 {
			req = d.newRequest(sip.INVITE, body)
			res, err = b.await(ctx, c, d, req)
			c.release(leg)
			if err != nil || res.StatusCode != sip.StatusRequestPending {
				return res, req, err
			}
		}
		if attempt == glareRetries {
			if res == nil {
				return nil, nil, ErrGlare
			}
			return res, req, nil
		}
		t := time.NewTimer(b.glareDelay(leg == c.uac))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-c.done:
			t.Stop()
			return nil, nil, ErrCallEnded
		}
	}
}

// await sends req on d and returns its final response.
func (b *B2BUA) await(ctx context.Context, c *call, d *dialog, req *sip.Request) (*sip.Response, error) {
	tx, err := b.send(ctx, d, req)
	if err != nil {
		return nil, err
	}
	defer tx.Terminate()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return nil, ErrCallEnded
		case <-tx.Done():
			if err := tx.Err(); err != nil {
				return nil, err
			}
			return nil, ErrNoAnswer
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return res, nil
			}
		}
	}
}

// delayedAnswer finishes a call whose INVITE had no SDP: the callee's
// 2xx res carries the offer, which goes to the caller in our 2xx; the
// caller's answer comes in its ACK and goes to the callee in ours. The
// relay points at the callee now, before the caller can answer (the
// callee may send as soon as its 2xx is out), and at the caller once its
// ACK arrives. cancelled: the caller gave up while the 2xx was on its
// way. Called by the INVITE handler, which returns after it.
func (b *B2BUA) delayedAnswer(c *call, tx sip.ServerTransaction, req *sip.Request, in, out *dialog, cseq uint32, res *sip.Response, cancelled bool) {
	offer := sdpBody(res)
	s, err := sdp.Parse(offer)
	idx, ok := 0, false
	if err == nil {
		idx, ok = relayable(s)
	}
	if !ok || cancelled {
		// A 2xx with an offer must be ACKed with an answer before the
		// BYE (RFC 3261 §13.2.2.4): one that declines every stream.
		b.ack(out, cseq, b.decline(out, offer))
		b.bye(out)
		if cancelled {
			b.finish(c, "answered after cancel")
			return
		}
		c.log.Warn("unusable offer in the 2xx to a delayed offer", zap.Error(err))
		b.finish(c, "bad offer SDP")
		b.reply(tx, req, in, sip.StatusNotAcceptableHere, "Not Acceptable Here", nil)
		return
	}
	c.mu.Lock()
	c.index, c.offered = idx, in.side.leg
	c.mu.Unlock()
	if err := c.applyOffer(out.side.leg, s); err != nil {
		c.log.Warn("bad media address in offer", zap.Error(err))
	}
	body, version, err := b.rewrite(c, in, offer)
	if err != nil {
		b.ack(out, cseq, b.decline(out, offer))
		b.bye(out)
		b.finish(c, "sdp rewrite failed: "+err.Error())
		code, reason := statusFor(err)
		b.reply(tx, req, in, code, reason, nil)
		return
	}
	in.commit(body, version)
	c.mu.Lock()
	c.answer = time.Now()
	c.mu.Unlock()
	c.setupDone()
	c.media.Established()
	acked := c.expectAck(in.side.leg, req.CSeq().SeqNo)
	ok2xx := b.reply(tx, req, in, sip.StatusOK, "OK", body)
	c.log.Info("call answered (delayed offer)", zap.Duration("setup", time.Since(c.start)))
	b.goCall(func() {
		ack := b.retransmitUntilAck(c, tx, ok2xx, acked)
		var answer []byte
		if ack != nil {
			answer, err = b.answerSDP(c, out, in.side.leg, sdpBody(ack))
		}
		if ack != nil && err == nil && answer != nil {
			b.ack(out, cseq, answer)
			return
		}
		// No answer from the caller: the callee still gets its ACK, with
		// a refusal, and the call ends (RFC 3261 §13.2.2.4).
		b.ack(out, cseq, b.decline(out, offer))
		if ack != nil {
			c.log.Warn("no usable answer in the ACK to a delayed offer", zap.Error(err))
			b.hangup(c, "bad answer SDP")
		}
	})
}

// decline is an answer to offer that refuses every stream (port 0), for
// the ACK of a 2xx we are about to hang up: an ACK to an offer must
// carry an answer.
func (b *B2BUA) decline(d *dialog, offer []byte) []byte {
	body, err := sdp.Rewrite(offer, d.side.contact().Addr(), map[int]int{}, d.offerVersion())
	if err != nil {
		return nil
	}
	return body
}
