package b2bua

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Two more provider SBCs, for failover between a trunk's targets.
const (
	sbc1IP = "127.0.0.3"
	sbc2IP = "127.0.0.4"
)

// hopRouter sends every call to its first hop, with the others as
// alternates, and records the hops the B2BUA reports as failed.
type hopRouter struct {
	hops []netip.AddrPort

	mu     sync.Mutex
	failed []netip.AddrPort // guarded by mu
}

func (r *hopRouter) Route(dialled string) (Route, error) {
	return Route{Trunk: "provider", Dst: r.hops[0], Alt: r.hops[1:], Failed: r.fail, Number: dialled,
		Domain: "sip.provider.test", User: "4930123456"}, nil
}

func (r *hopRouter) fail(a netip.AddrPort) {
	r.mu.Lock()
	r.failed = append(r.failed, a)
	r.mu.Unlock()
}

func (r *hopRouter) failures() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.failed)
}

// failoverHarness is the harness with the router above and a short hop
// timeout; a dead hop never answers, so how short cannot make it flaky.
func failoverHarness(t *testing.T, hops ...netip.AddrPort) (*harness, *hopRouter) {
	r := &hopRouter{hops: hops}
	h := newHarness(t, func(c *Config) {
		c.Router = r
		c.HopTimeout = 300 * time.Millisecond
	})
	return h, r
}

// An outbound INVITE moves to the trunk's next target when the first
// answers 503 or does not answer at all: the call is answered there, the
// dialog stays there (ACK, BYE), and the trunk hears of the failed one.
func TestOutboundFailsOverToTheNextTarget(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(t *testing.T) (netip.AddrPort, func() []string)
	}{
		{"503", func(t *testing.T) (netip.AddrPort, func() []string) {
			a := newAgent(t, sbc1IP)
			a.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
				respond(t, tx, req, 100, "Trying", "", nil)
				respond(t, tx, req, 503, "Service Unavailable", "", nil)
			})
			a.serve(t)
			return a.addr, func() []string { return a.received(sip.INVITE) }
		}},
		{"no answer", func(t *testing.T) (netip.AddrPort, func() []string) {
			dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(sbc1IP)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { dead.Close() })
			return dead.LocalAddr().(*net.UDPAddr).AddrPort(), func() []string {
				buf := make([]byte, 65535)
				dead.SetReadDeadline(time.Now().Add(wait))
				n, _, err := dead.ReadFromUDPAddrPort(buf)
				if err != nil {
					return nil
				}
				return []string{string(buf[:n])}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, firstGot := tc.first(t)
			second := newAgent(t, sbc2IP)
			gate := make(chan struct{})
			close(gate)
			second.on(sip.INVITE, answer(t, second, "sbc2", gate))
			second.serve(t)
			h, r := failoverHarness(t, first, second.addr)

			u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
			if res, _ := u.final(); res.StatusCode != 200 {
				t.Fatalf("PBX got %d, want 200 from the second target", res.StatusCode)
			}
			u.ack()
			inv := second.next(sip.INVITE)
			second.next(sip.ACK)
			tried := firstGot()
			if len(tried) == 0 {
				t.Fatal("the first target never got the INVITE")
			}
			// A new transaction of the same call: same Call-ID and From
			// tag, a new branch and the next CSeq (RFC 3263 §4.3).
			firstInv, err := sip.ParseMessage([]byte(tried[0]))
			if err != nil {
				t.Fatal(err)
			}
			fi := firstInv.(*sip.Request)
			if fi.CallID().Value() != inv.CallID().Value() || fi.From().Params.String() != inv.From().Params.String() {
				t.Errorf("the second target's INVITE is another call: Call-ID %s/%s", fi.CallID().Value(), inv.CallID().Value())
			}
			b1, _ := fi.Via().Params.Get("branch")
			if b2, _ := inv.Via().Params.Get("branch"); b1 == b2 || !strings.HasPrefix(b2, "z9hG4bK") {
				t.Errorf("Via branch %q at the first target, %q at the second: want two RFC 3261 branches", b1, b2)
			}
			if inv.CSeq().SeqNo <= fi.CSeq().SeqNo {
				t.Errorf("CSeq %d at the second target, want above the first's %d", inv.CSeq().SeqNo, fi.CSeq().SeqNo)
			}
			if got := r.failures(); !slices.Equal(got, []netip.AddrPort{first}) {
				t.Errorf("failed hops reported %v, want %v", got, first)
			}
			if res := u.do(sip.BYE, 2, nil); res.StatusCode != 200 {
				t.Errorf("BYE answered %d", res.StatusCode)
			}
			second.next(sip.BYE)
			if e := h.awaitEnded(); !e.Answered {
				t.Errorf("call ended %+v", e)
			}
		})
	}
}

// Once the first target rings, the call is there: its 503 goes to the
// PBX and the second target never sees the call.
func TestNoFailoverOnceRinging(t *testing.T) {
	first := newAgent(t, sbc1IP)
	rang := make(chan struct{})
	first.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 180, "Ringing", "sbc1", nil)
		// Not back to back: sipgo handles each datagram on its own
		// goroutine, so the 503 could overtake the 180.
		select {
		case <-rang:
		case <-time.After(wait):
		}
		respond(t, tx, req, 503, "Service Unavailable", "sbc1", nil)
	})
	first.serve(t)
	second := newAgent(t, sbc2IP)
	second.serve(t)
	h, r := failoverHarness(t, first.addr, second.addr)

	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	u.ringing()
	close(rang)
	if res, _ := u.final(); res.StatusCode != 503 {
		t.Errorf("PBX got %d, want the ringing target's 503", res.StatusCode)
	}
	h.awaitEnded()
	if got := second.received(sip.INVITE); len(got) != 0 {
		t.Errorf("the second target got %d INVITEs after the first one rang", len(got))
	}
	if got := r.failures(); len(got) != 0 {
		t.Errorf("failed hops reported %v; a target that rang has not failed", got)
	}
}
