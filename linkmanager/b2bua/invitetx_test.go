package b2bua

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// wireConn is a sip.Connection that keeps what a transaction writes.
type wireConn struct {
	mu   sync.Mutex
	sent []int // status codes, in order
}

func (c *wireConn) LocalAddr() net.Addr    { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5060} }
func (c *wireConn) Ref(int) int            { return 1 }
func (c *wireConn) TryClose() (int, error) { return 0, nil }
func (c *wireConn) Close() error           { return nil }
func (c *wireConn) WriteMsg(m sip.Message) error {
	if res, ok := m.(*sip.Response); ok {
		c.mu.Lock()
		c.sent = append(c.sent, int(res.StatusCode))
		c.mu.Unlock()
	}
	return nil
}

func (c *wireConn) take() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sent
	c.sent = nil
	return s
}

// inviteTxFor is a real sipgo server transaction for an INVITE, on c.
func inviteTxFor(t *testing.T, c *wireConn) (*sip.ServerTx, *sip.Request) {
	t.Helper()
	msg, err := sip.ParseMessage([]byte("INVITE sip:200@127.0.0.1 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-guard\r\n" +
		"From: <sip:100@127.0.0.2>;tag=a\r\nTo: <sip:200@127.0.0.1>\r\nCall-ID: guard@test\r\n" +
		"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	req := msg.(*sip.Request)
	key, err := sip.ServerTxKeyMake(req)
	if err != nil {
		t.Fatal(err)
	}
	tx := sip.NewServerTx(key, req, c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := tx.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tx.Terminate)
	return tx, req
}

// TestInviteTxKeepsItsFinal (review of issue 8): once the INVITE has its
// final response, a 1xx sent after it (a reliable 183 being resent, or
// one relayed from the callee after a CANCEL) must not go out, nor take
// the final's place in what sipgo resends to a retransmitted INVITE. The
// control shows what a bare sipgo transaction does: it answers the
// retransmission with the 183, so a caller whose 487 was lost rings on.
func TestInviteTxKeepsItsFinal(t *testing.T) {
	t.Run("bare sipgo (control)", func(t *testing.T) {
		c := &wireConn{}
		tx, req := inviteTxFor(t, c)
		_ = tx.Respond(sip.NewResponseFromRequest(req, 487, "Request Terminated", nil))
		_ = tx.Respond(sip.NewResponseFromRequest(req, 183, "Session Progress", nil))
		c.take()
		if err := tx.Receive(req); err != nil {
			t.Fatal(err)
		}
		if got := c.take(); len(got) != 1 || got[0] != 183 {
			t.Fatalf("sipgo resent %v to the retransmitted INVITE; the control expects [183] (if sipgo fixed this, the guard is moot)", got)
		}
	})
	t.Run("our final", func(t *testing.T) {
		c := &wireConn{}
		tx, req := inviteTxFor(t, c)
		g := guardInvite(tx, req)
		_ = g.Respond(sip.NewResponseFromRequest(req, 180, "Ringing", nil))
		_ = g.Respond(sip.NewResponseFromRequest(req, 487, "Request Terminated", nil))
		if err := g.Respond(sip.NewResponseFromRequest(req, 183, "Session Progress", nil)); !errors.Is(err, ErrAnswered) {
			t.Errorf("183 after the final: %v, want ErrAnswered", err)
		}
		if got := c.take(); len(got) != 2 || got[0] != 180 || got[1] != 487 {
			t.Errorf("sent %v, want [180 487]", got)
		}
		if err := tx.Receive(req); err != nil {
			t.Fatal(err)
		}
		if got := c.take(); len(got) != 1 || got[0] != 487 {
			t.Errorf("resent %v to the retransmitted INVITE, want [487]", got)
		}
	})
	t.Run("sipgo's 487 to a CANCEL", func(t *testing.T) {
		c := &wireConn{}
		tx, req := inviteTxFor(t, c)
		g := guardInvite(tx, req)
		cancelled := make(chan struct{})
		g.OnCancel(func(*sip.Request) { close(cancelled) })
		_ = g.Respond(sip.NewResponseFromRequest(req, 183, "Session Progress", nil))
		if err := tx.Receive(cancelOf(req)); err != nil {
			t.Fatal(err)
		}
		<-cancelled
		if err := g.Respond(sip.NewResponseFromRequest(req, 183, "Session Progress", nil)); !errors.Is(err, ErrAnswered) {
			t.Errorf("183 after the CANCEL: %v, want ErrAnswered", err)
		}
		c.take()
		if err := tx.Receive(req); err != nil {
			t.Fatal(err)
		}
		if got := c.take(); len(got) != 1 || got[0] != 487 {
			t.Errorf("resent %v to the retransmitted INVITE, want [487]", got)
		}
	})
}
