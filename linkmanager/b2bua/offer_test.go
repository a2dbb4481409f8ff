package b2bua

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// endpoint is one end of an established dialog, caller or callee, able
// to send requests on it: enough for offer/answer tests from either side.
type endpoint struct {
	a      *agent
	from   *sip.FromHeader
	to     *sip.ToHeader
	callID *sip.CallIDHeader
	target sip.Uri
	dst    netip.AddrPort
	cseq   uint32
}

// caller is the calling end of u's dialog.
func (u *uac) caller() *endpoint {
	target := u.inv.Recipient
	if c := u.ok.Contact(); c != nil {
		target = c.Address
	}
	return &endpoint{a: u.a, from: sip.HeaderClone(u.inv.From()).(*sip.FromHeader), to: sip.HeaderClone(u.ok.To()).(*sip.ToHeader),
		callID: sip.HeaderClone(u.inv.CallID()).(*sip.CallIDHeader), target: target, dst: netip.MustParseAddrPort(u.inv.Destination()),
		cseq: u.inv.CSeq().SeqNo + 10}
}

// callee is the called end of d's dialog.
func (d *inDialog) callee() *endpoint {
	from := d.inv.From()
	return &endpoint{a: d.a, from: &sip.FromHeader{Address: d.inv.To().Address, Params: sipmsg.Params("tag", d.tag)},
		to:     &sip.ToHeader{Address: from.Address, Params: from.Params.Clone()},
		callID: sip.HeaderClone(d.inv.CallID()).(*sip.CallIDHeader), target: d.inv.Contact().Address, dst: d.remote, cseq: d.cseq}
}

func (e *endpoint) request(method sip.RequestMethod, cseq uint32, body []byte) *sip.Request {
	req := sip.NewRequest(method, e.target)
	req.AppendHeader(sipmsg.NewVia(e.a.addr))
	req.AppendHeader(sip.HeaderClone(e.from))
	req.AppendHeader(sip.HeaderClone(e.to))
	req.AppendHeader(sip.HeaderClone(e.callID))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: method})
	req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: e.from.Address.User, Host: e.a.addr.Addr().String(), Port: int(e.a.addr.Port())}})
	if body != nil {
		req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	}
	req.SetBody(body)
	req.SetDestination(e.dst.String())
	return req
}

// do sends an in-dialog request and returns its final response; a 2xx to
// an INVITE is ACKed (with ackBody, the answer to an offer in the 2xx).
func (e *endpoint) do(method sip.RequestMethod, body, ackBody []byte) *sip.Response {
	e.a.t.Helper()
	e.cseq++
	res := doRequest(e.a.t, e.a, e.request(method, e.cseq, body))
	if method == sip.INVITE && res.IsSuccess() {
		e.ack(e.cseq, ackBody)
	}
	return res
}

func (e *endpoint) ack(cseq uint32, body []byte) {
	e.a.t.Helper()
	if err := e.a.client.WriteRequest(e.request(sip.ACK, cseq, body), sipgo.ClientRequestBuild); err != nil {
		e.a.t.Fatal(err)
	}
}

// answerScript makes a answer each INVITE or UPDATE with the next code of
// codes (200 once they run out); a 2xx carries SDP at port.
type answerScript struct {
	t    *testing.T
	a    *agent
	tag  string
	port int

	mu    sync.Mutex
	codes []int // guarded by mu
}

func scripted(t *testing.T, a *agent, tag string, port int, codes ...int) *answerScript {
	s := &answerScript{t: t, a: a, tag: tag, port: port, codes: codes}
	a.on(sip.INVITE, s.handle)
	a.on(sip.UPDATE, s.handle)
	return s
}

func (s *answerScript) handle(req *sip.Request, tx sip.ServerTransaction) {
	s.mu.Lock()
	code := 200
	if len(s.codes) > 0 {
		code, s.codes = s.codes[0], s.codes[1:]
	}
	s.mu.Unlock()
	if code != 200 {
		respond(s.t, tx, req, code, "Scripted", s.tag, nil)
		return
	}
	contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "peer", Host: s.a.addr.Addr().String(), Port: int(s.a.addr.Port())}}
	respond(s.t, tx, req, 200, "OK", s.tag, sdpOf(s.a.addr.Addr().String(), s.port), contact)
}

func version(t *testing.T, body []byte) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(mustParse(t, body).Origin.Version, 10, 64)
	if err != nil {
		t.Fatalf("o= version: %v", err)
	}
	return v
}

// dialogState is what a rejected offer must leave alone.
type dialogState struct {
	remote  [2]netip.AddrPort
	held    bool
	sdp     [2]string
	version [2]uint64
}

func stateOf(t *testing.T, h *harness, callID string) dialogState {
	t.Helper()
	c, ok := h.b.callByID(callID)
	if !ok {
		t.Fatal("call gone")
	}
	ms := h.media.session(0)
	var st dialogState
	ms.mu.Lock()
	st.remote, st.held = ms.remote, ms.held
	ms.mu.Unlock()
	for l := range 2 {
		d := c.legOf(rtpbridge.Leg(l))
		d.mu.Lock()
		st.sdp[l], st.version[l] = string(d.lastSDP), d.version
		d.mu.Unlock()
	}
	return st
}

// Items 3 and the o= bug: an offer relayed on a dialog carries one more
// than the last SDP we sent on it when what we send changed, and the same
// version when it did not (RFC 3264 §8: the caller's new port is hidden
// behind our relay port, and the callee's answer too); an offer the far
// end refuses (488, 491) leaves media, hold, versions and SDP exactly as
// they were, for re-INVITE and UPDATE, from either end.
func TestRefusedOfferRollsBack(t *testing.T) {
	for _, tc := range []struct {
		method sip.RequestMethod
		code   int
	}{{sip.INVITE, 488}, {sip.UPDATE, 491}} {
		t.Run(string(tc.method), func(t *testing.T) {
			directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
				u, in := h.established(caller, callee, dst, "4930123456", "callee")
				from := u.caller()
				offered, answered := version(t, in.inv.Body()), version(t, u.ok.Body())
				callerIP, calleeIP := caller.addr.Addr().String(), callee.addr.Addr().String()
				scripted(t, callee, "callee", 30010, 200, 200, tc.code)
				ack := func() {
					if tc.method == sip.INVITE {
						callee.next(sip.ACK)
					}
				}

				// A new port only: what we relay is unchanged, so are the
				// versions, both ways.
				res := from.do(tc.method, sdpOf(callerIP, 20010), nil)
				if res.StatusCode != 200 {
					t.Fatalf("refresh answered %d", res.StatusCode)
				}
				if v := version(t, callee.next(tc.method).Body()); v != offered {
					t.Errorf("relayed unchanged offer has o= version %d, want %d, the initial offer's", v, offered)
				}
				if v := version(t, res.Body()); v != answered {
					t.Errorf("relayed unchanged answer has o= version %d, want %d", v, answered)
				}
				ack()

				// Accepted and changed: the offer's version steps; the
				// callee's new port is used.
				res = from.do(tc.method, withDir(sdpOf(callerIP, 20010), "sendrecv"), nil)
				if res.StatusCode != 200 {
					t.Fatalf("first offer answered %d", res.StatusCode)
				}
				got := callee.next(tc.method)
				if v := version(t, got.Body()); v != offered+1 {
					t.Errorf("relayed offer has o= version %d, want %d (the initial offer's %d plus one)", v, offered+1, offered)
				}
				if v := version(t, res.Body()); v != answered {
					t.Errorf("relayed answer, unchanged, has o= version %d, want %d", v, answered)
				}
				ack()
				before := stateOf(t, h, u.inv.CallID().Value())
				if before.remote[caller.legOf(h)] != netip.MustParseAddrPort(callerIP+":20010") ||
					before.remote[callee.legOf(h)] != netip.MustParseAddrPort(calleeIP+":30010") {
					t.Fatalf("accepted offer not applied: remotes %v", before.remote)
				}

				// Refused: a hold to a new port. Nothing may change.
				res = from.do(tc.method, withDir(sdpOf(callerIP, 20020), "sendonly"), nil)
				if res.StatusCode != tc.code {
					t.Fatalf("refused offer answered %d, want the callee's %d", res.StatusCode, tc.code)
				}
				callee.next(tc.method)
				if after := stateOf(t, h, u.inv.CallID().Value()); after != before {
					t.Errorf("a refused offer changed the call:\nbefore %+v\nafter  %+v", before, after)
				}

				// The next offer (a change again: no a=sendrecv) steps from the last
				// one committed, not from the refused one.
				res = from.do(tc.method, sdpOf(callerIP, 20030), nil)
				if res.StatusCode != 200 {
					t.Fatalf("third offer answered %d", res.StatusCode)
				}
				if v := version(t, callee.next(tc.method).Body()); v != offered+2 {
					t.Errorf("offer after a refused one has o= version %d, want %d", v, offered+2)
				}
				if v := version(t, res.Body()); v != answered {
					t.Errorf("answer after a refused offer has o= version %d, want %d", v, answered)
				}
			})
		})
	}
}

// legOf is the relay leg on which the B2BUA talks to a.
func (a *agent) legOf(h *harness) rtpbridge.Leg {
	if a == h.pbx {
		return rtpbridge.LegA
	}
	return rtpbridge.LegB
}

// Item 4, glare: while an offer we relayed on a dialog is unanswered, an
// offer from that dialog's peer gets 491 (RFC 3261 §14.2), and a second
// offer from the peer whose offer we are relaying gets 500 with
// Retry-After. Once the exchange is over, offers are taken again.
func TestGlareGets491(t *testing.T) {
	directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
		u, in := h.established(caller, callee, dst, "4930123456", "callee")
		from, far := u.caller(), in.callee()
		gate, got := make(chan struct{}), make(chan struct{})
		var once sync.Once
		callee.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
			once.Do(func() { close(got) })
			select {
			case <-gate:
			case <-time.After(wait):
			}
			respond(t, tx, req, 200, "OK", "callee", sdpOf(callee.addr.Addr().String(), 30010))
		})
		first := make(chan *sip.Response, 1)
		from.cseq++
		req := from.request(sip.INVITE, from.cseq, sdpOf(caller.addr.Addr().String(), 20010))
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			res, err := caller.client.Do(ctx, req, sipgo.ClientRequestBuild)
			if err != nil {
				t.Error(err)
			}
			first <- res
		}()
		select {
		case <-got:
		case <-time.After(wait):
			t.Fatal("the callee never got the relayed re-INVITE")
		}
		if res := far.do(sip.INVITE, sdpOf(callee.addr.Addr().String(), 30020), nil); res.StatusCode != 491 {
			t.Errorf("the callee's re-INVITE crossing ours answered %d, want 491", res.StatusCode)
		}
		res := from.do(sip.INVITE, sdpOf(caller.addr.Addr().String(), 20020), nil)
		if res.StatusCode != 500 || res.GetHeader("Retry-After") == nil {
			t.Errorf("the caller's second re-INVITE answered %d (Retry-After %v), want 500 with Retry-After", res.StatusCode, res.GetHeader("Retry-After"))
		}
		close(gate)
		if res := <-first; res == nil || res.StatusCode != 200 {
			t.Fatalf("the first re-INVITE answered %v", res)
		}
		from.ack(req.CSeq().SeqNo, nil)
		callee.next(sip.ACK)
		// The exchange is over: the callee may offer now.
		answerReinvites(t, callee, "callee", "")
		if res := far.do(sip.INVITE, sdpOf(callee.addr.Addr().String(), 30030), nil); res.StatusCode != 200 {
			t.Errorf("re-INVITE after the exchange answered %d", res.StatusCode)
		}
	})
}

// Item 4: our own re-INVITE (the NAT repair) that gets 491 is sent again
// after the RFC 3261 §14.1 delay: we chose the provider leg's Call-ID, so
// 2.1 to 4 s.
func TestOwnReinviteRetriedAfter491(t *testing.T) {
	h := newHarness(t)
	u, _ := h.established(h.pbx, h.prov, h.lan.addr, "0301234567", "prov")
	scripted(t, h.prov, "prov", 30000, 491, 200)
	h.b.OnNoInbound(u.inv.CallID().Value(), rtpbridge.LegB)
	first := h.prov.next(sip.INVITE)
	refused := time.Now()
	second := h.prov.next(sip.INVITE)
	if waited := time.Since(refused); waited < 2100*time.Millisecond {
		t.Errorf("retried after %s, want at least 2.1 s (RFC 3261 §14.1, Call-ID owner)", waited)
	}
	if second.CSeq().SeqNo <= first.CSeq().SeqNo {
		t.Errorf("retry CSeq %d after %d", second.CSeq().SeqNo, first.CSeq().SeqNo)
	}
	if v1, v2 := version(t, first.Body()), version(t, second.Body()); v2 < v1 {
		t.Errorf("retry o= version %d went back from %d", v2, v1)
	}
	if ack := h.prov.next(sip.ACK); ack.CSeq().SeqNo != second.CSeq().SeqNo {
		t.Errorf("ACK CSeq %d for the retry's %d", ack.CSeq().SeqNo, second.CSeq().SeqNo)
	}
}

func TestGlareDelayBounds(t *testing.T) {
	for range 1000 {
		if d := glareDelay(true); d < 2100*time.Millisecond || d > 4*time.Second || d%(10*time.Millisecond) != 0 {
			t.Fatalf("owner delay %s", d)
		}
		if d := glareDelay(false); d < 0 || d > 2*time.Second || d%(10*time.Millisecond) != 0 {
			t.Fatalf("non-owner delay %s", d)
		}
	}
}

// Item 4: our 2xx to a re-INVITE is sent again until its ACK comes
// (RFC 3261 §13.3.1.4; sipgo's server transaction leaves that to us).
func TestReinvite2xxRetransmittedUntilAck(t *testing.T) {
	directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
		u, _ := h.established(caller, callee, dst, "4930123456", "callee")
		answerReinvites(t, callee, "callee", "")
		from := u.caller()
		from.cseq++
		req := from.request(sip.INVITE, from.cseq, sdpOf(caller.addr.Addr().String(), 20010))
		tx, err := caller.client.TransactionRequest(context.Background(), req, sipgo.ClientRequestBuild)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Terminate()
		again := make(chan struct{})
		var once sync.Once
		tx.(*sip.ClientTx).OnRetransmission(func(*sip.Response) { once.Do(func() { close(again) }) })
		for res := range tx.Responses() {
			if res.StatusCode >= 200 {
				if res.StatusCode != 200 {
					t.Fatalf("re-INVITE answered %d", res.StatusCode)
				}
				break
			}
		}
		select {
		case <-again:
		case <-time.After(wait):
			t.Fatal("our 2xx to the re-INVITE was never sent again while unacknowledged")
		}
		from.ack(from.cseq, nil)
	})
}

// Item 4: the SDP in an ACK is the answer to the offer we made in our
// 2xx (an offerless re-INVITE, RFC 3264 §4): the relay follows it.
func TestAckAnswerIsTaken(t *testing.T) {
	h := newHarness(t)
	_, in := h.established(h.pbx, h.prov, h.lan.addr, "0301234567", "prov")
	far := in.callee()
	res := far.do(sip.INVITE, nil, sdpOf(provIP, 31000))
	if res.StatusCode != 200 || len(res.Body()) == 0 {
		t.Fatalf("offerless re-INVITE answered %d with %q", res.StatusCode, res.Body())
	}
	h.media.session(0).awaitRemote(t, rtpbridge.LegB, netip.MustParseAddrPort(provIP+":31000"))
}

// Item 2, delayed offer: an INVITE without SDP, from either side, goes on
// without SDP; the callee's offer in its 200 reaches the caller rewritten
// (our address, the caller leg's relay port), the caller's answer in its
// ACK reaches the callee rewritten in our ACK, and the relay points each
// leg at its remote.
func TestDelayedOffer(t *testing.T) {
	directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
		gate := make(chan struct{})
		callee.on(sip.INVITE, answer(t, callee, "callee", gate))
		u := caller.call(dst, "4930123456", nil)
		u.ringing()
		close(gate)
		res, _ := u.final()
		if res.StatusCode != 200 {
			t.Fatalf("INVITE without SDP answered %d, want 200", res.StatusCode)
		}
		inv := callee.next(sip.INVITE)
		if len(inv.Body()) != 0 || inv.GetHeader("Content-Type") != nil {
			t.Errorf("the callee got an offer we made up:\n%s", inv)
		}
		ms := h.media.session(0)
		cl, ce := caller.legOf(h), callee.legOf(h)
		ours := map[rtpbridge.Leg]string{rtpbridge.LegA: lanIP, rtpbridge.LegB: wanIP}
		offer := mustParse(t, res.Body())
		if m := offer.Media[0]; m.Addr.String() != ours[cl] || m.Port != int(ms.LocalPort(cl)) {
			t.Errorf("offer to the caller at %s:%d, want our %s:%d:\n%s", m.Addr, m.Port, ours[cl], ms.LocalPort(cl), res.Body())
		}
		calleeAt := netip.MustParseAddrPort(callee.addr.Addr().String() + ":30000")
		ms.awaitRemote(t, ce, calleeAt)

		ack := u.request(sip.ACK, u.inv.CSeq().SeqNo, sdpOf(caller.addr.Addr().String(), 20000))
		if err := caller.client.WriteRequest(ack, sipgo.ClientRequestBuild); err != nil {
			t.Fatal(err)
		}
		got := callee.next(sip.ACK)
		if len(got.Body()) == 0 {
			t.Fatalf("the callee's ACK carries no answer:\n%s", got)
		}
		answer := mustParse(t, got.Body())
		if m := answer.Media[0]; m.Addr.String() != ours[ce] || m.Port != int(ms.LocalPort(ce)) {
			t.Errorf("answer to the callee at %s:%d, want our %s:%d:\n%s", m.Addr, m.Port, ours[ce], ms.LocalPort(ce), got.Body())
		}
		ms.awaitRemote(t, cl, netip.MustParseAddrPort(caller.addr.Addr().String()+":20000"))
		if r := ms.remoteOf(ce); r != calleeAt {
			t.Errorf("callee leg moved to %v", r)
		}
		for _, leak := range []string{callee.addr.Addr().String()} {
			if strings.Contains(string(res.Body()), leak) {
				t.Errorf("offer to the caller names %s:\n%s", leak, res.Body())
			}
		}
		if strings.Contains(string(got.Body()), caller.addr.Addr().String()) {
			t.Errorf("answer to the callee names the caller:\n%s", got.Body())
		}
		// The call is up: the callee hangs up.
		in := &inDialog{a: callee, inv: inv, tag: "callee", cseq: 100, remote: map[bool]netip.AddrPort{true: h.lan.addr, false: h.wan.addr}[callee == h.pbx]}
		if res := in.do(sip.BYE, nil); res.StatusCode != 200 {
			t.Errorf("BYE answered %d", res.StatusCode)
		}
		caller.next(sip.BYE)
		if e := h.awaitEnded(); !e.Answered {
			t.Errorf("call ended %+v", e)
		}
	})
}

// bridgeMedia is the real relay behind Media, as the daemon wires it.
type bridgeMedia struct{ b *rtpbridge.Bridge }

func (m bridgeMedia) NewSession(id string, latching rtpbridge.Latching) (Session, error) {
	return m.b.NewSessionWith(id, rtpbridge.SessionOptions{Latching: [2]rtpbridge.Latching{rtpbridge.LegB: latching}})
}

// rtpEnd is a phone's RTP socket.
type rtpEnd struct {
	t    *testing.T
	conn *net.UDPConn
}

func newRTPEnd(t *testing.T, ip string) *rtpEnd {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(ip+":0")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rtpEnd{t: t, conn: conn}
}

func (e *rtpEnd) port() int { return e.conn.LocalAddr().(*net.UDPAddr).Port }

// talk sends RTP carrying word to the relay at to, every 20 ms like a
// phone, until other has received it (the relay drops what comes before
// its remote is known, so one packet would not prove anything).
func (e *rtpEnd) talk(to netip.AddrPort, word string, other *rtpEnd) {
	e.t.Helper()
	got := make(chan error, 1)
	go func() { got <- other.hear(word) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for seq := uint16(1); ; seq++ {
		pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 8, SequenceNumber: seq, Timestamp: uint32(seq) * 160, SSRC: 0x1234},
			Payload: []byte(word)}
		raw, err := pkt.Marshal()
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.conn.WriteToUDPAddrPort(raw, to); err != nil {
			e.t.Fatal(err)
		}
		select {
		case err := <-got:
			if err != nil {
				e.t.Fatalf("%s never arrived: %v", word, err)
			}
			return
		case <-tick.C:
		}
	}
}

// hear reads until an RTP packet carrying word arrives (pinhole and
// keepalive packets come too).
func (e *rtpEnd) hear(word string) error {
	if err := e.conn.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, err := e.conn.Read(buf)
		if err != nil {
			return err
		}
		var pkt rtp.Packet
		if pkt.Unmarshal(buf[:n]) == nil && string(pkt.Payload) == word {
			return nil
		}
	}
}

// Item 2 with the real relay: after a delayed-offer call, audio flows
// both ways through the ports the SDP named.
func TestDelayedOfferAudio(t *testing.T) {
	for _, out := range []bool{true, false} {
		t.Run(map[bool]string{true: "outbound", false: "inbound"}[out], func(t *testing.T) {
			br, err := rtpbridge.New(rtpbridge.Config{
				LAN: &rtpbridge.Pool{Address: lanIP, MinPort: 41000, MaxPort: 41999, Quarantine: -1},
				WAN: &rtpbridge.Pool{Address: wanIP, MinPort: 42000, MaxPort: 42999, Quarantine: -1},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { br.Close() })
			h := newHarness(t, func(c *Config) { c.Media = bridgeMedia{br} })
			caller, callee, dst := h.prov, h.pbx, h.wan.addr
			if out {
				caller, callee, dst = h.pbx, h.prov, h.lan.addr
			}
			callerRTP, calleeRTP := newRTPEnd(t, caller.addr.Addr().String()), newRTPEnd(t, callee.addr.Addr().String())
			callee.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
				contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: callee.addr.Addr().String(), Port: int(callee.addr.Port())}}
				respond(t, tx, req, 200, "OK", "callee", sdpOf(callee.addr.Addr().String(), calleeRTP.port()), contact)
			})
			u := caller.call(dst, "4930123456", nil)
			res, _ := u.final()
			if res.StatusCode != 200 {
				t.Fatalf("INVITE without SDP answered %d", res.StatusCode)
			}
			ack := u.request(sip.ACK, u.inv.CSeq().SeqNo, sdpOf(caller.addr.Addr().String(), callerRTP.port()))
			if err := caller.client.WriteRequest(ack, sipgo.ClientRequestBuild); err != nil {
				t.Fatal(err)
			}
			calleeAck := callee.next(sip.ACK)
			toRelayFromCaller := mustParse(t, res.Body()).Media[0]
			toRelayFromCallee := mustParse(t, calleeAck.Body()).Media[0]
			callerRTP.talk(netip.AddrPortFrom(toRelayFromCaller.Addr, uint16(toRelayFromCaller.Port)), "hello-callee", calleeRTP)
			calleeRTP.talk(netip.AddrPortFrom(toRelayFromCallee.Addr, uint16(toRelayFromCallee.Port)), "hello-caller", callerRTP)
		})
	}
}

// Item 2, the failures: an offer in the 2xx we cannot relay, or an ACK
// without the caller's answer, still gets the callee its ACK, with an
// answer that declines every stream (RFC 3261 §13.2.2.4), then a BYE.
func TestDelayedOfferRefused(t *testing.T) {
	t.Run("unusable-offer", func(t *testing.T) {
		h := newHarness(t)
		h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
			video := []byte("v=0\r\no=peer 1 1 IN IP4 " + provIP + "\r\ns=-\r\nc=IN IP4 " + provIP + "\r\nt=0 0\r\nm=video 30000 RTP/AVP 96\r\n")
			respond(t, tx, req, 200, "OK", "callee", video,
				&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: provIP, Port: int(h.prov.addr.Port())}})
		})
		u := h.pbx.call(h.lan.addr, "0301234567", nil)
		if res, _ := u.final(); res.StatusCode != 488 {
			t.Errorf("answered %d, want 488", res.StatusCode)
		}
		checkDeclined(t, h.prov.next(sip.ACK))
		h.prov.next(sip.BYE)
	})
	t.Run("ack-without-answer", func(t *testing.T) {
		h := newHarness(t)
		gate := make(chan struct{})
		close(gate)
		h.prov.on(sip.INVITE, answer(t, h.prov, "callee", gate))
		u := h.pbx.call(h.lan.addr, "0301234567", nil)
		if res, _ := u.final(); res.StatusCode != 200 {
			t.Fatalf("answered %d", res.StatusCode)
		}
		u.ack()
		checkDeclined(t, h.prov.next(sip.ACK))
		h.prov.next(sip.BYE)
		h.pbx.next(sip.BYE)
		if e := h.awaitEnded(); e.Reason != "bad answer SDP" {
			t.Errorf("call ended %+v", e)
		}
	})
}

// checkDeclined: the ACK answers the offer and declines every stream.
func checkDeclined(t *testing.T, ack *sip.Request) {
	t.Helper()
	s := mustParse(t, ack.Body())
	for _, m := range s.Media {
		if m.Port != 0 {
			t.Errorf("ACK accepts stream %d (port %d):\n%s", m.Index, m.Port, ack.Body())
		}
	}
}
