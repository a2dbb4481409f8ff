//go:build linux

package e2e

// Self-tests of the lab, without the daemon: sipp (and, where one socket must
// carry SIP and STUN, a UDP socket the test opens inside the "lm" namespace)
// play the trunk on 192.168.100.2:65002 behind the NAT. They prove the lab
// reproduces the measured NAT facts (shared/notes/nat-findings.md) and would
// catch a lab that is accidentally wide open.

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// idleWait is how long a mapping is left idle: at least twice the NAT UDP timeout.
const idleWait = 2*NATUDPTimeout + 5*time.Second

var daemonPublic = fmt.Sprintf("%s:%d", WANIP1, DaemonSIPPort)

func registerOnce(t *testing.T, l *Lab) {
	t.Helper()
	ua, err := l.StartRegisteringUA(UASpec{Lifetime: 2 * time.Second, OneShot: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ua.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// providerFlow finds the router's entry for 192.168.100.2:65002 <-> provider:5060.
func providerFlow(es []ConntrackEntry) (ConntrackEntry, bool) {
	for _, e := range es {
		if e.Orig.Src == DaemonIP && e.Orig.Sport == DaemonSIPPort && e.Orig.Dst == ProviderIP && e.Orig.Dport == 5060 {
			return e, true
		}
	}
	return ConntrackEntry{}, false
}

// droppedInvite finds an UNREPLIED entry provider:5060 -> WAN:65002.
func droppedInvite(es []ConntrackEntry, wan string) (ConntrackEntry, bool) {
	for _, e := range es {
		if e.Orig.Src == ProviderIP && e.Orig.Sport == 5060 && e.Orig.Dst == wan && e.Orig.Dport == DaemonSIPPort && e.Unreplied {
			return e, true
		}
	}
	return ConntrackEntry{}, false
}

func dumpConntrack(t *testing.T, l *Lab, what string) []ConntrackEntry {
	t.Helper()
	es, err := l.ConntrackList()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range es {
		b.WriteString("  " + e.Raw + "\n")
	}
	t.Logf("router conntrack %s:\n%s", what, b.String())
	return es
}

// 1. A UA registers through the NAT; the provider stores 198.51.100.1:65002.
func TestLabReproducesNATRegister(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	ua, err := l.StartRegisteringUA(UASpec{Expires: 600})
	if err != nil {
		t.Fatal(err)
	}
	received, contact, expires, err := l.KamailioContact(TrunkUser)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("provider location: contact=%s received=%s expires=%d", contact, received, expires)
	if received != daemonPublic {
		t.Errorf("received = %q, want %s", received, daemonPublic)
	}
	if !strings.Contains(contact, DaemonIP+":65002") {
		t.Errorf("contact = %q, want the UA's private contact", contact)
	}
	if expires < 500 || expires > 600 {
		t.Errorf("expires = %d, want ~600", expires)
	}
	e, ok := providerFlow(dumpConntrack(t, l, "after REGISTER"))
	if !ok {
		t.Fatal("no conntrack entry for 192.168.100.2:65002 -> provider:5060")
	}
	if e.Reply.Dst != WANIP1 || e.Reply.Dport != DaemonSIPPort {
		t.Errorf("MASQUERADE did not preserve the port: reply tuple %v", e.Reply)
	}
	// With a fresh mapping the phone's INVITE reaches the UA (it answers 480).
	start := time.Now()
	code, err := l.CallDID(DID, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fresh mapping: phone got %d after %v", code, time.Since(start).Round(time.Millisecond))
	if code != 480 || ua.ReceivedINVITEs() != 1 {
		t.Errorf("phone got %d, UA saw %d INVITEs; want 480 and 1", code, ua.ReceivedINVITEs())
	}
	// "+DID" is routed too.
	if code, err := l.CallDID("+"+DID, 20*time.Second); err != nil || code != 480 {
		t.Errorf("call +DID: code %d, err %v; want 480", code, err)
	}
	// Not a DID: the provider refuses it itself.
	if code, err := l.CallDID("4940999999", 20*time.Second); err != nil || code != 404 {
		t.Errorf("call unknown number: code %d, err %v; want 404", code, err)
	}
}

// The Internet cannot reach the LAN except through replies: no route to
// 192.168.100.0/24, and unsolicited packets to the WAN address go nowhere.
func TestLabIsolation(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	if code, err := l.SIPOptions(NSPhone, PhoneIP+":0", DaemonIP+":65002", time.Second); err == nil {
		t.Errorf("phone reached 192.168.100.2 directly (code %d): the lab is open", code)
	}
	// A socket on the daemon host must not see unsolicited packets sent to the WAN address.
	conn, err := l.ListenUDP(NSLM, DaemonIP+":65002")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := l.SIPOptions(NSProvider, ProviderIP+":0", daemonPublic, time.Second); err == nil {
		t.Error("an unsolicited OPTIONS to the WAN address got an answer")
	}
	_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, from, err := conn.ReadFromUDP(make([]byte, 2048)); err == nil {
		t.Errorf("unsolicited packet reached the LAN host (%d bytes from %v)", n, from)
	}
	// The LAN can reach the Internet through the NAT, and sees itself mapped.
	capt := l.StartCapture(NSRouter, "wan", "udp port 3478")
	m, err := l.STUNBinding(NSLM, DaemonIP+":40000", STUN1Addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := CountPackets(capt.Stop(), "src host "+WANIP1+" and src port 40000"); err != nil || n < 1 {
		t.Errorf("capture on the router's WAN side: %d NATed STUN requests (err %v)", n, err)
	}
	if m.String() != WANIP1+":40000" {
		t.Errorf("STUN mapped %v, want %s:40000 (port-preserving MASQUERADE)", m, WANIP1)
	}
	// Kamailio answers STUN on its SIP port (stun module).
	m2, err := l.STUNBinding(NSLM, DaemonIP+":40001", ProviderAddr, 3*time.Second)
	if err != nil {
		t.Fatalf("provider does not answer STUN on 5060: %v", err)
	}
	t.Logf("STUN via coturn: %v; via provider :5060: %v", m, m2)
	// The PBX has no route to the Internet.
	if _, err := l.SIPOptions(NSPBX, PBXIP+":0", ProviderAddr, time.Second); err == nil {
		t.Error("the PBX reached the provider directly")
	}
}

// WithoutProviderSTUN: Kamailio answers OPTIONS but not STUN on 5060.
func TestLabProviderWithoutSTUN(t *testing.T) {
	t.Parallel()
	l := newLab(t, WithoutProviderSTUN(), WithoutSTUNServer())
	if _, err := l.STUNBinding(NSLM, DaemonIP+":40001", ProviderAddr, 2*time.Second); err == nil {
		t.Error("provider answered STUN although started with NOSTUN")
	}
	if _, err := l.STUNBinding(NSLM, DaemonIP+":40002", STUN1Addr, time.Second); err == nil {
		t.Error("coturn answered although the lab was started without STUN server")
	}
	code, err := l.SIPOptions(NSLM, DaemonIP+":40003", ProviderAddr, 3*time.Second)
	if err != nil || code != 200 {
		t.Errorf("OPTIONS from behind the NAT: code %d err %v; want 200", code, err)
	}
	// CRLF keepalives are harmless: Kamailio keeps answering.
	conn, err := l.ListenUDP(NSLM, DaemonIP+":40004")
	if err != nil {
		t.Fatal(err)
	}
	raddr, _ := net.ResolveUDPAddr("udp4", ProviderAddr)
	for i := 0; i < 3; i++ {
		if _, err := conn.WriteToUDP([]byte("\r\n\r\n"), raddr); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	if code, err := l.SIPOptions(NSLM, DaemonIP+":40004", ProviderAddr, 3*time.Second); err != nil || code != 200 {
		t.Errorf("OPTIONS after CRLF keepalives: code %d err %v", code, err)
	}
}

// 2 + finding 3. Registered, then idle for >= 2x the NAT timeout with no
// keepalive: the phone's INVITE is dropped at the router (408 at the phone),
// conntrack keeps an UNREPLIED entry, and that entry takes the public port:
// the next packet from :65002 to the provider leaves from another port.
func TestLabReproducesNATIdleDropsInvite(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	ua, err := l.StartRegisteringUA(UASpec{})
	if err != nil {
		t.Fatal(err)
	}
	regAt := time.Now()
	if received, _, _, err := l.KamailioContact(TrunkUser); err != nil || received != daemonPublic {
		t.Fatalf("received %q err %v; want %s", received, err, daemonPublic)
	}
	// Wait until the provider flow has expired (bounded), then the rest of idleWait.
	deadline := regAt.Add(idleWait + 10*time.Second)
	var expiredAfter time.Duration
	for {
		es, err := l.ConntrackList()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := providerFlow(es); !ok {
			expiredAfter = time.Since(regAt)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the provider flow never expired: is nf_conntrack_udp_timeout set in the router namespace?")
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("provider flow gone from conntrack %v after the REGISTER", expiredAfter.Round(100*time.Millisecond))
	if expiredAfter < NATUDPTimeout-2*time.Second {
		t.Errorf("flow expired after %v, earlier than the %v timeout", expiredAfter, NATUDPTimeout)
	}
	time.Sleep(time.Until(regAt.Add(idleWait)))

	start := time.Now()
	code, err := l.CallDID(DID, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %v idle: phone got %d after %v", time.Since(regAt).Round(time.Second), code, time.Since(start).Round(time.Millisecond))
	if code != 408 {
		t.Errorf("phone got %d, want 408 (INVITE lost at the router)", code)
	}
	if n := ua.ReceivedINVITEs(); n != 0 {
		t.Errorf("UA received %d INVITEs; the NAT let them in", n)
	}
	es := dumpConntrack(t, l, "after the dropped INVITE")
	dropped, ok := droppedInvite(es, WANIP1)
	if !ok {
		t.Fatal("no UNREPLIED conntrack entry provider:5060 -> 198.51.100.1:65002")
	}

	// Finding 3: the UNREPLIED entry owns 198.51.100.1:65002 <-> provider:5060,
	// so a new outbound flow from :65002 to the provider gets another port.
	ua.Stop(5 * time.Second)
	registerOnce(t, l)
	received, _, _, err := l.KamailioContact(TrunkUser)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-REGISTER from :65002 while the UNREPLIED entry (ttl %ds) lives: provider sees %s", dropped.TTL, received)
	if received == daemonPublic || !strings.HasPrefix(received, WANIP1+":") {
		t.Errorf("received = %s; want 198.51.100.1 with a port other than 65002 (finding 3)", received)
	}
	// What a STUN server sees from the same socket now (measured, not asserted).
	if conn, err := l.ListenUDP(NSLM, DaemonIP+":65002"); err == nil {
		m1, err1 := stunOn(conn, STUN1Addr, 3*time.Second)
		m2, err2 := stunOn(conn, ProviderAddr, 3*time.Second)
		conn.Close()
		t.Logf("STUN from :65002 while poisoned: coturn sees %v (%v), provider :5060 sees %v (%v)", m1, err1, m2, err2)
		if err2 == nil && m2.String() != received {
			t.Errorf("STUN to the provider's port sees %v, REGISTER was received from %s", m2, received)
		}
	}
	// A call now reaches the UA again at the new port (the provider uses the new received address).
	ua2, err := l.StartRegisteringUA(UASpec{})
	if err != nil {
		t.Fatal(err)
	}
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || code != 480 || ua2.ReceivedINVITEs() != 1 {
		t.Errorf("after re-register: phone got %d (err %v), UA saw %d INVITEs; want 480, 1", code, err, ua2.ReceivedINVITEs())
	}
}

// 3. The same, but the UA sends SIP OPTIONS to the provider every 8 s: the
// INVITE arrives after >= 2x the NAT timeout.
func TestLabReproducesNATOptionsKeepalive(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	ua, err := l.StartRegisteringUA(UASpec{Keepalive: 8 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	regAt := time.Now()
	time.Sleep(idleWait)
	code, err := l.CallDID(DID, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nOpt := 0
	for _, m := range ua.Messages() {
		if m.Sent && strings.HasPrefix(m.First, "OPTIONS ") {
			nOpt++
		}
	}
	t.Logf("after %v with OPTIONS every 8 s (%d sent): phone got %d", time.Since(regAt).Round(time.Second), nOpt, code)
	if code != 480 || ua.ReceivedINVITEs() != 1 {
		t.Errorf("phone got %d, UA saw %d INVITEs; want 480 and 1", code, ua.ReceivedINVITEs())
	}
	if nOpt < 4 {
		t.Errorf("only %d keepalives sent", nOpt)
	}
}

// Finding 1, third bullet: the provider pinging the UA with OPTIONS keeps the
// mapping open too.
func TestLabReproducesNATProviderPing(t *testing.T) {
	t.Parallel()
	l := newLab(t, WithProviderNATPing())
	ua, err := l.StartRegisteringUA(UASpec{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(idleWait)
	code, err := l.CallDID(DID, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pings := 0
	for _, m := range ua.Messages() {
		if !m.Sent && strings.HasPrefix(m.First, "OPTIONS ") {
			pings++
		}
	}
	t.Logf("provider pinged %d times; phone got %d", pings, code)
	if code != 480 || pings == 0 {
		t.Errorf("phone got %d with %d provider pings; want 480", code, pings)
	}
}

// sockUA is the trunk on one UDP socket in the "lm" namespace (SIP + STUN on
// one port, like the daemon): it answers INVITEs with 480, OPTIONS with 200,
// and hands STUN answers to stunc.
type sockUA struct {
	conn    *net.UDPConn
	invites atomic.Int32
	stunc   chan []byte
	wg      sync.WaitGroup
}

var (
	hdrRE  = regexp.MustCompile(`(?mi)^(Via|From|To|Call-ID|CSeq):.*$`)
	reqRE  = regexp.MustCompile(`^([A-Z]+) sip:`)
	stunRE = regexp.MustCompile(`^[\x00\x01]`)
)

func startSockUA(t *testing.T, l *Lab) *sockUA {
	conn, err := l.ListenUDP(NSLM, daemonPublicLocal())
	if err != nil {
		t.Fatal(err)
	}
	u := &sockUA{conn: conn, stunc: make(chan []byte, 16)}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			pkt := append([]byte(nil), buf[:n]...)
			if stunRE.Match(pkt) {
				select {
				case u.stunc <- pkt:
				default:
				}
				continue
			}
			m := reqRE.FindStringSubmatch(string(pkt))
			if m == nil || m[1] == "ACK" {
				continue
			}
			code := "200 OK"
			if m[1] == "INVITE" {
				u.invites.Add(1)
				code = "480 Lab Socket UA"
			}
			var b strings.Builder
			b.WriteString("SIP/2.0 " + code + "\r\n")
			for _, h := range hdrRE.FindAllString(string(pkt), -1) {
				h = strings.TrimRight(h, "\r")
				if strings.HasPrefix(strings.ToLower(h), "to:") && !strings.Contains(h, "tag=") {
					h += ";tag=sockua"
				}
				b.WriteString(h + "\r\n")
			}
			b.WriteString("Content-Length: 0\r\n\r\n")
			_, _ = conn.WriteToUDP([]byte(b.String()), from)
		}
	}()
	t.Cleanup(func() { conn.Close(); u.wg.Wait() })
	return u
}

func daemonPublicLocal() string { return fmt.Sprintf("%s:%d", DaemonIP, DaemonSIPPort) }

// stun sends one Binding request to server from the UA's socket and waits
// (bounded) for the answer, which the reader goroutine hands over.
func (u *sockUA) stun(server string, timeout time.Duration) (string, error) {
	raddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return "", err
	}
	req := newBindingRequest()
	deadline := time.After(timeout)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	if _, err := u.conn.WriteToUDP(req.Raw, raddr); err != nil {
		return "", err
	}
	for {
		select {
		case pkt := <-u.stunc:
			if a, ok := mappedFrom(pkt, req); ok {
				return a, nil
			}
		case <-tick.C:
			_, _ = u.conn.WriteToUDP(req.Raw, raddr)
		case <-deadline:
			return "", fmt.Errorf("no STUN answer from %s", server)
		}
	}
}

// keepSTUN sends a Binding request to server every interval until stop closes.
func (u *sockUA) keepSTUN(t *testing.T, server string, interval time.Duration, stop <-chan struct{}) (mapped chan string) {
	mapped = make(chan string, 64)
	go func() {
		defer close(mapped)
		for {
			a, err := u.stun(server, 2*time.Second)
			if err != nil {
				a = "error: " + err.Error()
			}
			select {
			case mapped <- a:
			default:
			}
			select {
			case <-stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return mapped
}

func stunKeepaliveCase(t *testing.T, server string, interval time.Duration) (code int, invites int32, mapped []string) {
	l := newLab(t)
	// Register with sipp from :65002 (it exits), then the socket UA owns :65002.
	registerOnce(t, l)
	u := startSockUA(t, l)
	stop := make(chan struct{})
	mc := u.keepSTUN(t, server, interval, stop)
	time.Sleep(idleWait)
	code, err := l.CallDID(DID, 30*time.Second)
	close(stop)
	for a := range mc {
		mapped = append(mapped, a)
	}
	if err != nil {
		t.Fatal(err)
	}
	dumpConntrack(t, l, "at the end")
	return code, u.invites.Load(), mapped
}

// Finding 1, first bullets: STUN to a separate STUN server every 5 s from the
// SIP socket keeps only that flow alive; the provider's INVITE is lost.
// Finding 2: the STUN server sees the same public address the provider stored.
func TestLabReproducesNATSTUNServerKeepaliveNotEnough(t *testing.T) {
	t.Parallel()
	code, invites, mapped := stunKeepaliveCase(t, STUN1Addr, 5*time.Second)
	t.Logf("STUN to coturn every 5 s: %d answers %v; phone got %d, socket saw %d INVITEs", len(mapped), uniq(mapped), code, invites)
	if code != 408 || invites != 0 {
		t.Errorf("phone got %d, socket saw %d INVITEs; want 408 and 0 (STUN to another server must not keep the provider flow)", code, invites)
	}
	for _, a := range mapped {
		if a != daemonPublic {
			t.Errorf("STUN server mapped %s, want %s (endpoint-independent while the port is free)", a, daemonPublic)
			break
		}
	}
}

// Finding 1: STUN to the provider's own SIP port (it answers) keeps the flow.
func TestLabReproducesNATProviderSTUNKeepalive(t *testing.T) {
	t.Parallel()
	code, invites, mapped := stunKeepaliveCase(t, ProviderAddr, 8*time.Second)
	t.Logf("STUN to the provider :5060 every 8 s: answers %v; phone got %d, socket saw %d INVITEs", uniq(mapped), code, invites)
	if code != 480 || invites != 1 {
		t.Errorf("phone got %d, socket saw %d INVITEs; want 480 and 1", code, invites)
	}
}

// Redial: the WAN address changes and conntrack is flushed. The provider keeps
// sending to the old address until the UA re-registers (finding 5); after
// that, calls arrive at the new address. Then back to .1.
func TestLabRedial(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	registerOnce(t, l)
	if err := l.Redial(WANIP2); err != nil {
		t.Fatal(err)
	}
	if es, _ := l.ConntrackList(); len(es) != 0 {
		t.Errorf("conntrack not empty after redial: %v", es)
	}
	m, err := l.STUNBinding(NSLM, DaemonIP+":40000", STUN1Addr, 3*time.Second)
	if err != nil || m.Addr().String() != WANIP2 {
		t.Fatalf("after redial STUN sees %v (err %v), want %s", m, err, WANIP2)
	}
	ua, err := l.StartRegisteringUA(UASpec{Expires: 600, Lifetime: 2 * time.Minute, NoRegister: true})
	if err != nil {
		t.Fatal(err)
	}
	code, err := l.CallDID(DID, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	received, _, _, _ := l.KamailioContact(TrunkUser)
	t.Logf("after redial, before re-register: provider still has %s; phone got %d", received, code)
	if code != 408 || ua.ReceivedINVITEs() != 0 {
		t.Errorf("phone got %d before re-register; want 408 (provider sends to the old address)", code)
	}
	ua.Stop(5 * time.Second)
	ua, err = l.StartRegisteringUA(UASpec{Expires: 600, Lifetime: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	received, _, _, err = l.KamailioContact(TrunkUser)
	if err != nil || received != WANIP2+":65002" {
		t.Errorf("after re-register received %q (err %v), want %s:65002", received, err, WANIP2)
	}
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || code != 480 || ua.ReceivedINVITEs() != 1 {
		t.Errorf("after re-register: phone got %d (err %v), UA saw %d INVITEs; want 480, 1", code, err, ua.ReceivedINVITEs())
	}
	ua.Stop(5 * time.Second)
	if err := l.Redial(WANIP1); err != nil {
		t.Fatal(err)
	}
	registerOnce(t, l)
	if received, _, _, err := l.KamailioContact(TrunkUser); err != nil || received != daemonPublic {
		t.Errorf("after redial back: received %q (err %v), want %s", received, err, daemonPublic)
	}
}

func uniq(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
