package stunkeeper

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/zap"
)

type txID = [stun.TransactionIDSize]byte

type result struct {
	addr netip.AddrPort
	err  error
}

const magicCookie = 0x2112A442

// IsSTUN is the socket owner's demux check: at least a STUN header, the
// first byte in RFC 7983's STUN range (0..3, so SIP's ASCII never
// matches) and the magic cookie. RFC 3489 servers echo our transaction
// ID, which starts with the cookie, so their answers pass too.
func IsSTUN(b []byte) bool {
	return len(b) >= 20 && b[0] <= 3 && binary.BigEndian.Uint32(b[4:8]) == magicCookie
}

// HandlePacket takes a packet the socket owner read (from is its
// source). It reports true when b is a success response that completed
// one of our outstanding transactions. Anything else is counted and
// dropped; an error response also ends its transaction (with
// ErrErrorResponse) but reports false. b is not retained.
func (k *Keeper) HandlePacket(b []byte, from netip.AddrPort) bool {
	if !IsSTUN(b) {
		k.count(func(s *Stats) { s.Malformed++ })
		return false
	}
	m := new(stun.Message)
	if err := stun.Decode(b, m); err != nil {
		k.count(func(s *Stats) { s.Malformed++ })
		return false
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		k.count(func(s *Stats) { s.Malformed++ })
		return false
	}
	if m.Type.Method != stun.MethodBinding {
		k.count(func(s *Stats) { s.Unmatched++ })
		return false
	}
	var res result
	switch m.Type.Class {
	case stun.ClassSuccessResponse:
		addr, ok := mappedAddr(m)
		if !ok {
			// Keep the transaction open: a retransmit may get a better answer.
			k.count(func(s *Stats) { s.Malformed++ })
			return false
		}
		res.addr = addr
	case stun.ClassErrorResponse:
		var ec stun.ErrorCodeAttribute
		if ec.GetFrom(m) == nil {
			res.err = fmt.Errorf("%w: %d %s", ErrErrorResponse, ec.Code, ec.Reason)
		} else {
			res.err = ErrErrorResponse
		}
	default:
		// Requests and indications to our port are not ours to answer.
		k.count(func(s *Stats) { s.Unmatched++ })
		return false
	}

	ch, ok := k.txs.take(m.TransactionID)
	k.mu.Lock()
	switch {
	case res.err != nil:
		k.stats.ErrorResponses++
	case ok:
		k.stats.Responses++
	default:
		k.stats.Unmatched++
	}
	k.mu.Unlock()
	if !ok {
		return false
	}
	// Buffered for exactly this one result and taken from txs above,
	// so this never blocks.
	ch <- res
	if res.err != nil {
		k.log.Debug("stun error response", zap.Stringer("from", from), zap.Error(res.err))
		return false
	}
	return true
}

func mappedAddr(m *stun.Message) (netip.AddrPort, bool) {
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err == nil {
		if ap, ok := toAddrPort(xa.IP, xa.Port); ok {
			return ap, true
		}
	}
	// RFC 3489 servers only know MAPPED-ADDRESS.
	var ma stun.MappedAddress
	if err := ma.GetFrom(m); err == nil {
		if ap, ok := toAddrPort(ma.IP, ma.Port); ok {
			return ap, true
		}
	}
	return netip.AddrPort{}, false
}

func toAddrPort(ip []byte, port int) (netip.AddrPort, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 0xffff || a.Unmap().IsUnspecified() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), true
}

func (k *Keeper) count(f func(*Stats)) {
	k.mu.Lock()
	f(&k.stats)
	k.mu.Unlock()
}

// transact runs one Binding transaction to `to`, retransmitting per RFC
// 5389 (RTO 500 ms, doubling): sends at 0, 0.5, 1.5 and 3.5 s, giving up
// at 5.5 s.
func (k *Keeper) transact(ctx context.Context, to netip.AddrPort) (netip.AddrPort, error) {
	ch := make(chan result, 1)
	id, remove := k.txs.addNew(ch)
	defer remove()

	msg, err := stun.Build(stun.NewTransactionIDSetter(id), stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	wait := rto
	for try := range maxTries {
		sentAt := k.now()
		k.sendRequest(msg.Raw, to, try > 0)
		if try == maxTries-1 {
			wait = lastWait
		}
		timer.Reset(wait)
		select {
		case r := <-ch:
			if r.err != nil {
				return netip.AddrPort{}, r.err
			}
			if try == 0 {
				// Karn: after a retransmit we cannot tell which send was answered.
				rtt := k.now().Sub(sentAt)
				k.count(func(s *Stats) { s.LastRTT = rtt })
			}
			return r.addr, nil
		case <-timer.C:
		case <-ctx.Done():
			return netip.AddrPort{}, ctx.Err()
		case <-k.done:
			return netip.AddrPort{}, ErrClosed
		}
		wait *= 2
	}
	k.count(func(s *Stats) { s.Timeouts++ })
	return netip.AddrPort{}, fmt.Errorf("binding request to %s: %w", to, ErrTimeout)
}

// sendRequest never fails the caller: a socket error (network down during
// a redial, say) is counted and the retransmit schedule carries on.
func (k *Keeper) sendRequest(raw []byte, to netip.AddrPort, retransmit bool) {
	err := k.send(raw, to)
	k.mu.Lock()
	wasFailing := k.sendFailing
	k.sendFailing = err != nil
	if err != nil {
		k.stats.SendErrors++
	} else {
		k.stats.Requests++
		if retransmit {
			k.stats.Retransmits++
		}
	}
	k.mu.Unlock()
	switch {
	case err != nil && !wasFailing:
		k.log.Warn("stun send failing", zap.Stringer("to", to), zap.Error(err))
	case err != nil:
		k.log.Debug("stun send failed", zap.Stringer("to", to), zap.Error(err))
	case wasFailing:
		k.log.Info("stun send working again", zap.Stringer("to", to))
	}
	if err == nil {
		// The owner's Send should call NoteSent too; doing it here keeps
		// the idle math right if it does not.
		k.NoteSent(to)
	}
}
