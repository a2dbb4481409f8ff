package stunkeeper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The NAT self-test: RFC 5780 behaviour discovery against a STUN server
// with two addresses. It runs on two sockets the caller hands over, never
// on the SIP socket (RFC 5780 §4.6): its probes to the server's other
// address and port open and poison mappings (an unsolicited answer that
// the NAT drops leaves a conntrack entry that moves the next mapping to
// another port), and the trunk's mapping must not be put at risk for a
// test. Mapping and filtering get a socket each for the same reason:
// filtering Test II's dropped answer from the other address would move
// mapping Test III's port, and mapping Test III's request would open the
// filter Test II checks.

// Behaviour is a NAT's mapping or filtering behaviour (RFC 4787).
type Behaviour string

const (
	BehaviourUnknown     Behaviour = "unknown"
	EndpointIndependent  Behaviour = "endpoint-independent"
	AddressDependent     Behaviour = "address-dependent"
	AddressPortDependent Behaviour = "address-and-port-dependent"
	// EndpointDependent: two destinations saw different public addresses,
	// but without an RFC 5780 server it is not known whether the NAT maps
	// per address or per address and port.
	EndpointDependent Behaviour = "endpoint-dependent"
)

// Verdict is the NAT type in the words router manuals and admins use.
type Verdict string

const (
	VerdictUnknown            Verdict = "unknown"
	VerdictNoNAT              Verdict = "no NAT"
	VerdictFullCone           Verdict = "full cone"            // EIM + EIF
	VerdictRestrictedCone     Verdict = "restricted cone"      // EIM + ADF
	VerdictPortRestrictedCone Verdict = "port-restricted cone" // EIM + APDF
	VerdictCone               Verdict = "cone"                 // EIM, filtering not tested
	VerdictSymmetric          Verdict = "symmetric"            // mapping per destination
)

// Hairpin says whether a packet to our own public address comes back.
type Hairpin string

const (
	HairpinUnknown Hairpin = "unknown"
	HairpinYes     Hairpin = "yes"
	HairpinNo      Hairpin = "no"
)

const (
	// DefaultNATTestTimeout bounds a whole NAT test.
	DefaultNATTestTimeout = 10 * time.Second
	// A test step sends at 0, 0.5 and 1.5 s and gives up at 3 s: a step
	// whose answer the NAT may rightly drop (filtering, hairpin) must not
	// wait RFC 5389's 39.5 s, and 3 s is what RFC 5780 clients use.
	stepTries = 3
	stepWait  = 3 * time.Second
	// maxTestServers: Test I goes to this many configured servers at once.
	maxTestServers = 4

	changeIP   = 0x04 // CHANGE-REQUEST flags, RFC 5780 §7.2
	changePort = 0x02
)

// NATTestConfig configures NATTest.
type NATTestConfig struct {
	// Servers as for Config.Servers. The first one whose answer carries
	// OTHER-ADDRESS (RFC 5780) runs the behaviour tests; without one,
	// the mapping is compared between two servers as the keeper does.
	Servers []string
	// Mapping and Filtering are two UDP sockets of the caller, neither of
	// them the SIP socket, bound to the same interface. NATTest reads
	// them until it returns (it sets and then clears their read
	// deadline) and does not close them.
	Mapping, Filtering net.PacketConn
	// LocalAddrs are this host's own addresses, to recognise a public
	// address that is not translated when the sockets are bound to
	// 0.0.0.0. The sockets' own bound IPs always count.
	LocalAddrs []netip.Addr
	// Resolve as for Config.Resolve.
	Resolve func(ctx context.Context, hostport string) (netip.AddrPort, error)
	// Timeout bounds the test (default DefaultNATTestTimeout).
	Timeout time.Duration
	// Logger; nil logs nothing. Named "stunkeeper.nattest".
	Logger *zap.Logger
}

// NATReport is what NATTest found.
type NATReport struct {
	// Server is the RFC 5780 server the behaviour tests used (as
	// configured), Primary the address it answered on and Other its
	// OTHER-ADDRESS. Empty when no configured server offers RFC 5780.
	Server         string
	Primary, Other netip.AddrPort
	// Public is the mapping socket's public address (Test I).
	Public    netip.AddrPort
	Mapping   Behaviour
	Filtering Behaviour
	Hairpin   Hairpin
	Verdict   Verdict
	// Seen lists what each destination saw from the mapping socket.
	Seen []Mapping
	// Note says in plain words why a part could not be tested ("" when
	// everything was).
	Note string
	// Dropped counts packets on the test sockets that answered none of
	// the test's requests (garbage, strays).
	Dropped uint64
	Took    time.Duration
	// PortForward: the admin declared a static forward of the SIP port
	// and the RTP pool (nat.port_forward). The test cannot see one (it
	// probes from ephemeral ports); the verdict takes it on trust.
	PortForward bool
}

// Works reports whether a remote that does not latch can send media to
// the SDP address: the mapping does not depend on the destination (and
// the relay sends first on every port), or a port forward takes the
// remote's packets to the SDP's port whatever the NAT does.
func (r NATReport) Works() bool {
	if r.PortForward && r.Verdict != VerdictUnknown {
		return true
	}
	switch r.Verdict {
	case VerdictNoNAT, VerdictFullCone, VerdictRestrictedCone, VerdictPortRestrictedCone, VerdictCone:
		return true
	}
	return false
}

// Advice is the verdict as one line for an admin; portMin..portMax is the
// Internet-side RTP pool (rtp.port_min, rtp.port_max).
func (r NATReport) Advice(portMin, portMax int) string {
	switch r.Verdict {
	case VerdictNoNAT:
		return fmt.Sprintf("no NAT (public address %s): works; no port forward needed", r.Public.Addr())
	case VerdictFullCone, VerdictRestrictedCone, VerdictPortRestrictedCone:
		return string(r.Verdict) + ": works; no port forward needed"
	case VerdictCone:
		return "cone (" + r.Note + "): works; no port forward needed"
	case VerdictSymmetric:
		if r.PortForward {
			return fmt.Sprintf("symmetric, with the declared port forward of the SIP port and %d–%d (nat.port_forward): reachable; no further action", portMin, portMax)
		}
		s := fmt.Sprintf("symmetric: inbound media needs a port forward of %d–%d or a router that offers PCP/UPnP; run `linkmanager firewall`", portMin, portMax)
		if r.Note != "" {
			s += " (" + r.Note + ")"
		}
		return s
	}
	return "NAT type unknown: " + r.Note
}

// Notes for NATReport.Note.
const (
	noteNo5780    = "filtering not tested: no STUN server in stun.servers offers RFC 5780, none sent OTHER-ADDRESS; mapping compared between two servers"
	noteOneServer = "only one STUN server answered and it does not offer RFC 5780; add a second server (or one with RFC 5780) to stun.servers"
	noteNoAnswer  = "no STUN server answered (stun.servers)"
	noteOutOfTime = "the test ran out of time"
)

// NATTest runs RFC 5780 NAT behaviour discovery: mapping (§4.3),
// filtering (§4.4) and hairpinning (§4.5). It is bounded by
// cfg.Timeout; a report with what was learned comes back with every
// error except a bad config. With no answering server it returns
// ErrNoAnswer.
func NATTest(ctx context.Context, cfg NATTestConfig) (r NATReport, err error) {
	start := time.Now()
	r = NATReport{Mapping: BehaviourUnknown, Filtering: BehaviourUnknown, Hairpin: HairpinUnknown, Verdict: VerdictUnknown}
	if cfg.Mapping == nil || cfg.Filtering == nil || cfg.Mapping == cfg.Filtering {
		return r, ErrNATTestSockets
	}
	if len(cfg.Servers) == 0 {
		return r, ErrNoServers
	}
	servers := make([]server, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		srv, err := parseServer(s)
		if err != nil {
			return r, err
		}
		servers = append(servers, srv)
	}
	if len(servers) > maxTestServers {
		servers = servers[:maxTestServers]
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("stunkeeper").Named("nattest")
	resolve := cfg.Resolve
	if resolve == nil {
		resolve = resolveIPv4
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultNATTestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	mp, fp := newProber(cfg.Mapping), newProber(cfg.Filtering)
	// r is the named result: the returned report gets these too.
	defer func() {
		r.Dropped = mp.stop() + fp.stop()
		r.Took = time.Since(start)
	}()

	// Test I to every server at once: the first answer that names an
	// OTHER-ADDRESS picks the RFC 5780 server, the rest are observations.
	first := make([]answer, len(servers))
	var wg sync.WaitGroup
	for i := range servers {
		wg.Go(func() {
			srv := &servers[i]
			if !srv.addr.IsValid() {
				rctx, rcancel := context.WithTimeout(ctx, resolveTimeout)
				a, err := resolve(rctx, srv.hostport)
				rcancel()
				if err != nil {
					first[i].err = err
					return
				}
				srv.addr = unmap(a)
			}
			first[i] = mp.do(ctx, srv.addr, 0)
		})
	}
	wg.Wait()
	rfc := -1
	for i, a := range first {
		if a.err != nil {
			log.Debug("stun server did not answer", zap.String("server", servers[i].hostport), zap.Error(a.err))
			continue
		}
		r.Seen = append(r.Seen, Mapping{Addr: a.mapped, Via: servers[i].addr, Source: SourceSTUN, At: time.Now()})
		if !r.Public.IsValid() {
			r.Public = a.mapped
		}
		if rfc < 0 && offers5780(a) {
			rfc = i
			r.Public = a.mapped
		}
	}
	if len(r.Seen) == 0 {
		r.Note = noteNoAnswer
		return r, ErrNoAnswer
	}
	local := slices.Clone(cfg.LocalAddrs)
	if ua, ok := cfg.Mapping.LocalAddr().(*net.UDPAddr); ok {
		local = append(local, ua.AddrPort().Addr().Unmap())
	}
	noNAT := slices.Contains(local, r.Public.Addr()) && localPort(cfg.Mapping) == r.Public.Port()

	if rfc < 0 {
		r.Mapping, r.Note = compareMappings(r.Seen)
		if noNAT {
			r.Mapping = EndpointIndependent
		}
		r.Verdict = verdict(r.Mapping, r.Filtering, noNAT)
		log.Debug("nat test without rfc 5780", zap.String("mapping", string(r.Mapping)))
		return r, nil
	}

	a1 := first[rfc]
	r.Server, r.Primary, r.Other = servers[rfc].hostport, a1.from, a1.other
	prim, other := a1.from, a1.other
	otherIPPrimPort := netip.AddrPortFrom(other.Addr(), prim.Port())

	// Filtering on its own socket, concurrently with the mapping tests.
	var f1, f2, f3 answer
	wg.Go(func() {
		if f1 = fp.do(ctx, prim, 0); f1.err != nil {
			return
		}
		var fw sync.WaitGroup
		fw.Go(func() { f2 = fp.do(ctx, prim, changeIP|changePort) })
		fw.Go(func() { f3 = fp.do(ctx, prim, changePort) })
		fw.Wait()
	})
	var m2, m3 answer
	var mw sync.WaitGroup
	mw.Go(func() { m2 = mp.do(ctx, otherIPPrimPort, 0) })
	mw.Go(func() { m3 = mp.do(ctx, other, 0) })
	mw.Wait()
	// Hairpin from the mapping socket to its own public address: the
	// filter lets it in (we sent to that address), so only hairpinning
	// decides. Its 3 s wait overlaps the filtering tests'.
	if !noNAT {
		r.Hairpin = mp.hairpin(ctx, r.Public)
	}
	wg.Wait()

	for _, a := range []answer{m2, m3} {
		seen := func(m Mapping) bool { return m.Via == a.to && m.Addr == a.mapped }
		if a.err == nil && !slices.ContainsFunc(r.Seen, seen) {
			r.Seen = append(r.Seen, Mapping{Addr: a.mapped, Via: a.to, Source: SourceSTUN, At: time.Now()})
		}
	}
	switch {
	case noNAT:
		r.Mapping = EndpointIndependent
	case m2.err != nil:
		r.Note = "the RFC 5780 server's other address did not answer (mapping test II)"
	case m2.mapped == a1.mapped:
		r.Mapping = EndpointIndependent
	case m3.err != nil:
		// Two destinations saw two addresses: symmetric either way.
		r.Note = "the RFC 5780 server's other port did not answer (mapping test III)"
		r.Mapping = EndpointDependent
	case m3.mapped == m2.mapped:
		r.Mapping = AddressDependent
	default:
		r.Mapping = AddressPortDependent
	}
	var note string
	r.Filtering, note = filtering(prim, other, f1, f2, f3)
	if r.Note == "" {
		r.Note = note
	}
	r.Verdict = verdict(r.Mapping, r.Filtering, noNAT)
	if ctx.Err() != nil && r.Note == "" {
		r.Note = noteOutOfTime
	}
	return r, nil
}

func localPort(c net.PacketConn) uint16 {
	if ua, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return uint16(ua.Port)
	}
	return 0
}

// offers5780: RFC 5780 §7.4 says OTHER-ADDRESS differs from where the
// answer came from in both IP and port; anything else (a server that
// echoes its own address) cannot run the tests.
func offers5780(a answer) bool {
	return a.other.IsValid() && a.other.Addr() != a.from.Addr() && a.other.Port() != a.from.Port()
}

// compareMappings is the keeper's two-destination check, for servers
// without RFC 5780: two servers on different IPs that see one address
// mean endpoint-independent mapping.
func compareMappings(seen []Mapping) (Behaviour, string) {
	for i, a := range seen {
		for _, b := range seen[i+1:] {
			if a.Via.Addr() == b.Via.Addr() {
				continue
			}
			if a.Addr != b.Addr {
				return EndpointDependent, noteNo5780
			}
			return EndpointIndependent, noteNo5780
		}
	}
	return BehaviourUnknown, noteOneServer
}

// filtering reads RFC 5780 §4.4: an answer from the other IP and port
// (Test II) passes only an endpoint-independent filter, one from the
// primary IP and other port (Test III) also an address-dependent one.
func filtering(prim, other netip.AddrPort, f1, f2, f3 answer) (Behaviour, string) {
	switch {
	case f1.err != nil:
		return BehaviourUnknown, "the RFC 5780 server did not answer the filtering socket (filtering test I)"
	case errors.Is(f2.err, ErrErrorResponse) || errors.Is(f3.err, ErrErrorResponse):
		return BehaviourUnknown, "the RFC 5780 server refused CHANGE-REQUEST"
	case f2.err == nil && f2.from.Addr() == prim.Addr(), f3.err == nil && f3.from.Port() == prim.Port():
		// It ignored CHANGE-REQUEST: the answer says nothing about the filter.
		return BehaviourUnknown, "the RFC 5780 server ignored CHANGE-REQUEST"
	case f2.err == nil:
		return EndpointIndependent, ""
	case !errors.Is(f2.err, ErrTimeout):
		// Only a step that waited its full 3 s says "filtered".
		return BehaviourUnknown, noteOutOfTime
	case f3.err == nil:
		return AddressDependent, ""
	case !errors.Is(f3.err, ErrTimeout):
		return BehaviourUnknown, noteOutOfTime
	}
	return AddressPortDependent, ""
}

func verdict(m, f Behaviour, noNAT bool) Verdict {
	switch {
	case noNAT:
		return VerdictNoNAT
	case m == AddressDependent || m == AddressPortDependent || m == EndpointDependent:
		return VerdictSymmetric
	case m != EndpointIndependent:
		return VerdictUnknown
	case f == EndpointIndependent:
		return VerdictFullCone
	case f == AddressDependent:
		return VerdictRestrictedCone
	case f == AddressPortDependent:
		return VerdictPortRestrictedCone
	}
	return VerdictCone
}
