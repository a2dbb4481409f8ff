package sharedconn

import (
	"bytes"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// rejecter answers refused requests statelessly, bounded.
type rejecter struct {
	code   int
	reason string
	answer *rate.Limiter // stateless answers per second, all sources together
	logged atomic.Int64  // Unix ns of the last log line
	quiet  atomic.Uint64 // refusals since that line
}

// rejectLogEvery spaces the "refused" log lines: one per window, with the
// count of what it stands for.
const rejectLogEvery = 10 * time.Second

// SetReject makes the socket answer requests its filter refuses with one
// stateless response (code, reason), at most perSecond of them (burst
// twice that) whatever the number of sources, and never to an ACK. No
// transaction is created, so nothing retransmits it and nothing is kept:
// 40k refused INVITEs through sipgo's transactions once drew 213,430
// retransmitted 403s and ~430 MiB of heap. The PBX side uses it so a
// misconfigured PBX learns why; the Internet side stays silent.
func (c *Conn) SetReject(code int, reason string, perSecond float64) {
	c.reject.Store(&rejecter{code: code, reason: reason, answer: rate.NewLimiter(rate.Limit(perSecond), max(1, int(2*perSecond)))})
}

// rejectStateless answers b (a refused request from from) if the budget
// allows, and logs at most once per rejectLogEvery. Parsing happens only
// within the budget, so a flood costs a counter increment per packet.
func (c *Conn) rejectStateless(r *rejecter, b []byte, from netip.AddrPort) {
	r.quiet.Add(1)
	now := c.now()
	if last := r.logged.Load(); now.Sub(time.Unix(0, last)) >= rejectLogEvery && r.logged.CompareAndSwap(last, now.UnixNano()) {
		c.log.Warn("SIP requests from a host that may not send here refused",
			zap.Stringer("source", from), zap.Uint64("refused_since_last_line", r.quiet.Swap(0)),
			zap.Int("answer", r.code))
	}
	// Never answer an ACK (RFC 3261 §17.2.1), and do not spend budget on it.
	if bytes.HasPrefix(b, []byte("ACK ")) || !r.answer.AllowN(now, 1) {
		return
	}
	msg, err := sip.ParseMessage(b)
	if err != nil {
		return
	}
	req, ok := msg.(*sip.Request)
	if !ok || req.IsAck() || req.Via() == nil || req.CSeq() == nil || req.CallID() == nil {
		return
	}
	req.SetSource(from.String())
	res := sip.NewResponseFromRequest(req, r.code, r.reason, nil)
	if _, err := c.conn.WriteToUDPAddrPort([]byte(res.String()), from); err == nil {
		c.stats.rejected.Add(1)
	}
}
