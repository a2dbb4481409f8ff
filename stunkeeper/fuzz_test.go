package stunkeeper

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
)

// FuzzHandlePacket: whatever arrives on the SIP port, HandlePacket must
// not panic, and may only report a match with a usable address.
func FuzzHandlePacket(f *testing.F) {
	id := txID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8}
	f.Add(response(id, mapA, true))
	f.Add(response(id, mapA, false))
	f.Add(response(txID{}, mapA, true))
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: netip.MustParseAddr("2001:db8::1").AsSlice(), Port: 5060}, stun.Fingerprint).Raw)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingError,
		stun.ErrorCodeAttribute{Code: stun.CodeServerError}).Raw)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingRequest).Raw)
	f.Add([]byte("REGISTER sip:example.com SIP/2.0\r\n\r\n"))
	f.Add([]byte{})

	k, err := New(Config{Send: func([]byte, netip.AddrPort) error { return nil }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		try := func(b []byte) {
			ch := make(chan result, 1)
			remove := k.txs.add(id, ch)
			matched := k.HandlePacket(b, stun1)
			remove()
			if !matched {
				return
			}
			select {
			case r := <-ch:
				if r.err != nil || !r.addr.IsValid() || r.addr.Port() == 0 {
					t.Fatalf("matched with result %+v", r)
				}
			default:
				t.Fatal("matched but nothing delivered")
			}
		}
		tryPlanted(b, id, try)
	})
}

// tryPlanted tries b, then (the fuzzer would rarely find the cookie and
// our transaction ID) a copy with both planted, so the attribute parsing
// gets exercised.
func tryPlanted(b []byte, id txID, try func([]byte)) {
	try(b)
	if len(b) >= 20 {
		c := append([]byte(nil), b...)
		c[0] &= 0x01
		binary.BigEndian.PutUint32(c[4:8], magicCookie)
		copy(c[8:20], id[:])
		try(c)
	}
}

// FuzzProberHandle: whatever reaches a NAT test socket, the prober must
// not panic, and a delivered answer is our transaction's, with a usable
// address unless it is an error or our own hairpinned request.
func FuzzProberHandle(f *testing.F) {
	id := txID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8}
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: mapA.Addr().AsSlice(), Port: 65002},
		&stun.OtherAddress{IP: stun2.Addr().AsSlice(), Port: 3479}, stun.Fingerprint).Raw)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingRequest, stun.Fingerprint).Raw)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingError,
		stun.ErrorCodeAttribute{Code: stun.CodeUnknownAttribute}).Raw)
	f.Add([]byte("x"))
	p := &prober{}
	f.Fuzz(func(t *testing.T, b []byte) {
		try := func(b []byte) {
			ch := make(chan answer, 1)
			undo := p.expect(id, ch)
			ok := p.handle(b, stun1)
			undo()
			if !ok {
				return
			}
			select {
			case a := <-ch:
				if a.err == nil && a.mapped.IsValid() && a.mapped.Port() == 0 {
					t.Fatalf("delivered %+v", a)
				}
			default:
				t.Fatal("handled but nothing delivered")
			}
		}
		tryPlanted(b, id, try)
	})
}
