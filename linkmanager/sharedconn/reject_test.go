package sharedconn

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A rogue LAN host floods the PBX socket with INVITEs. It gets a bounded
// number of stateless 403s (the budget, not one per request and never
// retransmitted), ACKs get nothing, the SIP stack sees none of it, and the
// log says so once per window.
func TestSharedConnStatelessRejectIsBounded(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	core, logs := observer.New(zap.InfoLevel)
	sock := listenLoopback(t)
	c := New(sock, zap.New(core), now)
	pbx := netip.MustParseAddrPort("192.0.2.20:5060")
	c.SetRequestFilter(func(from netip.AddrPort) bool { return from == pbx })
	const perSecond = 5
	c.SetReject(403, "Forbidden", perSecond)
	served := make(chan struct{})
	go func() { // the SIP stack: must never get a packet
		defer close(served)
		buf := make([]byte, 9000)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			t.Errorf("the SIP stack got %q from %v", buf[:n], from)
		}
	}()

	rogue := listenLoopback(t)
	invite := func(i int, method string) []byte {
		return []byte(fmt.Sprintf("%s sip:+4930999@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bK-%d\r\n"+
			"From: <sip:rogue@192.0.2.66>;tag=r%d\r\nTo: <sip:+4930999@192.0.2.2>\r\nCall-ID: flood-%d\r\nCSeq: 1 %s\r\n"+
			"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", method, i, i, i, method))
	}
	send := func(b []byte) {
		if _, err := rogue.WriteTo(b, sock.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	// The clock stands still: the budget is exactly the burst.
	const flood = 300
	for i := range flood {
		if i%10 == 0 {
			send(invite(i, "ACK")) // never answered
		}
		send(invite(i, "INVITE"))
		if i%50 == 49 { // keep the loopback buffer from overflowing
			waitFor(t, func() bool { return c.Stats().DroppedSource >= uint64(i+1+i/10+1) })
		}
	}
	waitFor(t, func() bool { return c.Stats().DroppedSource == flood+flood/10 })
	// A second later the budget has refilled by perSecond.
	clock.Add(int64(time.Second))
	send(invite(flood, "INVITE"))
	waitFor(t, func() bool { return c.Stats().DroppedSource == flood+flood/10+1 })

	var got []string
	_ = rogue.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		buf := make([]byte, 2048)
		n, err := rogue.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	if want := 2*perSecond + 1; len(got) != want {
		t.Errorf("the rogue host got %d answers to %d INVITEs, want %d (the burst, then one more after a second)", len(got), flood+1, want)
	}
	for _, g := range got {
		msg, err := sip.ParseMessage([]byte(g))
		res, ok := msg.(*sip.Response)
		if err != nil || !ok || res.StatusCode != 403 || res.CSeq().MethodName != sip.INVITE || res.To().Params.Has("tag") == false ||
			!strings.HasPrefix(res.CallID().Value(), "flood-") || res.Via() == nil {
			t.Errorf("answer is not a 403 to one of the INVITEs (with a To tag): %v\n%s", err, g)
		}
	}
	if st := c.Stats(); st.Rejected != uint64(len(got)) {
		t.Errorf("Rejected = %d, sent %d", st.Rejected, len(got))
	}
	if n := logs.FilterMessage("SIP requests from a host that may not send here refused").Len(); n != 1 {
		t.Errorf("%d log lines for the flood, want 1 per %v", n, rejectLogEvery)
	}
	c.Close()
	<-served
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
	}
}
