package b2bua

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zaptest"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// Loopback addresses standing in for the networks, so that a leak of one
// side's address into the other is visible in the text.
const (
	wanIP      = "127.0.0.1" // the B2BUA's Internet socket
	provIP     = "127.0.0.2" // the provider
	lanIP      = "127.0.0.5" // the B2BUA's PBX socket
	pbxIP      = "127.0.0.6" // the PBX
	strangerIP = "127.0.0.7" // someone on the LAN who is not the PBX
)

// wait bounds every await in these tests: generous for a busy machine,
// reached only when something is broken.
const wait = 10 * time.Second

// readyConn tells when sipgo reads the socket: by then the socket is in
// sipgo's pool, and requests sent from it leave from this port.
// A test may hold a datagram back before sipgo sees it: the one way to
// make two messages cross on the wire without sleeping.
type readyConn struct {
	net.PacketConn
	once  sync.Once
	ready chan struct{}
	hold  atomic.Pointer[func([]byte)] // may block; called with each datagram read
}

func (c *readyConn) ReadFrom(p []byte) (int, net.Addr, error) {
	c.once.Do(func() { close(c.ready) })
	n, from, err := c.PacketConn.ReadFrom(p)
	if h := c.hold.Load(); h != nil && err == nil {
		(*h)(p[:n])
	}
	return n, from, err
}

// stack is a sipgo user agent, server and client on one loopback socket.
type stack struct {
	addr   netip.AddrPort
	conn   *readyConn
	ua     *sipgo.UserAgent
	srv    *sipgo.Server
	client *sipgo.Client
}

func newStack(t testing.TB, ip string, stray func(*sip.Response)) *stack {
	t.Helper()
	pc, err := net.ListenPacket("udp4", ip+":0")
	if err != nil {
		t.Fatalf("bind %s: %v", ip, err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	log := slog.New(zapslog.NewHandler(zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)).Core()))
	tl := []sip.TransactionLayerOption{sip.WithTransactionLayerLogger(log)}
	if stray != nil {
		tl = append(tl, sip.WithTransactionLayerUnhandledResponseHandler(stray))
	}
	ua, err := sipgo.NewUA(sipgo.WithUserAgentHostname(ip),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(log)),
		sipgo.WithUserAgentTransactionLayerOptions(tl...))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	client, err := sipgo.NewClient(ua, sipgo.WithClientConnectionAddr(addr.String()), sipgo.WithClientLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	return &stack{addr: addr, conn: &readyConn{PacketConn: pc, ready: make(chan struct{})}, ua: ua, srv: srv, client: client}
}

// serve runs the server until the test ends; the cleanup waits for it.
func (s *stack) serve(t testing.TB) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.srv.ServeUDP(s.conn)
	}()
	t.Cleanup(func() {
		s.ua.Close()
		s.conn.Close()
		<-done
	})
	select {
	case <-s.conn.ready:
	case <-time.After(wait):
		t.Fatal("sipgo never read its socket")
	}
}

// agent is a peer of the B2BUA, the PBX or the provider, on a real sipgo
// stack. It records every request it gets and answers them with the
// handler the test set for the method, else with a plain default.
type agent struct {
	*stack
	t testing.TB

	mu       sync.Mutex
	handlers map[sip.RequestMethod]sipgo.RequestHandler // guarded by mu
	texts    []string                                   // guarded by mu; every request as received
	pending  []*sip.Request                             // guarded by mu; not yet taken by next
	arrived  chan struct{}                              // guarded by mu; closed and replaced on each request
}

func newAgent(t testing.TB, ip string) *agent {
	a := &agent{stack: newStack(t, ip, nil), t: t, arrived: make(chan struct{}),
		handlers: map[sip.RequestMethod]sipgo.RequestHandler{}}
	for _, m := range []sip.RequestMethod{sip.INVITE, sip.ACK, sip.BYE, sip.CANCEL, sip.UPDATE, sip.OPTIONS, sip.PRACK} {
		a.srv.OnRequest(m, a.handle)
	}
	return a
}

// on sets how the agent answers method.
func (a *agent) on(m sip.RequestMethod, h sipgo.RequestHandler) {
	a.mu.Lock()
	a.handlers[m] = h
	a.mu.Unlock()
}

func (a *agent) handle(req *sip.Request, tx sip.ServerTransaction) {
	a.mu.Lock()
	a.texts = append(a.texts, req.String())
	a.pending = append(a.pending, req)
	close(a.arrived)
	a.arrived = make(chan struct{})
	h := a.handlers[req.Method]
	a.mu.Unlock()
	if h != nil {
		h(req, tx)
		return
	}
	switch req.Method {
	case sip.ACK, sip.CANCEL:
	case sip.INVITE:
		if sipmsg.Tag(req.To()) == "" {
			respond(a.t, tx, req, 500, "No Handler", "", nil)
			return
		}
		respond(a.t, tx, req, 200, "OK", "", sdpOf(a.addr.Addr().String(), 30002))
	default:
		respond(a.t, tx, req, 200, "OK", "", nil)
	}
}

// next takes the oldest request of method the agent got and has not
// handed out yet, waiting for one. Requests of other methods stay for
// their own next: sipgo handles each datagram in its own goroutine, so
// the order of arrival is not the order of sending.
func (a *agent) next(method sip.RequestMethod) *sip.Request {
	a.t.Helper()
	return a.take(func(r *sip.Request) bool { return r.Method == method }, string(method))
}

// take is next for any condition.
func (a *agent) take(match func(*sip.Request) bool, what string) *sip.Request {
	a.t.Helper()
	timeout := time.After(wait)
	for {
		a.mu.Lock()
		for i, r := range a.pending {
			if match(r) {
				a.pending = append(a.pending[:i], a.pending[i+1:]...)
				a.mu.Unlock()
				return r
			}
		}
		ch := a.arrived
		a.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			a.t.Fatalf("agent %s: no %s within %s", a.addr, what, wait)
			return nil
		}
	}
}

// any takes the oldest request not handed out yet, if there is one.
func (a *agent) any() (*sip.Request, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.pending) == 0 {
		return nil, false
	}
	r := a.pending[0]
	a.pending = a.pending[1:]
	return r, true
}

// received is the text of every request of method so far.
func (a *agent) received(method sip.RequestMethod) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, m := range a.texts {
		if strings.HasPrefix(m, string(method)+" ") {
			out = append(out, m)
		}
	}
	return out
}

// respond answers req on tx; a non-empty tag becomes the To tag, replacing
// the random one sipgo puts on every response.
func respond(t testing.TB, tx sip.ServerTransaction, req *sip.Request, code int, reason, tag string, body []byte, extra ...sip.Header) *sip.Response {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	if tag != "" {
		res.To().Params.Add("tag", tag)
	}
	for _, h := range extra {
		res.AppendHeader(h)
	}
	if body != nil {
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		res.SetBody(body)
	}
	if err := tx.Respond(res); err != nil {
		t.Logf("respond %d: %v", code, err)
	}
	return res
}

func sdpOf(ip string, port int) []byte {
	return []byte("v=0\r\no=peer 1 1 IN IP4 " + ip + "\r\ns=-\r\nc=IN IP4 " + ip + "\r\nt=0 0\r\n" +
		fmt.Sprintf("m=audio %d RTP/AVP 8 101\r\n", port) +
		"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n")
}

// fakeRouter sends every number to the provider agent.
type fakeRouter struct {
	dst    netip.AddrPort
	caller CallerID
	allow  []netip.Prefix // the trunk's provider addresses besides dst's
}

func (r fakeRouter) Route(dialled string) (Route, error) {
	return Route{Trunk: "provider", Dst: r.dst, Number: dialled, Domain: "sip.provider.test",
		User: "4930123456", AuthUser: "4930123456", Password: "secret", CallerID: r.caller, Allows: r.allows}, nil
}

// allows is the trunk's Allows: dst's address and the allow prefixes.
func (r fakeRouter) allows(ip netip.Addr) bool {
	if ip == r.dst.Addr() {
		return true
	}
	for _, p := range r.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// fakeMedia hands out sessions that relay nothing but remember what the
// B2BUA told them.
type fakeMedia struct {
	mu       sync.Mutex
	sessions []*fakeSession // guarded by mu
}

func (m *fakeMedia) NewSession(id string, _ rtpbridge.Latching) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := uint16(len(m.sessions))
	s := &fakeSession{ports: [2]uint16{40000 + 2*n, 50000 + 2*n}}
	m.sessions = append(m.sessions, s)
	return s, nil
}

// session returns the i-th session made (under the lock: the B2BUA makes
// them on sipgo's goroutines).
func (m *fakeMedia) session(i int) *fakeSession {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sessions[i]
}

// open is the number of sessions not closed.
func (m *fakeMedia) open() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, s := range m.sessions {
		s.mu.Lock()
		if !s.closed {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

type fakeSession struct {
	ports [2]uint16

	mu      sync.Mutex
	remote  [2]netip.AddrPort // guarded by mu
	changed chan struct{}     // guarded by mu; closed and replaced by SetRemote
	held    bool              // guarded by mu
	closed  bool              // guarded by mu
	rebinds []rtpbridge.Leg   // guarded by mu
}

// Rebind moves the leg 100 ports up, as a fresh pair would.
func (s *fakeSession) Rebind(l rtpbridge.Leg) (uint16, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rebinds = append(s.rebinds, l)
	s.ports[l] += 100
	return s.ports[l], nil
}

func (s *fakeSession) rebound() []rtpbridge.Leg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]rtpbridge.Leg(nil), s.rebinds...)
}

func (s *fakeSession) LocalPort(l rtpbridge.Leg) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ports[l]
}
func (s *fakeSession) SetRemote(l rtpbridge.Leg, rtp, rtcp netip.AddrPort) error {
	s.mu.Lock()
	s.remote[l] = rtp
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func (s *fakeSession) remoteOf(l rtpbridge.Leg) netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.remote[l]
}

// awaitRemote waits until the relay points leg at want.
func (s *fakeSession) awaitRemote(t testing.TB, l rtpbridge.Leg, want netip.AddrPort) {
	t.Helper()
	timeout := time.After(wait)
	for {
		s.mu.Lock()
		got, ch := s.remote[l], s.changed
		if ch == nil {
			s.changed = make(chan struct{})
			ch = s.changed
		}
		s.mu.Unlock()
		if got == want {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("leg %v points at %v, want %v", l, got, want)
		}
	}
}
func (s *fakeSession) SetRaw(bool) {}
func (s *fakeSession) SetHold(held bool) {
	s.mu.Lock()
	s.held = held
	s.mu.Unlock()
}
func (s *fakeSession) Established()           {}
func (s *fakeSession) Stats() rtpbridge.Stats { return rtpbridge.Stats{} }
func (s *fakeSession) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

// harness is a B2BUA between a PBX and a provider, all sipgo user agents
// on loopback, with a fake router and fake media: no root, no lab, no
// Server.
type harness struct {
	t     testing.TB
	b     *B2BUA
	lan   *stack // the B2BUA's PBX socket
	wan   *stack // the B2BUA's Internet socket
	pbx   *agent
	prov  *agent
	media *fakeMedia
	ended chan CallEnded
}

// trunkOptions are the settings of the one trunk a harness has.
type trunkOptions struct {
	caller  CallerID
	didFrom DIDSource
	allow   []netip.Prefix // trunks[].allow: the provider's other addresses
	// tune adjusts the B2BUA before the stacks serve (timers a test
	// shortens); nil: none.
	tune func(*B2BUA)
}

func newHarness(t testing.TB, opts ...func(*Config)) *harness {
	t.Helper()
	return newHarnessWith(t, trunkOptions{}, opts...)
}

func newHarnessWith(t testing.TB, o trunkOptions, opts ...func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, pbx: newAgent(t, pbxIP), prov: newAgent(t, provIP), media: &fakeMedia{},
		ended: make(chan CallEnded, 16)}
	stray := func(res *sip.Response) { h.b.OnStrayResponse(res) }
	h.lan, h.wan = newStack(t, lanIP, stray), newStack(t, wanIP, stray)
	cfg := Config{
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		LAN:    Side{Client: h.lan.client, Contact: func() netip.AddrPort { return h.lan.addr }},
		WAN:    Side{Client: h.wan.client, Contact: func() netip.AddrPort { return h.wan.addr }},
		PBX: PBXOptions{Listen: h.lan.addr, Addr: h.pbx.addr,
			Allow: []netip.Prefix{netip.MustParsePrefix(pbxIP + "/32")}},
		Router:      fakeRouter{dst: h.prov.addr, caller: o.caller, allow: o.allow},
		Media:       h.media,
		RingTimeout: wait,
		OnCallEnded: func(e CallEnded) { h.ended <- e },
	}
	for _, opt := range opts {
		opt(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.b = b
	if o.tune != nil {
		o.tune(b)
	}
	h.lan.srv.OnInvite(b.OnPBXInvite)
	h.lan.srv.OnAck(b.OnAck)
	h.lan.srv.OnBye(b.OnBye)
	h.lan.srv.OnUpdate(b.OnUpdate)
	h.lan.srv.OnPrack(b.OnPrack)
	// What the Server does on the Internet socket, for one trunk.
	h.wan.srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		if sipmsg.Tag(req.To()) != "" {
			b.OnReinvite(req, tx)
			return
		}
		called := CalledNumbers(req, o.didFrom)
		if len(called) == 0 || called[0] == "" {
			respond(t, tx, req, 404, "Not Found", "", nil)
			return
		}
		b.OnProviderInvite(Inbound{Trunk: "provider", DID: called[0], Allows: fakeRouter{dst: h.prov.addr, allow: o.allow}.allows}, req, tx)
	})
	h.wan.srv.OnAck(b.OnAck)
	h.wan.srv.OnBye(b.OnBye)
	h.wan.srv.OnUpdate(b.OnUpdate)
	h.wan.srv.OnPrack(b.OnPrack)
	for _, s := range []*stack{h.pbx.stack, h.prov.stack, h.lan, h.wan} {
		s.serve(t)
	}
	// Registered last, so it runs first: the calls end before the stacks
	// close.
	t.Cleanup(func() { b.Drain(); b.HangupAll("test over") })
	return h
}

// awaitEnded returns the next call-ended event.
func (h *harness) awaitEnded() CallEnded {
	h.t.Helper()
	select {
	case e := <-h.ended:
		return e
	case <-time.After(wait):
		h.t.Fatal("no call ended")
		return CallEnded{}
	}
}

// uac is a call a test agent placed: its INVITE and transaction.
type uac struct {
	a   *agent
	inv *sip.Request
	tx  sip.ClientTransaction
	ok  *sip.Response // the 2xx, once final saw it
}

// call sends an INVITE from a to the B2BUA socket at dst for user. A From
// or To among extra replaces the default one.
func (a *agent) call(dst netip.AddrPort, user string, body []byte, extra ...sip.Header) *uac {
	a.t.Helper()
	inv := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: user, Host: dst.Addr().String(), Port: int(dst.Port())})
	inv.AppendHeader(sipmsg.NewVia(a.addr))
	var from sip.Header = &sip.FromHeader{DisplayName: "Reception", Address: sip.Uri{Scheme: "sip", User: "200", Host: a.addr.Addr().String()},
		Params: sipmsg.Params("tag", sip.GenerateTagN(10))}
	var to sip.Header = &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: dst.Addr().String()}, Params: sip.NewParams()}
	var rest []sip.Header
	for _, h := range extra {
		switch h.(type) {
		case *sip.FromHeader:
			from = h
		case *sip.ToHeader:
			to = h
		default:
			rest = append(rest, h)
		}
	}
	inv.AppendHeader(from)
	inv.AppendHeader(to)
	inv.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "200", Host: a.addr.Addr().String(), Port: int(a.addr.Port())}})
	for _, h := range rest {
		inv.AppendHeader(h)
	}
	if body != nil && inv.ContentType() == nil { // extra may name another
		inv.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	}
	inv.SetBody(body)
	inv.SetDestination(dst.String())
	tx, err := a.client.TransactionRequest(context.Background(), inv, sipgo.ClientRequestBuild)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(tx.Terminate)
	return &uac{a: a, inv: inv, tx: tx}
}

// final reads responses until a final one and returns it with the
// provisional ones before it.
func (u *uac) final() (*sip.Response, []*sip.Response) {
	u.a.t.Helper()
	var prov []*sip.Response
	timeout := time.After(wait)
	for {
		select {
		case res := <-u.tx.Responses():
			if res.StatusCode < 200 {
				prov = append(prov, res)
				continue
			}
			if res.IsSuccess() {
				u.ok = res
			}
			return res, prov
		case <-u.tx.Done():
			u.a.t.Fatalf("INVITE transaction ended without a final response: %v", u.tx.Err())
		case <-timeout:
			u.a.t.Fatal("no final response")
		}
	}
}

// request builds an in-dialog request on the call's dialog (after its 2xx).
func (u *uac) request(method sip.RequestMethod, cseq uint32, body []byte) *sip.Request {
	target := u.inv.Recipient
	if c := u.ok.Contact(); c != nil {
		target = c.Address
	}
	req := sip.NewRequest(method, target)
	req.AppendHeader(sipmsg.NewVia(u.a.addr))
	req.AppendHeader(sip.HeaderClone(u.inv.From()))
	req.AppendHeader(sip.HeaderClone(u.ok.To()))
	req.AppendHeader(sip.HeaderClone(u.inv.CallID()))
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: method})
	if body != nil {
		req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	}
	req.SetBody(body)
	req.SetDestination(u.inv.Destination())
	return req
}

func (u *uac) ack() {
	u.a.t.Helper()
	ack := u.request(sip.ACK, u.inv.CSeq().SeqNo, nil)
	if err := u.a.client.WriteRequest(ack, sipgo.ClientRequestBuild); err != nil {
		u.a.t.Fatal(err)
	}
}

// do sends an in-dialog request and returns its final response.
func (u *uac) do(method sip.RequestMethod, cseq uint32, body []byte) *sip.Response {
	u.a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := u.a.client.Do(ctx, u.request(method, cseq, body), sipgo.ClientRequestBuild)
	if err != nil {
		u.a.t.Fatalf("%s: %v", method, err)
	}
	return res
}

// answer is a callee: 180, then, once the test closes gate, 200 with
// SDP, both with the To tag tag. The gate keeps the order: sipgo handles
// each datagram in its own goroutine, so a 180 and a 200 sent back to
// back can reach the B2BUA in either order.
func answer(t testing.TB, a *agent, tag string, gate <-chan struct{}) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: a.addr.Addr().String(), Port: int(a.addr.Port())}}
		respond(t, tx, req, 180, "Ringing", tag, nil)
		select {
		case <-gate:
		case <-time.After(wait):
			t.Error("the test never let the callee answer")
		}
		respond(t, tx, req, 200, "OK", tag, sdpOf(a.addr.Addr().String(), 30000), contact)
	}
}

// next is the next response to the INVITE.
func (u *uac) next() *sip.Response {
	u.a.t.Helper()
	select {
	case res := <-u.tx.Responses():
		if res.IsSuccess() {
			u.ok = res
		}
		return res
	case <-time.After(wait):
		u.a.t.Fatal("no response")
		return nil
	}
}

// ringing reads responses up to the 180 and returns it.
func (u *uac) ringing() *sip.Response {
	u.a.t.Helper()
	for {
		res := u.next()
		if res.StatusCode == 180 {
			return res
		}
		if res.StatusCode >= 200 {
			u.a.t.Fatalf("got %d before any 180", res.StatusCode)
		}
	}
}

// inDialog is the dialog a callee agent accepted: enough to send
// requests back to the B2BUA on it.
type inDialog struct {
	a      *agent
	inv    *sip.Request // the INVITE as the callee got it
	tag    string       // the callee's To tag
	cseq   uint32
	remote netip.AddrPort
}

func (d *inDialog) request(method sip.RequestMethod, body []byte) *sip.Request {
	d.cseq++
	return d.callee().request(method, d.cseq, body)
}

func (d *inDialog) do(method sip.RequestMethod, body []byte) *sip.Response {
	d.a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	res, err := d.a.client.Do(ctx, d.request(method, body), sipgo.ClientRequestBuild)
	if err != nil {
		d.a.t.Fatalf("%s: %v", method, err)
	}
	return res
}

// established places a call from caller through the B2BUA at dst to
// callee, which rings and answers with tag; the caller ACKs. It returns
// both ends.
func (h *harness) established(caller, callee *agent, dst netip.AddrPort, user, tag string) (*uac, *inDialog) {
	h.t.Helper()
	gate := make(chan struct{})
	callee.on(sip.INVITE, answer(h.t, callee, tag, gate))
	u := caller.call(dst, user, sdpOf(caller.addr.Addr().String(), 20000))
	u.ringing()
	close(gate)
	if res, _ := u.final(); res.StatusCode != 200 {
		h.t.Fatalf("call answered %d, want 200", res.StatusCode)
	}
	u.ack()
	inv := callee.next(sip.INVITE)
	callee.next(sip.ACK)
	src := h.wan.addr
	if callee == h.pbx {
		src = h.lan.addr
	}
	return u, &inDialog{a: callee, inv: inv, tag: tag, cseq: 100, remote: src}
}
