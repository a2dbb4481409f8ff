package b2bua

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// supported are the option tags a request may Require of us: session
// timers, whose refreshes are relayed like any re-INVITE or UPDATE, and
// reliable provisional responses (reliable.go). Anything else gets 420
// (RFC 3261 §8.2.2.3).
var supported = []string{"timer", "100rel"}

// required is the option tags m's Require headers name, lower case and
// each once (RFC 3261 §20.32; tags compare case-insensitively).
func required(m interface{ GetHeaders(string) []sip.Header }) []string {
	return optionTags(m, "Require")
}

// optionTags is the option tags m's headers called name (Require,
// Supported) list, lower case and each once.
func optionTags(m interface{ GetHeaders(string) []sip.Header }, name string) []string {
	var out []string
	for _, h := range m.GetHeaders(name) {
		for _, opt := range strings.Split(h.Value(), ",") {
			if opt = strings.ToLower(strings.TrimSpace(opt)); opt != "" && !slices.Contains(out, opt) {
				out = append(out, opt)
			}
		}
	}
	return out
}

// unsupported is what req Requires that we do not support, for the
// Unsupported header of a 420; nil when nothing.
func unsupported(req *sip.Request) []string {
	var out []string
	for _, opt := range required(req) {
		if !slices.Contains(supported, opt) {
			out = append(out, opt)
		}
	}
	return out
}

// refuseUnsupported answers req 420 naming what it Requires that we do
// not support, and reports whether it did.
func (b *B2BUA) refuseUnsupported(tx sip.ServerTransaction, req *sip.Request, d *dialog) bool {
	opts := unsupported(req)
	if opts == nil {
		return false
	}
	b.reply(tx, req, d, 420, "Bad Extension", nil, sip.NewHeader("Unsupported", strings.Join(opts, ", ")))
	return true
}

// reliableRSeq is the RSeq of a reliable provisional response (RFC 3262
// §3: Require: 100rel and an RSeq), and whether res is one.
func reliableRSeq(res *sip.Response) (uint32, bool) {
	if res.StatusCode <= 100 || res.StatusCode >= 200 {
		return 0, false
	}
	h := res.GetHeader("RSeq")
	if !slices.Contains(required(res), "100rel") || h == nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint32(n), true
}

// prack acknowledges a reliable provisional response from the leg we
// called out on, on its early dialog d (RFC 3262 §4): a provider that
// sends its 183 with Require: 100rel stops retransmitting it and its
// early media goes on; without a PRACK it would fail the call. Each RSeq
// once: a retransmission of one already acknowledged is dropped. The
// provisional itself goes on to the caller with an RSeq of our own if
// the caller asked for reliable ones (reliable.go), else unreliably. The
// PRACK's transaction runs on its own, bounded by Timer F. It reports
// whether res is a retransmission, which goes no further (RFC 3262 §4):
// relayed, it would reach a 100rel caller as a new provisional with an
// RSeq of its own to PRACK.
func (b *B2BUA) prack(c *call, d *dialog, res *sip.Response) (repeat bool) {
	rseq, ok := reliableRSeq(res)
	if !ok || d == nil {
		return false
	}
	d.mu.Lock()
	if rseq <= d.rseq {
		d.mu.Unlock()
		return true
	}
	d.rseq = rseq
	d.mu.Unlock()
	cs := res.CSeq()
	req := d.newRequest(sip.PRACK, nil)
	req.AppendHeader(sip.NewHeader("RAck", fmt.Sprintf("%d %d %s", rseq, cs.SeqNo, cs.MethodName)))
	b.goCall(func() {
		ctx, stop := context.WithTimeout(b.ctx, 64*sip.T1) // Timer F; Close ends it at once
		defer stop()
		tx, err := b.send(ctx, d, req)
		if err != nil {
			c.log.Warn("PRACK not sent", zap.Error(err))
			return
		}
		defer tx.Terminate()
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.done:
				return
			case <-tx.Done():
				return
			case r := <-tx.Responses():
				if r.StatusCode >= 200 {
					if r.StatusCode >= 300 {
						c.log.Info("PRACK refused", zap.Int("status", int(r.StatusCode)))
					}
					return
				}
			}
		}
	})
	return false
}
