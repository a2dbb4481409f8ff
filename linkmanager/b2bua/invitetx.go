package b2bua

import (
	"sync"
	"sync/atomic"

	"github.com/emiago/sipgo/sip"
)

// inviteTx is an initial INVITE's server transaction as bridge uses it:
// once the INVITE has its final response, ours or sipgo's 487 to a
// CANCEL, a 1xx is no longer sent. sipgo keeps every response it is
// handed as the one its Timer G and a retransmitted INVITE resend, a 1xx
// in the Completed state included (sip/transaction.go,
// spinFsmWithResponse), so a late 183 (a reliable one being resent, or one
// relayed from the callee after a CANCEL) would take the final's place on
// the wire, and a caller whose final was lost would hear 183 again and
// ring on.
type inviteTx struct {
	sip.ServerTransaction
	req *sip.Request

	mu    sync.Mutex // orders our responses: none goes out after a final
	final bool       // guarded by mu
	// cancelled is set by sipgo's CANCEL callback, which runs under the
	// transaction's own lock after it stored its 487: mu is not taken
	// there, since Respond holds mu while it waits for that lock.
	cancelled atomic.Bool
}

func guardInvite(tx sip.ServerTransaction, req *sip.Request) *inviteTx {
	return &inviteTx{ServerTransaction: tx, req: req}
}

// Respond sends res unless it is a 1xx and the INVITE has its final.
func (t *inviteTx) Respond(res *sip.Response) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if res.IsProvisional() {
		if t.final || t.cancelled.Load() {
			return ErrAnswered
		}
		err := t.ServerTransaction.Respond(res)
		if t.cancelled.Load() {
			// The CANCEL's 487 was stored while this 1xx waited for the
			// transaction's lock, and the 1xx replaced it: store the 487
			// again (the Completed state sends nothing for it).
			t.final = true
			_ = t.ServerTransaction.Respond(sip.NewResponseFromRequest(t.req, sip.StatusRequestTerminated, "Request Terminated", nil))
		}
		return err
	}
	t.final = true
	return t.ServerTransaction.Respond(res)
}

// OnCancel registers f as sipgo's CANCEL callback, after noting that the
// INVITE is answered.
func (t *inviteTx) OnCancel(f sip.FnTxCancel) bool {
	return t.ServerTransaction.OnCancel(func(r *sip.Request) {
		t.cancelled.Store(true)
		f(r)
	})
}
