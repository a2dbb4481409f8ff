package b2bua

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// reliable sends our provisional responses to the caller reliably (RFC
// 3262 §3), on the leg where we are the UAS: a caller that Requires
// 100rel gets every 1xx but 100 so; one that only Supports it gets those
// with SDP so, because early media is the point (an answer lost in an
// unreliable 183 leaves the caller deaf until the 200). Each goes with
// Require: 100rel and the next RSeq, and is sent again at T1, 2*T1, ...
// until the PRACK that names it. One at a time: the others wait in a
// queue, where a newer provisional supersedes the ones without SDP (they
// only say how far the call got) and a newer one with SDP supersedes
// all (its SDP is the current early answer), so the queue holds two at
// most. No PRACK within 64*T1 fails the call: the INVITE handler answers
// 5xx and CANCELs the other leg. It stops for good when the call is
// answered or ends.
type reliable struct {
	b    *B2BUA
	c    *call
	tx   sip.ServerTransaction // the INVITE's
	d    *dialog               // the caller's (early) dialog
	cseq uint32                // of the INVITE, for RAck
	// every: the caller Requires 100rel; else only 1xx with SDP.
	every bool
	halt  chan struct{} // closed by stop
	once  sync.Once

	mu      sync.Mutex
	rseq    uint32          // guarded by mu; RSeq of the last one sent
	out     *sip.Response   // guarded by mu; sent, not PRACKed yet; nil: none
	outSDP  bool            // guarded by mu; out carries SDP
	acked   chan struct{}   // guarded by mu; closed when out is PRACKed
	queue   []*sip.Response // guarded by mu; waiting for out's PRACK
	running bool            // guarded by mu; a sender goroutine owns out
}

// reliableFor is the reliable sender for the caller of req, nil if the
// caller neither Requires nor Supports 100rel.
func (b *B2BUA) reliableFor(c *call, tx sip.ServerTransaction, req *sip.Request, d *dialog) *reliable {
	every := slices.Contains(required(req), "100rel")
	if !every && !supports(req, "100rel") {
		return nil
	}
	return &reliable{b: b, c: c, tx: tx, d: d, cseq: req.CSeq().SeqNo, every: every,
		halt: make(chan struct{}),
		// RFC 3262 §3: the first RSeq (one above this) is uniform in
		// 1 .. 2^31-1.
		rseq: rand.Uint32N(1<<31 - 1)}
}

// supports reports whether req's Supported headers name opt (lower case).
func supports(req *sip.Request, opt string) bool {
	return slices.Contains(optionTags(req, "Supported"), opt)
}

// provisional relays a 1xx to the caller of c on d: reliably if the
// caller asked for it (c.rel), else as b.reply does.
func (b *B2BUA) provisional(c *call, tx sip.ServerTransaction, req *sip.Request, d *dialog, code int, reason string, body []byte) {
	r := c.rel
	if r == nil || code <= 100 || !r.every && len(body) == 0 {
		b.reply(tx, req, d, code, reason, body)
		return
	}
	r.send(response(req, d, code, reason, body, sip.NewHeader("Require", "100rel")))
}

// send sends res reliably now, or queues it behind the one awaiting its
// PRACK.
func (r *reliable) send(res *sip.Response) {
	withSDP := len(res.Body()) > 0
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.halt:
		return
	default:
	}
	if r.out != nil {
		if withSDP {
			r.queue = r.queue[:0]
		} else {
			r.queue = slices.DeleteFunc(r.queue, func(q *sip.Response) bool { return len(q.Body()) == 0 })
		}
		r.queue = append(r.queue, res)
		return
	}
	r.take(res)
	if !r.running {
		r.running = r.b.goCall(r.run)
	}
	if !r.running {
		// Shutting down: the call is being abandoned; one copy goes out.
		r.out = nil
		r.transmit(res)
	}
}

// take makes res the one awaiting a PRACK, with the next RSeq; mu held.
func (r *reliable) take(res *sip.Response) {
	r.rseq++
	res.AppendHeader(sip.NewHeader("RSeq", strconv.FormatUint(uint64(r.rseq), 10)))
	r.out, r.outSDP, r.acked = res, len(res.Body()) > 0, make(chan struct{})
}

func (r *reliable) transmit(res *sip.Response) {
	if err := r.tx.Respond(res); err != nil {
		r.c.log.Debug("reliable provisional not sent", zap.Error(err))
	}
}

// run sends each reliable provisional in turn until none is left.
func (r *reliable) run() {
	for {
		r.mu.Lock()
		res, acked := r.out, r.acked
		if res == nil {
			r.running = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if !r.deliver(res, acked) {
			r.mu.Lock()
			r.running = false
			r.mu.Unlock()
			return
		}
	}
}

// deliver sends res and again at T1, 2*T1, 4*T1 ... (RFC 3262 §3: the
// interval doubles, without the T2 cap of §17) until acked is closed. It
// reports false when the sender is done: stopped, the call ended, or no
// PRACK within 64*T1, which fails the call.
func (r *reliable) deliver(res *sip.Response, acked <-chan struct{}) bool {
	t1 := r.b.reliableT1
	r.transmit(res)
	deadline := time.NewTimer(64 * t1)
	defer deadline.Stop()
	interval := t1
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-acked:
			return true
		case <-r.halt:
			return false
		case <-r.c.done:
			return false
		case <-deadline.C:
			r.fail(res)
			return false
		case <-t.C:
			r.transmit(res)
			interval *= 2
			t.Reset(interval)
		}
	}
}

// fail gives up on the call: the caller never PRACKed res. The INVITE
// handler, if it still owns the call, answers 5xx and CANCELs the other
// leg (RFC 3262 §3); a call already answered stays up (only a 1xx
// without SDP can be unacknowledged then, which is allowed).
func (r *reliable) fail(res *sip.Response) {
	r.stop()
	c := r.c
	c.mu.Lock()
	setup := c.setup
	if setup && c.abortReason == "" {
		c.abortReason = "no PRACK"
	}
	c.mu.Unlock()
	if setup {
		c.log.Warn("caller never acknowledged our reliable provisional response; failing the call",
			zap.Int("status", int(res.StatusCode)), zap.String("rseq", res.GetHeader("RSeq").Value()))
		c.abortOnce.Do(func() { close(c.abort) })
	}
}

// stop ends the reliable provisionals: the call is answered or over.
// Idempotent.
func (r *reliable) stop() { r.once.Do(func() { close(r.halt) }) }

// prack takes a PRACK's RAck (RFC 3262 §7.2: RSeq, CSeq number, method)
// and reports whether it names the provisional awaiting one, which it
// then marks acknowledged; the next queued one, if any, goes out.
func (r *reliable) prack(rack string) bool {
	f := strings.Fields(rack)
	if len(f) != 3 {
		return false
	}
	rseq, err1 := strconv.ParseUint(f[0], 10, 32)
	cseq, err2 := strconv.ParseUint(f[1], 10, 32)
	if err1 != nil || err2 != nil || uint32(cseq) != r.cseq || !strings.EqualFold(f[2], string(sip.INVITE)) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.out == nil || uint32(rseq) != r.rseq {
		return false
	}
	close(r.acked)
	r.out = nil
	select {
	case <-r.halt:
		r.queue = nil
		return true
	default:
	}
	if len(r.queue) > 0 {
		next := r.queue[0]
		r.queue = r.queue[1:]
		r.take(next)
		// run is still looping (it has not seen out nil yet) or has
		// left: then start another.
		if !r.running {
			r.running = r.b.goCall(r.run)
		}
	}
	return true
}

// unackedSDP is what the 2xx must wait for (RFC 3262 §3): the channel
// closed when the outstanding reliable provisional with SDP is
// PRACKed, nil if there is none. The queued ones are dropped: the 2xx
// supersedes them.
func (r *reliable) unackedSDP() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queue = nil
	if r.out == nil || !r.outSDP {
		return nil
	}
	return r.acked
}

// holdAnswer waits, before the 2xx to the caller, until the reliable
// provisional with SDP it has not PRACKed yet is (RFC 3262 §3: no 2xx
// before that). The callee's leg is answered and ACKed by then. If the
// PRACK never comes (the sender gives up after 64*T1 and aborts the
// call), the caller cancels or the call is hung up, the callee gets a
// BYE, the caller its final answer, and holdAnswer reports false: the
// call is over. If the callee hangs up, the caller gets 480.
func (b *B2BUA) holdAnswer(c *call, tx sip.ServerTransaction, req *sip.Request, in, out *dialog, cancelled <-chan struct{}) bool {
	if c.rel == nil {
		return true
	}
	acked := c.rel.unackedSDP()
	if acked == nil {
		return true
	}
	c.log.Debug("2xx held until the caller PRACKs our reliable provisional")
	// The sender gives up within 64*T1 of sending it; this bound only
	// matters if it never ran (shutdown).
	bound := time.NewTimer(64 * b.reliableT1)
	defer bound.Stop()
	c.mu.Lock()
	c.holding = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.holding = false
		c.mu.Unlock()
	}()
	reason := "no PRACK"
	select {
	case <-acked:
		return true
	case <-c.done:
		// The callee hung up first (OnBye ended the call, without a BYE
		// to the caller: its dialog is early, RFC 3261 §15). The caller
		// gets a final answer instead.
		b.reply(tx, req, in, sip.StatusTemporarilyUnavailable, "Temporarily Unavailable", nil)
		return false
	case <-cancelled:
		// sipgo has answered the INVITE 487.
		b.bye(out)
		b.finish(c, "cancelled while waiting for PRACK")
		return false
	case <-c.abort:
		c.mu.Lock()
		reason = c.abortReason
		c.mu.Unlock()
	case <-bound.C:
	}
	b.bye(out)
	b.reply(tx, req, in, sip.StatusServiceUnavailable, "Service Unavailable", nil, sip.NewHeader("Retry-After", "60"))
	b.finish(c, reason)
	return false
}

// OnPrack takes a PRACK for one of our reliable provisional responses
// (RFC 3262 §3): on the caller's early dialog (Call-ID and both tags),
// naming in RAck the one that awaits it. Anything else gets 481. A PRACK
// carrying SDP would be a new offer, which we do not relay: it
// acknowledges the response all the same and gets 488, so the caller
// keeps the session it had.
func (b *B2BUA) OnPrack(req *sip.Request, tx sip.ServerTransaction) {
	c, _, d, ok := b.lookup(req)
	rack := req.GetHeader("RAck")
	if !ok || c.rel == nil || d != c.rel.d || rack == nil || !c.rel.prack(rack.Value()) {
		b.reply(tx, req, nil, sip.StatusCallTransactionDoesNotExists, "Call/Transaction Does Not Exist", nil)
		return
	}
	if len(sdpBody(req)) > 0 {
		b.reply(tx, req, nil, sip.StatusNotAcceptableHere, "Offer In PRACK Not Supported", nil)
		return
	}
	b.reply(tx, req, nil, sip.StatusOK, "OK", nil)
}
