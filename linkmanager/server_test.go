package linkmanager

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// udpRegistrar is a provider on a loopback socket: it challenges
// REGISTER, answers OPTIONS, and writes the packet source into Via
// received/rport like Kamailio's fix_nated_register.
type udpRegistrar struct {
	t    *testing.T
	conn *net.UDPConn

	mu   sync.Mutex
	seen []seenReq
}

type seenReq struct {
	method  sip.RequestMethod
	from    netip.AddrPort
	auth    bool
	expires string
}

func startUDPRegistrar(t *testing.T) *udpRegistrar {
	r := &udpRegistrar{t: t, conn: listenOn(t, wanIP)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		parser := sip.NewParser()
		for {
			n, from, err := r.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			msg, err := parser.ParseSIP(buf[:n])
			if err != nil {
				continue
			}
			req, ok := msg.(*sip.Request)
			if !ok {
				continue
			}
			r.answer(req, from)
		}
	}()
	t.Cleanup(func() { r.conn.Close(); <-done })
	return r
}

func (r *udpRegistrar) addr() netip.AddrPort { return r.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *udpRegistrar) answer(req *sip.Request, from netip.AddrPort) {
	s := seenReq{method: req.Method, from: from, auth: req.GetHeader("Authorization") != nil}
	if h := req.GetHeader("Expires"); h != nil {
		s.expires = h.Value()
	}
	r.mu.Lock()
	r.seen = append(r.seen, s)
	r.mu.Unlock()

	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	if req.Method == sip.REGISTER && !s.auth {
		res = sip.NewResponseFromRequest(req, 401, "Unauthorized", nil)
		res.AppendHeader(sip.NewHeader("WWW-Authenticate", `Digest realm="test", nonce="abc", algorithm=MD5`))
	}
	if v := res.Via(); v != nil {
		v.Params.Remove("received")
		v.Params.Remove("rport")
		v.Params.Add("received", from.Addr().String())
		v.Params.Add("rport", fmt.Sprint(from.Port()))
	}
	if _, err := r.conn.WriteToUDPAddrPort([]byte(res.String()), from); err != nil {
		r.t.Logf("registrar write: %v", err)
	}
}

func (r *udpRegistrar) requests() []seenReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenReq(nil), r.seen...)
}

// await polls cond until it holds or the deadline passes; it waits for an
// event, it does not time one.
func await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startServer runs a Server against reg; the returned stop cancels it and
// returns Run's result, and may be called more than once.
func startServer(t *testing.T, reg *udpRegistrar, keepalive string, edit ...func(*trunk.Options)) (*Server, *sharedconn.Conn, func() error) {
	t.Helper()
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	sock := listenOn(t, wanIP)
	conn := sharedconn.New(sock, log, nil)
	keeper, err := stunkeeper.New(stunkeeper.Config{Interval: time.Second, Send: conn.Send, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetSTUNHandler(keeper.HandlePacket)
	conn.SetOnSend(keeper.NoteSent)
	to := trunk.Options{
		Name: "provider", Host: "127.0.0.1", Port: int(reg.addr().Port()), Domain: "sip.provider.test",
		Username: "4930123456", Password: "secret", Expires: 300 * time.Second, Register: true,
		Keepalive: keepalive, DIDs: []string{"4930123456", "+4930123*"},
	}
	for _, e := range edit {
		e(&to)
	}
	srv, err := New(Options{
		Conn: conn, Keeper: keeper, Interval: time.Second, Logger: log,
		Trunks: []trunk.Options{to},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() { runErr = srv.Run(ctx); close(done) }()
	stop := func() error {
		cancel()
		<-done
		return runErr
	}
	t.Cleanup(func() { stop() })
	return srv, conn, stop
}

func TestServerEveryRequestLeavesFromSharedSocket(t *testing.T) {
	reg := startUDPRegistrar(t)
	srv, conn, stop := startServer(t, reg, config.KeepaliveOptions)
	local := conn.LocalAddrPort()

	await(t, "registration", func() bool { return srv.Status()[0].Registered })
	await(t, "an OPTIONS keepalive", func() bool {
		for _, r := range reg.requests() {
			if r.method == sip.OPTIONS {
				return true
			}
		}
		return false
	})
	st := srv.Status()[0]
	if st.Contact != local || st.Keepalive != config.KeepaliveOptions {
		t.Errorf("status = %+v, want Contact %v (what the registrar saw)", st, local)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil after a clean stop", err)
	}
	reqs := reg.requests()
	var authed, unregistered bool
	for i, r := range reqs {
		// The digest retry and the keepalive are where sipgo would pick
		// an ephemeral port if the socket were not pinned.
		if r.from != local {
			t.Errorf("request %d (%s auth=%v) came from %v, want the shared socket %v", i, r.method, r.auth, r.from, local)
		}
		authed = authed || r.auth
		unregistered = unregistered || (r.method == sip.REGISTER && r.auth && r.expires == "0")
	}
	if !authed || !unregistered {
		t.Errorf("requests %+v: want an authenticated REGISTER and an unregister (Expires: 0)", reqs)
	}
}

// sendRaw sends a SIP request from sock and returns the response, or ""
// if none came within wait.
func sendRaw(t *testing.T, sock *net.UDPConn, to netip.AddrPort, msg string, wait time.Duration) string {
	t.Helper()
	if _, err := sock.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		t.Fatal(err)
	}
	sock.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	for {
		n, _, err := sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return ""
		}
		// Skip provisional responses.
		if s := string(buf[:n]); !strings.HasPrefix(s, "SIP/2.0 1") {
			return s
		}
	}
}

func invite(user string, from netip.AddrPort, branch string) string {
	return fmt.Sprintf("INVITE sip:%s@192.0.2.1:65002 SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK%s;rport\r\n"+
		"From: <sip:caller@sip.provider.test>;tag=%s\r\n"+
		"To: <sip:%s@sip.provider.test>\r\n"+
		"Call-ID: %s@test\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"+
		"Contact: <sip:caller@%s>\r\nContent-Length: 0\r\n\r\n", user, from, branch, branch, user, branch, from)
}

func TestServerInboundRequests(t *testing.T) {
	reg := startUDPRegistrar(t)
	srv, conn, _ := startServer(t, reg, config.KeepaliveOff)
	await(t, "registration", func() bool { return srv.Status()[0].Registered })
	local := conn.LocalAddrPort()

	// The provider talks from its registrar socket. Our registrar fake
	// owns that socket's reads, so use another socket on the same IP:
	// requests are allowed by the provider's IP, not its port.
	provider := listenOn(t, wanIP)
	pAddr := provider.LocalAddr().(*net.UDPAddr).AddrPort()

	for _, tc := range []struct {
		user, want string
	}{
		{"4930123456", "SIP/2.0 480"},   // our DID: not yet routed to the PBX
		{"+49301234567", "SIP/2.0 480"}, // prefix DID with an extension digit
		{"4940999", "SIP/2.0 404"},      // not ours
	} {
		got := sendRaw(t, provider, local, invite(tc.user, pAddr, "b"+tc.user), 5*time.Second)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("INVITE for %s answered %q, want %s", tc.user, firstLine(got), tc.want)
		}
	}
	opt := strings.Replace(strings.Replace(invite("4930123456", pAddr, "opt"), "INVITE", "OPTIONS", 1), "1 INVITE", "1 OPTIONS", 1)
	if got := sendRaw(t, provider, local, opt, 5*time.Second); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Errorf("OPTIONS answered %q, want 200", firstLine(got))
	}

	// A stranger gets silence: no 403 that tells a scanner we exist.
	// The drop counter moves when the packet is read, so once it has,
	// no answer can follow.
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatalf("bind 127.0.0.2 (any Linux loopback has all of 127/8): %v", err)
	}
	defer stranger.Close()
	before := conn.Stats().DroppedSource
	sAddr := stranger.LocalAddr().(*net.UDPAddr).AddrPort()
	if _, err := stranger.WriteToUDPAddrPort([]byte(invite("4930123456", sAddr, "fraud")), local); err != nil {
		t.Fatal(err)
	}
	await(t, "the stranger's INVITE to be dropped", func() bool { return conn.Stats().DroppedSource > before })
	stranger.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := stranger.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Errorf("stranger got a %d-byte answer, want silence", n)
	}
}

// The trunk's did_from picks where the DID is read: with ruri, a DID in
// To alone is not ours; with a header, only the header counts.
func TestServerInboundDIDFrom(t *testing.T) {
	for _, tc := range []struct {
		didFrom, ruri, to, header, want string
	}{
		{"", "4940999", "4930123456", "", "SIP/2.0 480"}, // today's: the Request-URI, else To
		{"ruri", "4940999", "4930123456", "", "SIP/2.0 404"},
		{"to", "4940999", "4930123456", "", "SIP/2.0 480"},
		{"header:X-Called-Number", "4940999", "4940999", "4930123456", "SIP/2.0 480"},
		{"header:X-Called-Number", "4930123456", "4930123456", "", "SIP/2.0 404"},
	} {
		t.Run(tc.didFrom+"/"+tc.ruri+"/"+tc.to+"/"+tc.header, func(t *testing.T) {
			t.Parallel() // each has its own server and sockets; registering takes a while
			reg := startUDPRegistrar(t)
			srv, conn, _ := startServer(t, reg, config.KeepaliveOff, func(o *trunk.Options) { o.DIDFrom = tc.didFrom })
			await(t, "registration", func() bool { return srv.Status()[0].Registered })
			provider := listenOn(t, wanIP)
			pAddr := provider.LocalAddr().(*net.UDPAddr).AddrPort()
			msg := invite(tc.ruri, pAddr, "did")
			msg = strings.Replace(msg, "To: <sip:"+tc.ruri+"@", "To: <sip:"+tc.to+"@", 1)
			if tc.header != "" {
				msg = strings.Replace(msg, "Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nX-Called-Number: "+tc.header+"\r\n", 1)
			}
			if got := sendRaw(t, provider, conn.LocalAddrPort(), msg, 5*time.Second); !strings.HasPrefix(got, tc.want) {
				t.Errorf("answered %q, want %s", firstLine(got), tc.want)
			}
		})
	}
}

// A trunk's caller_id reaches the B2BUA with its route; a trunk without
// one routes as before.
func TestServerRouteCallerID(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		from, asserted, want string
		fromNumber           bool
		header               string
	}{
		{name: "defaults", want: "030555123"},
		{name: "number, ppi, e164-no-plus", from: config.FromUserNumber, asserted: config.AssertedPPI,
			want: "4930555123", fromNumber: true, header: b2bua.HeaderPPI},
		{name: "account, pai", from: config.FromUserAccount, asserted: config.AssertedPAI,
			want: "4930555123", header: b2bua.HeaderPAI},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := startUDPRegistrar(t)
			srv, _, _ := startServer(t, reg, config.KeepaliveOff, func(o *trunk.Options) {
				o.CallerFromUser, o.CallerAsserted, o.CountryCode = tc.from, tc.asserted, "49"
				if tc.from != "" {
					o.CallerFormat = config.NumberE164NoPlus
				}
			})
			await(t, "registration", func() bool { return srv.Status()[0].Registered })
			r, err := srv.Route("0301234567")
			if err != nil {
				t.Fatal(err)
			}
			c := r.CallerID
			if c.FromNumber != tc.fromNumber || c.Asserted != tc.header || c.Format == nil || c.Format("030555123") != tc.want {
				t.Errorf("caller ID %+v (030555123 written %q), want from number %v, header %q, number %q",
					c, c.Format("030555123"), tc.fromNumber, tc.header, tc.want)
			}
		})
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

func TestServerSeveralTrunksRegisterIndependently(t *testing.T) {
	good, dead := startUDPRegistrar(t), listenOn(t, wanIP) // dead: never answers
	mkTrunk := func(name string, port uint16) trunk.Options {
		return trunk.Options{Name: name, Host: "127.0.0.1", Port: int(port), Domain: name + ".test",
			Username: "u-" + name, Password: "p", Expires: 300 * time.Second, Register: true, Keepalive: config.KeepaliveOff}
	}
	srv, _ := runServer(t, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Options{Trunks: []trunk.Options{
		mkTrunk("dead", dead.LocalAddr().(*net.UDPAddr).AddrPort().Port()),
		mkTrunk("good", good.addr().Port()),
	}})
	// The dead provider's 10 s transaction timeout must not hold up the
	// other trunk.
	await(t, "the good trunk to register", func() bool { return srv.Status()[1].Registered })
	if st := srv.Status()[0]; st.Registered || st.Trunk != "dead" {
		t.Errorf("dead trunk status = %+v", st)
	}
}
