package stunkeeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/transport/v4/vnet"
)

// The RFC 5780 server's two addresses, each on two ports.
var (
	rfcIP1 = netip.MustParseAddr("1.2.3.10")
	rfcIP2 = netip.MustParseAddr("1.2.3.11")
	rfcA   = netip.AddrPortFrom(rfcIP1, 3478)
)

// fakeRFC5780 is an RFC 5780 STUN server on one vnet host with two IPs
// and two ports each: it names its other address in OTHER-ADDRESS and
// answers CHANGE-REQUEST from the socket with the other IP and/or port.
type fakeRFC5780 struct {
	ips   [2]netip.Addr
	ports [2]uint16
	conns [2][2]net.PacketConn
	// plain makes it an RFC 5389 server: no OTHER-ADDRESS, CHANGE-REQUEST
	// ignored.
	plain bool
	// ignoreChange keeps OTHER-ADDRESS but answers every request from
	// where it arrived; ignoreResponsePort answers to the request's
	// source port despite RESPONSE-PORT.
	ignoreChange, ignoreResponsePort bool
	wg                               sync.WaitGroup
}

func (l *lab) addRFC5780(ip1, ip2 netip.Addr) *fakeRFC5780 {
	l.t.Helper()
	n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{ip1.String(), ip2.String()}})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.wan.AddNet(n); err != nil {
		l.t.Fatal(err)
	}
	s := &fakeRFC5780{ips: [2]netip.Addr{ip1, ip2}, ports: [2]uint16{3478, 3479}}
	for i, ip := range s.ips {
		for j, port := range s.ports {
			c, err := n.ListenPacket("udp4", netip.AddrPortFrom(ip, port).String())
			if err != nil {
				l.t.Fatal(err)
			}
			s.conns[i][j] = c
		}
	}
	return s
}

// start serves until stop; call it after lab.start, stop before the
// lab's stop.
func (s *fakeRFC5780) start() func() {
	for i := range 2 {
		for j := range 2 {
			s.wg.Go(func() { s.serve(i, j) })
		}
	}
	return func() {
		for i := range 2 {
			for j := range 2 {
				_ = s.conns[i][j].Close()
			}
		}
		s.wg.Wait()
	}
}

func (s *fakeRFC5780) serve(i, j int) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := s.conns[i][j].ReadFrom(buf)
		if err != nil {
			return
		}
		req := new(stun.Message)
		if stun.Decode(buf[:n], req) != nil || req.Type != stun.BindingRequest {
			continue
		}
		ri, rj := i, j
		if v, err := req.Get(stun.AttrChangeRequest); err == nil && len(v) == 4 && !s.plain && !s.ignoreChange {
			if v[3]&changeIP != 0 {
				ri = 1 - i
			}
			if v[3]&changePort != 0 {
				rj = 1 - j
			}
		}
		ua := addr.(*net.UDPAddr)
		setters := []stun.Setter{stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}}
		if v, err := req.Get(stun.AttrResponsePort); err == nil && len(v) == 4 && !s.plain && !s.ignoreResponsePort {
			// RFC 5780 §7.5: to the source IP, at the port named.
			addr = &net.UDPAddr{IP: ua.IP, Port: int(v[0])<<8 | int(v[1])}
		}
		if !s.plain {
			setters = append(setters,
				&stun.OtherAddress{IP: s.ips[1-i].AsSlice(), Port: int(s.ports[1-j])},
				&stun.ResponseOrigin{IP: s.ips[ri].AsSlice(), Port: int(s.ports[rj])})
		}
		resp := stun.MustBuild(append(setters, stun.Fingerprint)...)
		_, _ = s.conns[ri][rj].WriteTo(resp.Raw, addr)
	}
}

func behaviourNAT(mapping, filtering vnet.EndpointDependencyType) vnet.NATType {
	return vnet.NATType{Mode: vnet.NATModeNormal, MappingBehavior: mapping, FilteringBehavior: filtering, MappingLifeTime: 30 * time.Second}
}

// testSockets opens the two NAT test sockets on the LAN host, next to
// the SIP socket.
func (l *lab) testSockets() (net.PacketConn, net.PacketConn) {
	l.t.Helper()
	var cs [2]net.PacketConn
	for i := range cs {
		c, err := l.sock.nets[0].ListenPacket("udp4", lanIP+":0")
		if err != nil {
			l.t.Fatal(err)
		}
		l.t.Cleanup(func() { _ = c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

// rfc5780Test runs NATTest from the LAN host behind nat against the fake
// RFC 5780 server, which tweak may adjust before it starts.
func rfc5780Test(t *testing.T, nat vnet.NATType, delay, timeout time.Duration, tweak func(*fakeRFC5780)) (NATReport, error) {
	t.Helper()
	l := newLabDelay(t, nat, delay)
	srv := l.addRFC5780(rfcIP1, rfcIP2)
	if tweak != nil {
		tweak(srv)
	}
	stop := l.start()
	defer stop()
	defer srv.start()()
	m, f := l.testSockets()
	r, err := NATTest(context.Background(), NATTestConfig{Servers: []string{rfcA.String()}, Mapping: m, Filtering: f, Timeout: timeout})
	// The sockets are the caller's: NATTest leaves them open.
	if _, err := m.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(rfcA)); err != nil {
		t.Errorf("mapping socket after the test: %v", err)
	}
	return r, err
}

// Every NAT vnet can be set to, against the fake RFC 5780 server: the
// test must name its mapping and filtering behaviour and the verdict.
func TestNATTestVerdicts(t *testing.T) {
	const (
		ei  = vnet.EndpointIndependent
		ad  = vnet.EndpointAddrDependent
		apd = vnet.EndpointAddrPortDependent
	)
	for _, tc := range []struct {
		mapping, filtering vnet.EndpointDependencyType
		wantM, wantF       Behaviour
		want               Verdict
		// vnet hairpins by routing the packet out and back in through
		// the NAT, so the mapping socket's own filter decides: it lets
		// in what comes from its own mapping (EIM) or any source (EIF).
		hairpin Hairpin
	}{
		{ei, ei, EndpointIndependent, EndpointIndependent, VerdictFullCone, HairpinYes},
		{ei, ad, EndpointIndependent, AddressDependent, VerdictRestrictedCone, HairpinYes},
		{ei, apd, EndpointIndependent, AddressPortDependent, VerdictPortRestrictedCone, HairpinYes},
		{ad, ei, AddressDependent, EndpointIndependent, VerdictSymmetric, HairpinYes},
		{ad, apd, AddressDependent, AddressPortDependent, VerdictSymmetric, HairpinNo},
		{apd, ad, AddressPortDependent, AddressDependent, VerdictSymmetric, HairpinNo},
		{apd, apd, AddressPortDependent, AddressPortDependent, VerdictSymmetric, HairpinNo},
	} {
		name := map[vnet.EndpointDependencyType]string{ei: "EI", ad: "AD", apd: "APD"}
		t.Run(fmt.Sprintf("%sM-%sF", name[tc.mapping], name[tc.filtering]), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r, err := rfc5780Test(t, behaviourNAT(tc.mapping, tc.filtering), 10*time.Millisecond, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if r.Mapping != tc.wantM || r.Filtering != tc.wantF || r.Verdict != tc.want {
					t.Errorf("mapping %v, filtering %v, verdict %v; want %v, %v, %v (note %q)",
						r.Mapping, r.Filtering, r.Verdict, tc.wantM, tc.wantF, tc.want, r.Note)
				}
				if r.Hairpin != tc.hairpin {
					t.Errorf("hairpin %v, want %v", r.Hairpin, tc.hairpin)
				}
				if r.Public.Addr() != pub1 || r.Server != rfcA.String() || r.Primary != rfcA ||
					r.Other != netip.AddrPortFrom(rfcIP2, 3479) || r.Note != "" {
					t.Errorf("report %+v", r)
				}
				t.Logf("%s; hairpin %v, took %v", r.Advice(55000, 56000), r.Hairpin, r.Took)
				// The filtering steps that get no answer wait 3 s, all at
				// once; nothing waits longer.
				if r.Took > stepWait+time.Second {
					t.Errorf("took %v, want about %v at most", r.Took, stepWait)
				}
			})
		})
	}
}

// A host with a public address: the mapped address is the socket's own.
func TestNATTestNoNAT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		srv := l.addRFC5780(rfcIP1, rfcIP2)
		host, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"1.2.3.50"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.wan.AddNet(host); err != nil {
			t.Fatal(err)
		}
		stop := l.start()
		defer stop()
		defer srv.start()()
		m, _ := host.ListenPacket("udp4", "1.2.3.50:0")
		f, _ := host.ListenPacket("udp4", "1.2.3.50:0")
		defer m.Close()
		defer f.Close()

		r, err := NATTest(context.Background(), NATTestConfig{Servers: []string{rfcA.String()}, Mapping: m, Filtering: f})
		if err != nil {
			t.Fatal(err)
		}
		if r.Verdict != VerdictNoNAT || r.Mapping != EndpointIndependent || r.Filtering != EndpointIndependent {
			t.Errorf("verdict %v, mapping %v, filtering %v; want no NAT", r.Verdict, r.Mapping, r.Filtering)
		}
		if got, want := r.Advice(55000, 56000), "no NAT (public address 1.2.3.50): works; no port forward needed"; got != want {
			t.Errorf("advice %q, want %q", got, want)
		}
	})
}

// Without RFC 5780 the test falls back to the keeper's comparison of two
// servers, and says that filtering was not tested.
func TestNATTestWithoutRFC5780(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mapping vnet.EndpointDependencyType
		servers []netip.AddrPort
		want    Verdict
		wantM   Behaviour
		advice  string
	}{
		{"cone", vnet.EndpointIndependent, []netip.AddrPort{stun1, stun2}, VerdictCone, EndpointIndependent, ": works; no port forward needed"},
		{"symmetric", vnet.EndpointAddrDependent, []netip.AddrPort{stun1, stun2}, VerdictSymmetric, EndpointDependent, "symmetric: inbound media needs a port forward"},
		{"one server", vnet.EndpointIndependent, []netip.AddrPort{stun1}, VerdictUnknown, BehaviourUnknown, "NAT type unknown: only one STUN server answered"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t, natType(tc.mapping))
				var servers []string
				for _, s := range tc.servers {
					l.addResponder(s)
					servers = append(servers, s.String())
				}
				stop := l.start()
				defer stop()
				m, f := l.testSockets()
				r, err := NATTest(context.Background(), NATTestConfig{Servers: servers, Mapping: m, Filtering: f})
				if err != nil {
					t.Fatal(err)
				}
				if r.Verdict != tc.want || r.Mapping != tc.wantM || r.Filtering != BehaviourUnknown || r.Server != "" {
					t.Errorf("verdict %v, mapping %v, filtering %v, server %q; want %v, %v, unknown, none",
						r.Verdict, r.Mapping, r.Filtering, r.Server, tc.want, tc.wantM)
				}
				if adv := r.Advice(55000, 56000); !strings.Contains(adv, tc.advice) {
					t.Errorf("advice %q, want it to contain %q", adv, tc.advice)
				}
				if len(tc.servers) > 1 && !strings.Contains(r.Note, "RFC 5780") {
					t.Errorf("note %q does not say that no server offers RFC 5780", r.Note)
				}
				if len(r.Seen) != len(tc.servers) {
					t.Errorf("seen %v, want one per server", r.Seen)
				}
			})
		})
	}
}

// A server that keeps OTHER-ADDRESS but ignores CHANGE-REQUEST answers
// every filtering step from the primary address: that is no proof of an
// open filter.
func TestNATTestServerIgnoresChangeRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nat := behaviourNAT(vnet.EndpointIndependent, vnet.EndpointAddrPortDependent)
		r, err := rfc5780Test(t, nat, 0, 0, func(s *fakeRFC5780) { s.ignoreChange = true })
		if err != nil {
			t.Fatal(err)
		}
		if r.Filtering != BehaviourUnknown || r.Verdict != VerdictCone || !strings.Contains(r.Note, "ignored CHANGE-REQUEST") {
			t.Errorf("filtering %v, verdict %v, note %q; want unknown, cone, a note", r.Filtering, r.Verdict, r.Note)
		}
	})
}

// No server answers: ErrNoAnswer after one 3 s step, not RFC 5389's
// 39.5 s; and a Timeout cuts a test short without a false verdict.
func TestNATTestBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, natType(vnet.EndpointIndependent))
		l.addResponder(stun1).setDead(true)
		stop := l.start()
		defer stop()
		m, f := l.testSockets()
		start := time.Now()
		r, err := NATTest(context.Background(), NATTestConfig{Servers: []string{stun1.String()}, Mapping: m, Filtering: f})
		if !errors.Is(err, ErrNoAnswer) || r.Verdict != VerdictUnknown {
			t.Fatalf("err %v, verdict %v; want ErrNoAnswer, unknown", err, r.Verdict)
		}
		if d := time.Since(start); d != stepWait {
			t.Errorf("gave up after %v, want %v", d, stepWait)
		}
		if got := r.Advice(55000, 56000); got != "NAT type unknown: no STUN server answered (stun.servers)" {
			t.Errorf("advice %q", got)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		r, err := rfc5780Test(t, behaviourNAT(vnet.EndpointIndependent, vnet.EndpointAddrPortDependent), 0, time.Second, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("returned after %v, want the 1s timeout", d)
		}
		// The filtering steps were cut short: that is not "filtered".
		if r.Mapping != EndpointIndependent || r.Filtering != BehaviourUnknown || r.Verdict != VerdictCone || r.Note != noteOutOfTime {
			t.Errorf("mapping %v, filtering %v, verdict %v, note %q", r.Mapping, r.Filtering, r.Verdict, r.Note)
		}
	})
}

func TestNATTestConfig(t *testing.T) {
	c, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	defer c.Close()
	ctx := context.Background()
	if _, err := NATTest(ctx, NATTestConfig{Servers: []string{"127.0.0.1:1"}, Mapping: c, Filtering: c}); !errors.Is(err, ErrNATTestSockets) {
		t.Errorf("one socket for both: %v, want ErrNATTestSockets", err)
	}
	if _, err := NATTest(ctx, NATTestConfig{Servers: []string{"127.0.0.1:1"}, Mapping: c}); !errors.Is(err, ErrNATTestSockets) {
		t.Errorf("no filtering socket: %v, want ErrNATTestSockets", err)
	}
	d, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	defer d.Close()
	if _, err := NATTest(ctx, NATTestConfig{Mapping: c, Filtering: d}); !errors.Is(err, ErrNoServers) {
		t.Errorf("no servers: %v, want ErrNoServers", err)
	}
	if _, err := NATTest(ctx, NATTestConfig{Servers: []string{"x:0"}, Mapping: c, Filtering: d}); !errors.Is(err, ErrBadServer) {
		t.Errorf("bad server: %v, want ErrBadServer", err)
	}
}

func TestNATAdvice(t *testing.T) {
	for _, tc := range []struct {
		r     NATReport
		want  string
		works bool
	}{
		{NATReport{Verdict: VerdictPortRestrictedCone}, "port-restricted cone: works; no port forward needed", true},
		{NATReport{Verdict: VerdictFullCone}, "full cone: works; no port forward needed", true},
		{NATReport{Verdict: VerdictSymmetric}, "symmetric: inbound media needs a port forward of 55000–56000 or a router that offers PCP/UPnP; run `linkmanager firewall`", false},
		{NATReport{Verdict: VerdictCone, Note: noteNo5780}, "cone (" + noteNo5780 + "): works; no port forward needed", true},
		{NATReport{Verdict: VerdictSymmetric, PortForward: true},
			"symmetric, with the declared port forward of the SIP port and 55000–56000 (nat.port_forward): reachable; no further action", true},
		{NATReport{Verdict: VerdictPortRestrictedCone, PortForward: true}, "port-restricted cone: works; no port forward needed", true},
		{NATReport{Verdict: VerdictUnknown, Note: noteNoAnswer, PortForward: true}, "NAT type unknown: " + noteNoAnswer, false},
	} {
		if got := tc.r.Advice(55000, 56000); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.r.Verdict, got, tc.want)
		}
		if tc.r.Works() != tc.works {
			t.Errorf("%v: Works() = %v", tc.r.Verdict, tc.r.Works())
		}
	}
}
