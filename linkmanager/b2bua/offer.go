package b2bua

import (
	"context"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/emiago/sipgo/sip"

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
// re-INVITE or in a 2xx. False: one is under way.
func (c *call) claimOwn(leg rtpbridge.Leg) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.offers[leg] != idle {
		return false
	}
	c.offers[leg] = offerOut
	return true
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
		if c.claimOwn(leg) {
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
