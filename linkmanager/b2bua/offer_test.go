package b2bua

import (
	"context"
	"net/netip"
	"strconv"
	"sync"
	"testing"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

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
	req.AppendHeader(sip.NewHeader("Via", "SIP/2.0/UDP "+e.a.addr.String()+";branch="+sip.GenerateBranch()))
	req.AppendHeader(sip.HeaderClone(e.from))
	req.AppendHeader(sip.HeaderClone(e.to))
	req.AppendHeader(sip.HeaderClone(e.callID))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: method})
	req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "peer", Host: e.a.addr.Addr().String(), Port: int(e.a.addr.Port())}})
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
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := e.a.client.Do(ctx, e.request(method, e.cseq, body), sipgo.ClientRequestBuild)
	if err != nil {
		e.a.t.Fatalf("%s: %v", method, err)
	}
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

// Items 3 and the o= bug: every offer relayed on a dialog carries one
// more than the last SDP we sent on it, every answer too; an offer the
// far end refuses (488, 491) leaves media, hold, versions and SDP exactly
// as they were (RFC 3264 §8), for re-INVITE and UPDATE, from either end.
func TestRefusedOfferRollsBack(t *testing.T) {
	for _, tc := range []struct {
		method sip.RequestMethod
		code   int
	}{{sip.INVITE, 488}, {sip.UPDATE, 491}} {
		t.Run(string(tc.method), func(t *testing.T) {
			directions(t, func(t *testing.T, h *harness, caller, callee *agent, dst netip.AddrPort) {
				u, in := h.established(caller, callee, dst, "4930123456", "callee")
				from, far := u.caller(), in.callee()
				offered, answered := version(t, in.inv.Body()), version(t, u.ok.Body())
				callerIP, calleeIP := caller.addr.Addr().String(), callee.addr.Addr().String()

				// Accepted: the callee's new port is used; both versions step.
				scripted(t, callee, "callee", 30010, 200, tc.code)
				res := from.do(tc.method, sdpOf(callerIP, 20010), nil)
				if res.StatusCode != 200 {
					t.Fatalf("first offer answered %d", res.StatusCode)
				}
				got := callee.next(tc.method)
				if v := version(t, got.Body()); v != offered+1 {
					t.Errorf("relayed offer has o= version %d, want %d (the initial offer's %d plus one)", v, offered+1, offered)
				}
				if v := version(t, res.Body()); v != answered+1 {
					t.Errorf("relayed answer has o= version %d, want %d", v, answered+1)
				}
				if tc.method == sip.INVITE {
					callee.next(sip.ACK)
				}
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

				// The next offer steps from the last one committed.
				res = from.do(tc.method, sdpOf(callerIP, 20030), nil)
				if res.StatusCode != 200 {
					t.Fatalf("third offer answered %d", res.StatusCode)
				}
				if v := version(t, callee.next(tc.method).Body()); v != offered+2 {
					t.Errorf("offer after a refused one has o= version %d, want %d", v, offered+2)
				}
				if v := version(t, res.Body()); v != answered+2 {
					t.Errorf("answer after a refused offer has o= version %d, want %d", v, answered+2)
				}
				_ = far
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
