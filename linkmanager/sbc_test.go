package linkmanager

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// The provider's SBCs on loopback: two SRV targets of provider.test, and
// two more that DNS does not name.
const (
	sbc1IP     = "127.0.0.11" // _sip._udp.provider.test, priority 10
	sbc2IP     = "127.0.0.12" // _sip._udp.provider.test, priority 20
	otherSBCIP = "127.0.0.21" // the other trunk's SBC, in its allow list
	extraSBCIP = "127.0.0.22" // the provider's SBC outside DNS
)

// srvResolver is DNS for provider.test: one SRV record per SBC, in the
// order given, each SBC's name resolving to its IP.
type srvResolver struct{ sbcs []*sbc }

func (r srvResolver) LookupSRV(_ context.Context, _, _, name string) (string, []*net.SRV, error) {
	if name != "provider.test" {
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	var out []*net.SRV
	for i, s := range r.sbcs {
		out = append(out, &net.SRV{Target: fmt.Sprintf("sbc%d.provider.test.", i+1), Port: s.addr.Port(),
			Priority: uint16(10 * (i + 1)), Weight: 1})
	}
	return "", out, nil
}

func (r srvResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	for i, s := range r.sbcs {
		if host == fmt.Sprintf("sbc%d.provider.test", i+1) {
			return []netip.Addr{s.addr.Addr()}, nil
		}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// sbc is a provider SBC: a real sipgo user agent on its own loopback
// address. It answers INVITEs with its handler and places calls.
type sbc struct {
	t      *testing.T
	addr   netip.AddrPort
	client *sipgo.Client

	mu      sync.Mutex
	invites int                  // guarded by mu
	onInv   sipgo.RequestHandler // guarded by mu
}

func startSBC(t *testing.T, ip string) *sbc {
	t.Helper()
	pc := listenOn(t, ip)
	s := &sbc{t: t, addr: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
	log := slog.New(zapslog.NewHandler(zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)).Core()))
	ua, err := sipgo.NewUA(sipgo.WithUserAgentHostname(ip),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(log)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(log)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	if s.client, err = sipgo.NewClient(ua, sipgo.WithClientConnectionAddr(s.addr.String()), sipgo.WithClientLogger(log)); err != nil {
		t.Fatal(err)
	}
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		s.mu.Lock()
		s.invites++
		h := s.onInv
		s.mu.Unlock()
		if h != nil {
			h(req, tx)
		}
	})
	srv.OnAck(func(*sip.Request, sip.ServerTransaction) {})
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	ready := sharedconn.New(pc, zap.NewNop(), nil)
	done := make(chan struct{})
	go func() { defer close(done); srv.ServeUDP(ready) }()
	t.Cleanup(func() { ua.Close(); ready.Close(); <-done })
	<-ready.Ready()
	return s
}

func (s *sbc) on(h sipgo.RequestHandler) {
	s.mu.Lock()
	s.onInv = h
	s.mu.Unlock()
}

func (s *sbc) inviteCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.invites
}

// call sends an INVITE for user to dst and returns the final status, or 0
// when nothing came within wait (a dropped request).
func (s *sbc) call(dst netip.AddrPort, user string, wait time.Duration) int {
	s.t.Helper()
	inv := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: user, Host: dst.Addr().String(), Port: int(dst.Port())})
	inv.AppendHeader(sipmsg.NewVia(s.addr))
	inv.AppendHeader(&sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: "caller", Host: "provider.test"},
		Params: sipmsg.Params("tag", sip.GenerateTagN(10))})
	inv.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: "provider.test"}, Params: sip.NewParams()})
	inv.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "caller", Host: s.addr.Addr().String(), Port: int(s.addr.Port())}})
	inv.SetBody(nil)
	inv.SetDestination(dst.String())
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	tx, err := s.client.TransactionRequest(ctx, inv, sipgo.ClientRequestBuild)
	if err != nil {
		s.t.Fatal(err)
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.StatusCode >= 200 {
				return int(res.StatusCode)
			}
		case <-tx.Done():
			return 0
		case <-ctx.Done():
			return 0
		}
	}
}

// runServer builds a Server from opts on a fresh shared socket at wanIP
// (it fills in Conn, Keeper, Interval and Logger) and runs it until the
// test ends.
func runServer(t *testing.T, log *zap.Logger, opts Options) (*Server, *sharedconn.Conn) {
	t.Helper()
	conn := sharedconn.New(listenOn(t, wanIP), log, nil)
	keeper, err := stunkeeper.New(stunkeeper.Config{Interval: time.Second, Send: conn.Send, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetSTUNHandler(keeper.HandlePacket)
	conn.SetOnSend(keeper.NoteSent)
	opts.Conn, opts.Keeper, opts.Interval, opts.Logger = conn, keeper, time.Second, log
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return srv, conn
}

// sbcServer is a Server for trunks with DNS for provider.test and, with
// a PBX socket, the B2BUA.
func sbcServer(t *testing.T, dns trunk.Resolver, log *zap.Logger, trunks []trunk.Options, lan *sharedconn.Conn) (*Server, *sharedconn.Conn) {
	t.Helper()
	opts := Options{Resolver: dns, Trunks: trunks}
	if lan != nil {
		opts.PBXConn = lan
		opts.PBX = b2bua.PBXOptions{Addr: netip.MustParseAddrPort(pbxIP + ":5060"),
			Allow: []netip.Prefix{netip.MustParsePrefix(pbxIP + "/32")}}
		opts.Media = rtpbridge.Config{
			LAN: &rtpbridge.Pool{Address: lanIP, MinPort: 47000, MaxPort: 47199},
			WAN: &rtpbridge.Pool{Address: wanIP, MinPort: 48000, MaxPort: 48199},
		}
	}
	return runServer(t, log, opts)
}

func providerTrunk(allow ...string) trunk.Options {
	var p []netip.Prefix
	for _, a := range allow {
		p = append(p, netip.MustParsePrefix(a))
	}
	return trunk.Options{Name: "provider", Host: "provider.test", Domain: "provider.test", Username: "4930123456",
		Password: "secret", Expires: 300 * time.Second, Keepalive: config.KeepaliveOff,
		DIDs: []string{"4930123456"}, Allow: p}
}

// inboundTrunks are the trunks the "inbound call" log lines named.
func inboundTrunks(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.FilterMessage("inbound call").All() {
		out = append(out, e.ContextMap()["trunk"].(string))
	}
	return out
}

// Providers send INVITEs from SBCs other than the registrar. Every
// address of every SRV target is accepted, an SBC outside DNS only once
// trunks[].allow names it (applied by a reload), and a stranger stays
// dropped. An SBC that two trunks accept is matched by the number.
func TestProviderSBCsAndAllowList(t *testing.T) {
	sbc1, sbc2 := startSBC(t, sbc1IP), startSBC(t, sbc2IP)
	other, extra := startSBC(t, otherSBCIP), startSBC(t, extraSBCIP)
	stranger := startSBC(t, strangerIP)
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()))
	otherTrunk := trunk.Options{Name: "other", Host: "127.0.0.30", Port: 5060, Domain: "other.test", Username: "u",
		Password: "p", Expires: 300 * time.Second, Keepalive: config.KeepaliveOff, DIDs: []string{"4940555"},
		Allow: []netip.Prefix{netip.MustParsePrefix(otherSBCIP + "/32")}}
	srv, conn := sbcServer(t, srvResolver{sbcs: []*sbc{sbc1, sbc2}}, log, []trunk.Options{otherTrunk, providerTrunk()}, nil)
	local := conn.LocalAddrPort()
	await(t, "provider.test resolved", func() bool { return srv.trunkList()[1].Allows(sbc2.addr.Addr()) })

	// 480: accepted and matched to a DID (no PBX in this test).
	if got := sbc2.call(local, "4930123456", 10*time.Second); got != 480 {
		t.Errorf("INVITE from the second SRV target answered %d, want 480 (accepted)", got)
	}
	if got := other.call(local, "4940555", 10*time.Second); got != 480 {
		t.Errorf("INVITE from the other trunk's allow-listed SBC answered %d, want 480", got)
	}
	dropped := func(s *sbc, what string) {
		t.Helper()
		before := conn.Stats().DroppedSource
		// Silence for 700 ms (an answer would come at once), and the
		// drop counted, however long the read takes on a busy machine.
		if got := s.call(local, "4930123456", 700*time.Millisecond); got != 0 {
			t.Errorf("%s's INVITE answered %d, want it dropped", what, got)
		}
		await(t, what+"'s INVITE counted as dropped", func() bool { return conn.Stats().DroppedSource > before })
	}
	dropped(extra, "the SBC outside DNS and allow")
	dropped(stranger, "a stranger")

	// A response from the SBC outside DNS is dropped too, before sipgo.
	resp := "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP " + local.String() + ";branch=z9hG4bKnotours\r\nFrom: <sip:a@b>;tag=1\r\n" +
		"To: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
	rawFrom := listenOn(t, extraSBCIP)
	sendResponse := func() (droppedNow bool) {
		st := conn.Stats()
		if _, err := rawFrom.WriteToUDPAddrPort([]byte(resp), local); err != nil {
			t.Fatal(err)
		}
		await(t, "the response read", func() bool {
			now := conn.Stats()
			return now.DroppedSource > st.DroppedSource || now.SIPIn > st.SIPIn
		})
		return conn.Stats().DroppedSource > st.DroppedSource
	}
	if !sendResponse() {
		t.Error("a response from the SBC outside DNS and allow reached sipgo")
	}

	// The reload allows 127.0.0.16/29: the extra SBC, and the other
	// trunk's SBC a second time. The provider's DID from there is the
	// provider's call, although the other trunk, listed first, accepts
	// that SBC too.
	changed, err := srv.Reload(ReloadOptions{Trunks: []trunk.Options{otherTrunk, providerTrunk("127.0.0.16/29")}})
	if err != nil || strings.Join(changed, ",") != "trunk provider changed" {
		t.Fatalf("reload: %v, %v", changed, err)
	}
	if got := extra.call(local, "4930123456", 10*time.Second); got != 480 {
		t.Errorf("after the reload the allow-listed SBC's INVITE answered %d, want 480", got)
	}
	if sendResponse() {
		t.Error("after the reload a response from the allow-listed SBC is still dropped")
	}
	if got := other.call(local, "4930123456", 10*time.Second); got != 480 {
		t.Errorf("the provider's DID from an SBC both trunks accept answered %d, want 480", got)
	}
	if got := sbc1.call(local, "4930123456", 10*time.Second); got != 480 {
		t.Errorf("after the reload the first SRV target's INVITE answered %d, want 480", got)
	}
	dropped(stranger, "a stranger after the reload")
	if got, want := strings.Join(inboundTrunks(logs), ","), "provider,other,provider,provider,provider"; got != want {
		t.Errorf("inbound calls matched to trunks %s, want %s", got, want)
	}
}

// An outbound call goes to the first SRV target; its 503 moves the call
// to the second, where it is answered, and the next call starts there.
func TestOutboundCallFailsOverAcrossSRVTargets(t *testing.T) {
	sbc1, sbc2 := startSBC(t, sbc1IP), startSBC(t, sbc2IP)
	sbc1.on(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 503, "Service Unavailable", nil))
	})
	sbc2.on(func(req *sip.Request, tx sip.ServerTransaction) {
		ok := sip.NewResponseFromRequest(req, 200, "OK", nil)
		ok.To().Params.Add("tag", "sbc2")
		ok.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "callee", Host: sbc2IP, Port: int(sbc2.addr.Port())}})
		ok.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		ok.SetBody([]byte("v=0\r\no=sbc 1 1 IN IP4 " + sbc2IP + "\r\ns=-\r\nc=IN IP4 " + sbc2IP +
			"\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"))
		tx.Respond(ok)
	})
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	lan := sharedconn.New(listenOn(t, lanIP), log, nil)
	srv, _ := sbcServer(t, srvResolver{sbcs: []*sbc{sbc1, sbc2}}, log, []trunk.Options{providerTrunk()}, lan)
	await(t, "provider.test resolved", func() bool { return srv.trunkList()[0].Allows(sbc2.addr.Addr()) })

	pbx := listenOn(t, pbxIP)
	for i, id := range []string{"first", "second"} {
		placeCall(t, nil, pbx, lan.LocalAddrPort(), id)
		if got := sbc1.inviteCount(); got != 1 {
			t.Errorf("after call %d the first target got %d INVITEs, want 1: the second call skips it while it is held down", i+1, got)
		}
		if got := sbc2.inviteCount(); got != i+1 {
			t.Errorf("after call %d the second target got %d INVITEs, want %d", i+1, got, i+1)
		}
		// The B2BUA answers the PBX's BYE before the provider's: let it
		// finish, or the shutdown hangs the call up a second time.
		await(t, "call "+id+" over", func() bool { return srv.b2bua.Active() == 0 })
	}
}
