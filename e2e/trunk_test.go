//go:build linux

package e2e

// The daemon through the real NAT: issue 2, tests (a)-(g).

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

const regTimeout = 15 * time.Second

// durationField reads a zap duration (float seconds or "1.5s").
func durationField(e map[string]any, key string) (time.Duration, bool) {
	switch v := e[key].(type) {
	case float64:
		return time.Duration(v * float64(time.Second)), true
	case string:
		d, err := time.ParseDuration(v)
		return d, err == nil
	}
	return 0, false
}

func startRegistered(t *testing.T, l *Lab, cfg DaemonConfig) (*Daemon, map[string]any) {
	t.Helper()
	startBusyPBX(t, l)
	d := l.StartDaemon(cfg.YAML())
	e := d.WaitLog(t, regTimeout, Msg("registered", "trunk", "provider"))
	return d, e
}

// startBusyPBX puts a PBX on 192.168.100.20:5060 that answers every
// INVITE with 480. The daemon bridges calls for a DID to the PBX, so the
// phone getting that 480 proves the INVITE crossed the NAT, the daemon and
// the LAN; a 408 means it died on the way.
func startBusyPBX(t *testing.T, l *Lab) {
	t.Helper()
	if _, err := l.StartRegisteringUA(UASpec{NS: NSPBX, IP: PBXIP, Port: 5060, NoRegister: true}); err != nil {
		t.Fatalf("start the PBX: %v", err)
	}
}

// (a) The daemon registers through the NAT; the provider sees 198.51.100.1:65002.
// On SIGTERM it unregisters and exits 0.
func TestTrunkRegistersThroughNAT(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	start := time.Now()
	d, e := startRegistered(t, l, DaemonConfig{})
	t.Logf("registered after %v: %v", time.Since(start).Round(time.Millisecond), e)
	if got := Field(e, "public_addr"); got != daemonPublic {
		t.Errorf("public_addr = %q, want %s", got, daemonPublic)
	}
	c, err := l.WaitKamailioContact(TrunkUser, 5*time.Second, func(c ULContact) bool { return c.Received == daemonPublic })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("provider location: %+v", c)
	if !strings.Contains(c.Address, daemonPublic) {
		t.Errorf("Contact %s does not carry the public address %s", c.Address, daemonPublic)
	}
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || (code != 480 && code != 503) {
		t.Errorf("call to the DID: code %d err %v; want 480/503 from the daemon", code, err)
	}
	d.WaitLog(t, 5*time.Second, Msg("inbound call"))
	if code := d.Stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if _, err := d.AwaitLog(time.Second, Msg("unregistered", "trunk", "provider")); err != nil {
		t.Error(err)
	}
	if cs, err := l.KamailioContacts(TrunkUser); err != ErrNotRegistered {
		t.Errorf("after shutdown the provider still has %+v (err %v)", cs, err)
	}
}

// (b) After >= 2x the NAT UDP timeout idle, the phone's INVITE reaches the
// daemon. With keepalive off it must not (the control that shows the test is real).
func TestTrunkInboundAfterIdle(t *testing.T) {
	cases := []struct {
		name      string
		keepalive string
		opts      []LabOption
		wantCode  int // 0: 480 or 503 from the daemon
	}{
		{"auto-stun", "auto", nil, 0},
		{"auto-options", "auto", []LabOption{WithoutProviderSTUN()}, 0},
		{"crlf", "crlf", nil, 0},
		{"off", "off", nil, 408},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t, tc.opts...)
			d, _ := startRegistered(t, l, DaemonConfig{Keepalive: tc.keepalive})
			regAt := time.Now()
			if tc.keepalive == "auto" {
				e := d.WaitSeen(t, 30*time.Second, Msg("keepalive method chosen"))
				t.Logf("keepalive: %s (%s)", Field(e, "keepalive"), Field(e, "why"))
			}
			time.Sleep(time.Until(regAt.Add(idleWait)))
			code, err := l.CallDID(DID, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("keepalive %s: after %v idle the phone got %d", tc.keepalive, time.Since(regAt).Round(time.Second), code)
			if tc.wantCode != 0 {
				if code != tc.wantCode {
					t.Errorf("phone got %d, want %d", code, tc.wantCode)
				}
				if _, err := d.AwaitLog(time.Second, Msg("inbound call")); err == nil {
					t.Error("the INVITE reached the daemon although keepalive is off")
				}
				return
			}
			if code != 480 && code != 503 {
				t.Errorf("phone got %d, want 480/503 from the daemon", code)
			}
			d.WaitLog(t, 5*time.Second, Msg("inbound call"))
		})
	}
}

// (c) Redial: WAN 198.51.100.1 -> .2, conntrack flushed. The daemon is
// re-registered with the new address within interval + 2 s and inbound
// INVITEs reach it again; and back.
func TestTrunkRedial(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	d, _ := startRegistered(t, l, DaemonConfig{Interval: "10s"})
	for _, ip := range []string{WANIP2, WANIP1} {
		want := ip + ":" + strconv.Itoa(DaemonSIPPort)
		start := time.Now()
		if err := l.Redial(ip); err != nil {
			t.Fatal(err)
		}
		e := d.WaitLog(t, 12*time.Second+5*time.Second, func(e map[string]any) bool {
			return e["msg"] == "registered" && strings.Contains(Field(e, "contact"), want)
		})
		took := time.Since(start)
		t.Logf("redial to %s: re-registered after %v (%v)", ip, took.Round(time.Millisecond), e)
		if took > 12*time.Second {
			t.Errorf("re-registration took %v, want <= interval + 2 s", took)
		}
		if _, err := l.WaitKamailioContact(TrunkUser, 3*time.Second, func(c ULContact) bool { return c.Received == want }); err != nil {
			t.Error(err)
		}
		if cs, _ := l.KamailioContacts(TrunkUser); len(cs) != 1 {
			t.Errorf("provider has %d contacts after redial, want the stale one removed: %+v", len(cs), cs)
		}
		if code, err := l.CallDID(DID, 20*time.Second); err != nil || (code != 480 && code != 503) {
			t.Errorf("call after redial to %s: code %d err %v; want 480/503", ip, code, err)
		}
	}
}

// (d) A missed inbound packet moves the public port: the UNREPLIED conntrack
// entry of a dropped INVITE owns 198.51.100.1:65002 <-> provider:5060, so the
// daemon's next packet to the provider leaves from another port. The daemon
// notices and re-registers; calls reach it again.
func TestTrunkPortMovedByDroppedInvite(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	d, _ := startRegistered(t, l, DaemonConfig{Interval: "10s"})
	d.WaitSeen(t, 30*time.Second, Msg("keepalive method chosen"))
	var poisoned bool
	for attempt := 1; attempt <= 3 && !poisoned; attempt++ {
		// Forget the provider flow (as if it had timed out), then let the
		// provider's INVITE hit the router before the next keepalive does.
		if _, err := l.Exec(NSRouter, "conntrack", "-D", "-p", "udp", "--orig-src", DaemonIP, "--orig-port-src", "65002", "--orig-dst", ProviderIP); err != nil {
			t.Logf("conntrack -D: %v", err)
		}
		code, err := l.CallDID(DID, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		es, _ := l.ConntrackList()
		_, poisoned = droppedInvite(es, WANIP1)
		t.Logf("attempt %d: phone got %d, UNREPLIED entry: %v", attempt, code, poisoned)
	}
	if !poisoned {
		t.Fatal("could not make the router drop an INVITE (the keepalive always won the race)")
	}
	start := time.Now()
	e := d.WaitLog(t, 20*time.Second, func(e map[string]any) bool {
		return e["msg"] == "registered" && Field(e, "public_addr") != daemonPublic && strings.HasPrefix(Field(e, "public_addr"), WANIP1+":")
	})
	t.Logf("re-registered %v after the drop with %s", time.Since(start).Round(time.Millisecond), Field(e, "public_addr"))
	newAddr := Field(e, "public_addr")
	if _, err := l.WaitKamailioContact(TrunkUser, 3*time.Second, func(c ULContact) bool { return c.Received == newAddr }); err != nil {
		t.Error(err)
	}
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || (code != 480 && code != 503) {
		t.Errorf("call after the port moved: code %d err %v; want 480/503", code, err)
	}
}

// (e) No STUN server answers: registration works from the registrar's received/rport.
//
// The provider must never see the LAN address (issue 9 item 13): before
// anyone has told the daemon its public address, its first REGISTER used
// to carry 192.168.100.2 in Contact and Via. Everything the provider got
// from the daemon is checked.
func TestTrunkSTUNServerDown(t *testing.T) {
	t.Parallel()
	l := newLab(t, WithoutSTUNServer())
	capt := l.StartCapture(NSProvider, "eth0", "udp port 5060")
	_, e := startRegistered(t, l, DaemonConfig{})
	var leaks []string
	msgs := SIPMessages(pcapPackets(t, capt.Stop()))
	seen := 0
	for _, m := range msgs {
		if m.Src.Addr() != netip.MustParseAddr(WANIP1) {
			continue
		}
		seen++
		if strings.Contains(m.Text, "192.168.100.") {
			leaks = append(leaks, m.First)
		}
	}
	if seen == 0 {
		t.Error("no SIP from the daemon at the provider: the check proves nothing")
	}
	if len(leaks) > 0 {
		t.Errorf("%d of %d SIP messages the provider got from the daemon name a LAN address: %q", len(leaks), seen, leaks)
	}
	if got := Field(e, "public_addr"); got != daemonPublic {
		t.Errorf("public_addr = %q, want %s", got, daemonPublic)
	}
	if _, err := l.WaitKamailioContact(TrunkUser, 20*time.Second, func(c ULContact) bool {
		return c.Received == daemonPublic && strings.Contains(c.Address, daemonPublic)
	}); err != nil {
		t.Error(err)
	}
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || (code != 480 && code != 503) {
		t.Errorf("call: code %d err %v; want 480/503", code, err)
	}
}

// (f) Wrong password: a clear error and backoff, no tight loop.
func TestTrunkWrongPassword(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	d := l.StartDaemon(DaemonConfig{Password: "wrong-secret"}.YAML())
	e1 := d.WaitLog(t, regTimeout, Msg("registration failed", "trunk", "provider"))
	t.Logf("first failure: %v", e1)
	errText := strings.ToLower(Field(e1, "error"))
	if !strings.Contains(errText, "auth") && !strings.Contains(errText, "password") && !strings.Contains(errText, "credential") {
		t.Errorf("error %q does not say the credentials were refused", Field(e1, "error"))
	}
	r1, ok := durationField(e1, "retry_in")
	if !ok || r1 < time.Second {
		t.Errorf("retry_in = %v (%v), want a backoff of at least 1 s", e1["retry_in"], ok)
	}
	t.Logf("retry_in after the first failure: %v", r1)
	// Over a window, the provider must see only a few REGISTERs.
	time.Sleep(10 * time.Second)
	n := strings.Count(l.KamailioLog(), "REQ REGISTER")
	t.Logf("REGISTERs at the provider in the first ~10 s: %d", n)
	if n > 12 {
		t.Errorf("%d REGISTERs in ~10 s: a tight loop", n)
	}
	if d.Exited() {
		t.Errorf("daemon exited (%d) on a wrong password; it should keep retrying", d.ExitCode())
	}
	if _, err := l.KamailioContacts(TrunkUser); err != ErrNotRegistered {
		t.Errorf("registered with a wrong password? err %v", err)
	}
}

// (g) Port 65002 already in use: a clear start-up error, exit non-zero.
func TestTrunkPortInUse(t *testing.T) {
	t.Parallel()
	l := newLab(t, WithoutSTUNServer())
	busy, err := l.ListenUDP(NSLM, net.JoinHostPort(DaemonIP, strconv.Itoa(DaemonSIPPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	d := l.StartDaemon(DaemonConfig{}.YAML())
	code, err := d.Wait(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	log := d.Log()
	t.Logf("exit %d:\n%s", code, tail(log, 5))
	if code == 0 {
		t.Error("exit code 0 with the port in use")
	}
	if !strings.Contains(log, "in use") || !strings.Contains(log, "65002") {
		t.Errorf("the error does not say that port 65002 is in use:\n%s", log)
	}
}

// The daemon's packet rate stays bounded: with interval 10 s the STUN
// servers and the provider see a handful of packets per interval, not a flood.
func TestTrunkPacketRateBounded(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	startRegistered(t, l, DaemonConfig{Interval: "10s"})
	const window = 30 * time.Second
	s0, err := l.UDPInDatagrams(NSSTUN)
	if err != nil {
		t.Fatal(err)
	}
	p0, _ := l.UDPInDatagrams(NSProvider)
	var samples []string
	for i := 0; i < int(window/(5*time.Second)); i++ {
		time.Sleep(5 * time.Second)
		s, _ := l.UDPInDatagrams(NSSTUN)
		p, _ := l.UDPInDatagrams(NSProvider)
		samples = append(samples, fmt.Sprintf("+%ds stun=%d provider=%d", 5*(i+1), s-s0, p-p0))
	}
	s1, _ := l.UDPInDatagrams(NSSTUN)
	p1, _ := l.UDPInDatagrams(NSProvider)
	t.Logf("packets received in %v: STUN servers %d, provider %d (%s)", window, s1-s0, p1-p0, strings.Join(samples, ", "))
	// 3 intervals; allow retransmissions and failover generously.
	if s1-s0 > 30 {
		t.Errorf("STUN servers got %d packets in %v: the daemon floods them", s1-s0, window)
	}
	if p1-p0 > 30 {
		t.Errorf("provider got %d packets in %v: the daemon floods it", p1-p0, window)
	}
}

// Other hosts of the provider's network (issue 8 item 9): an SBC inside
// the trunk's allow prefix, and one outside it. Both are more addresses
// of the provider namespace; neither is the registrar (.50).
const (
	providerSBCs   = "198.51.100.48/28" // trunks[].allow
	providerSBCIP  = "198.51.100.52"    // in providerSBCs
	strangerSBCIP  = "198.51.100.90"    // outside it
	otherSBCsTrunk = `allow: ["` + providerSBCs + `"]`
)

// Issue 8 item 9: providers send INVITEs from other SBC addresses than
// the registrar's, straight to the port forward of 65002 (as a provider
// does once the admin has forwarded it). A call for the DID from an SBC
// in trunks[].allow reaches the PBX and has two-way audio. The control,
// in the same daemon: the same INVITE from an address outside allow gets
// no answer at all (counted as source_not_allowed), the PBX sees no call,
// and the registrar's own address is still answered on that socket.
func TestTrunkAllowOtherSBC(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{LogLevel: "info", Trunk: otherSBCsTrunk})
	if err := l.ForwardSIP(); err != nil {
		t.Fatal(err)
	}
	l.addHostAddr(t, NSProvider, providerSBCIP)
	l.addHostAddr(t, NSProvider, strangerSBCIP)
	dst := netip.AddrPortFrom(netip.MustParseAddr(WANIP1), DaemonSIPPort)

	sbc := Endpoint{Name: "sbc", NS: NSProvider, IP: providerSBCIP, Port: 5060, Target: dst.String(), Number: DID}
	fromSBC := callDir{"from another SBC", sbc, PBXCallee}
	start := time.Now()
	r := placeCall(t, l, fromSBC, "uac-pcap.xml", "uas-pcap.xml", 8500*time.Millisecond, 0)
	defer r.ExplainOnFailure(t)
	requireCompleted(t, r, 200)
	checkTwoWay(t, r, fromSBC, 1)
	if r.Callee.Received("BYE") == 0 {
		t.Error("the PBX got no BYE after the SBC hung up")
	}
	t.Logf("call from %s (allow %s) answered and hung up in %v", providerSBCIP, providerSBCs, time.Since(start).Round(time.Millisecond))

	// The control: a stranger's INVITE and its retransmission.
	pbx := l.startRawUA(t, NSPBX, PBXIP+":5060", ringingPBX)
	stranger := l.startRawUA(t, NSProvider, strangerSBCIP+":5060", nil)
	ruri := fmt.Sprintf("sip:%s@%s", DID, dst)
	inv := rawRequest{Method: "INVITE", RURI: ruri, Via: stranger.Addr(),
		From: "<sip:+4915112345678@" + SIPDomain + ">;tag=s1", To: "<sip:" + DID + "@" + SIPDomain + ">",
		CallID: "stranger@" + strangerSBCIP, CSeq: 1, Body: labSDP(strangerSBCIP, 30000)}
	before := l.awaitMetric(t, sourceNotAllowed, 0, 0)
	for i := 1; i <= 2; i++ {
		stranger.Send(dst, inv.String())
		if got := l.awaitMetric(t, sourceNotAllowed, before+float64(i), 10*time.Second); got < before+float64(i) {
			t.Fatalf("the daemon counted %.0f of %d INVITEs from %s (not in allow) as %s", got-before, i, strangerSBCIP, sourceNotAllowed)
		}
	}
	// A barrier on the same socket: the registrar's address is answered.
	probe := l.startRawUA(t, NSProvider, ProviderIP+":5064", nil)
	opt := rawRequest{Method: "OPTIONS", RURI: ruri, Via: probe.Addr(), From: "<sip:probe@" + SIPDomain + ">;tag=p1",
		To: "<sip:" + DID + "@" + SIPDomain + ">", CallID: "probe@" + ProviderIP, CSeq: 1}
	probe.Send(dst, opt.String())
	if _, ok := probe.Await(10*time.Second, func(m WireSIP) bool { return m.CallID == opt.CallID && m.Code == 200 }); !ok {
		t.Fatalf("OPTIONS from the registrar's address %s got no 200", ProviderIP)
	}
	if got := stranger.Received(func(WireSIP) bool { return true }); len(got) > 0 {
		t.Errorf("%s (not in allow %s) got %d answers, want silence; first: %s", strangerSBCIP, providerSBCs, len(got), got[0].First)
	}
	if got := pbx.Received(func(m WireSIP) bool { return m.Method == "INVITE" }); len(got) > 0 {
		t.Errorf("the PBX got %d INVITEs from the stranger's call", len(got))
	}
	stopDaemon(t, d)
}
