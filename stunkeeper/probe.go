package stunkeeper

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// answer is what one NAT test step got back.
type answer struct {
	to     netip.AddrPort // where the request went
	from   netip.AddrPort // where the answer came from (as the NAT delivered it)
	mapped netip.AddrPort // XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS)
	other  netip.AddrPort // OTHER-ADDRESS, if the server offers RFC 5780
	by     *prober        // the socket it arrived on
	err    error
}

// prober runs STUN transactions on a socket the NAT test was handed for
// its duration: one read goroutine, owned by the prober and ended by stop,
// matches answers to waiting steps by transaction ID.
type prober struct {
	conn net.PacketConn
	done chan struct{}

	mu      sync.Mutex
	txs     waiters[answer]
	dropped uint64
}

func newProber(c net.PacketConn) *prober {
	p := &prober{conn: c, done: make(chan struct{})}
	go p.read()
	return p
}

// stop ends the read goroutine without closing the caller's socket: a
// read deadline in the past wakes the pending read, and the deadline is
// cleared again once the goroutine is gone. It returns the drop count.
func (p *prober) stop() uint64 {
	_ = p.conn.SetReadDeadline(time.Now())
	<-p.done
	_ = p.conn.SetReadDeadline(time.Time{})
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped
}

func (p *prober) read() {
	defer close(p.done)
	buf := make([]byte, 1500)
	for {
		n, addr, err := p.conn.ReadFrom(buf)
		if err != nil {
			// Our stop, or a socket the caller closed: either way the
			// steps still waiting time out on their own.
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok || !p.handle(buf[:n], unmap(ua.AddrPort())) {
			p.mu.Lock()
			p.dropped++
			p.mu.Unlock()
		}
	}
}

// handle delivers b to the step waiting for its transaction. A Binding
// request with one of our IDs is our own hairpinned request.
func (p *prober) handle(b []byte, from netip.AddrPort) bool {
	if !IsSTUN(b) {
		return false
	}
	m := new(stun.Message)
	if stun.Decode(b, m) != nil || m.Type.Method != stun.MethodBinding {
		return false
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return false
	}
	a := answer{from: from, by: p}
	switch m.Type.Class {
	case stun.ClassRequest:
	case stun.ClassSuccessResponse:
		var ok bool
		if a.mapped, ok = mappedAddr(m); !ok {
			return false
		}
		var oa stun.OtherAddress
		if oa.GetFrom(m) == nil {
			a.other, _ = toAddrPort(oa.IP, oa.Port)
		}
	case stun.ClassErrorResponse:
		var ec stun.ErrorCodeAttribute
		a.err = ErrErrorResponse
		if ec.GetFrom(m) == nil {
			a.err = fmt.Errorf("%w: %d %s", ErrErrorResponse, ec.Code, ec.Reason)
		}
	default:
		return false
	}
	ch, ok := p.txs.take(m.TransactionID)
	if ok {
		// Buffered for every prober it is registered with, and each
		// delivers once (the entry is gone now): never blocks.
		ch <- a
	}
	return ok
}

// do runs one step: a Binding request to `to` (with CHANGE-REQUEST flags
// when change is not 0), sent at 0, 0.5 and 1.5 s, given up at 3 s.
func (p *prober) do(ctx context.Context, to netip.AddrPort, change byte) answer {
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if change != 0 {
		setters = append(setters, stun.RawAttribute{Type: stun.AttrChangeRequest, Value: []byte{0, 0, 0, change}})
	}
	a := p.transact(ctx, to, append(setters, stun.Fingerprint))
	a.to = to
	return a
}

// hairpin sends a Binding request to our own public address and reports
// whether it came back to this socket.
func (p *prober) hairpin(ctx context.Context, public netip.AddrPort) Hairpin {
	a := p.transact(ctx, public, []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.Fingerprint})
	switch {
	case a.err == nil:
		return HairpinYes
	case ctx.Err() != nil:
		return HairpinUnknown
	}
	return HairpinNo
}

func (p *prober) transact(ctx context.Context, to netip.AddrPort, setters []stun.Setter) answer {
	msg, err := stun.Build(setters...)
	if err != nil {
		return answer{err: err}
	}
	ch := make(chan answer, 1)
	defer p.expect(msg.TransactionID, ch)()
	return exchange(ctx, p.conn, msg.Raw, to, ch)
}

// expect registers a transaction whose answer may arrive on this socket
// and be delivered to ch, which needs a buffer slot for every prober it
// is registered with; the func returned unregisters it.
func (p *prober) expect(id txID, ch chan answer) func() { return p.txs.add(id, ch) }

// exchange writes raw to `to` on c at 0, 0.5 and 1.5 s until an answer
// comes on ch (which may belong to another socket), giving up at 3 s.
func exchange(ctx context.Context, c net.PacketConn, raw []byte, to netip.AddrPort, ch <-chan answer) answer {
	timer := time.NewTimer(stepWait)
	defer timer.Stop()
	resend := time.NewTimer(0)
	defer resend.Stop()
	wait := rto
	dst := net.UDPAddrFromAddrPort(to)
	for sent := 0; ; {
		select {
		case a := <-ch:
			return a
		case <-resend.C:
			// A send error (network down) is not the answer; the step
			// times out like a lost packet.
			_, _ = c.WriteTo(raw, dst)
			if sent++; sent < stepTries {
				resend.Reset(wait)
				wait *= 2
			}
		case <-timer.C:
			return answer{err: fmt.Errorf("binding request to %s: %w", to, ErrTimeout)}
		case <-ctx.Done():
			return answer{err: ctx.Err()}
		}
	}
}
