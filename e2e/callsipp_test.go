//go:build linux

package e2e

// sipp calls with pcap audio for the calls tests: who calls whom with which
// scenario (lab/sipp/uac-*.xml, uas-*.xml), captures in the receiving
// namespaces, and the checks every call test shares (RTP per direction and
// source, SDP, no LAN address towards the provider).

import (
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The audio every pcap scenario plays (Debian's sip-tester package).
const (
	G711Packets = 236 // RTP packets of PT 8 in g711a.pcap (about 7 s)
	PTPCMA      = 8
	PTEvent     = 101 // telephone-event in every scenario's SDP
	PTPinhole   = 20  // the daemon's pinhole/keepalive packet

	// PhoneNumber is what the PBX dials: Kamailio relays any number from the
	// trunk to the phone at 198.51.100.70:5060.
	PhoneNumber = "493055501234"

	// Relay pools of the contract (DaemonConfig default and the daemon's
	// default LAN pool).
	PoolMin, PoolMax       = 55000, 56000
	LANPoolMin, LANPoolMax = 40000, 41000
)

// MinDelivered is the least number of packets out of sent that pass the
// ≥ 99 % bar.
func MinDelivered(sent int) int { return int(math.Ceil(0.99 * float64(sent))) }

// Endpoint is one sipp user agent of a call.
type Endpoint struct {
	Name   string // "pbx", "phone", for messages and file names
	NS, IP string
	Port   int    // SIP port: a UAS listens on it, a UAC sends from it
	Target string // a UAC: where its INVITEs go (also the Request-URI host)
	Number string // a UAC: Request-URI user (-s)
	Auth   bool   // a UAC answers 401/407 with the trunk's credentials
}

// The four parties of the contract.
var (
	// The PBX places a call: INVITE sip:NUMBER@192.168.100.2:5060.
	PBXCaller = Endpoint{Name: "pbx", NS: NSPBX, IP: PBXIP, Port: 5070, Target: DaemonIP + ":5060", Number: PhoneNumber}
	// The PBX receives inbound calls on pbx.address.
	PBXCallee = Endpoint{Name: "pbx", NS: NSPBX, IP: PBXIP, Port: 5060}
	// The phone calls the DID through Kamailio.
	PhoneCaller = Endpoint{Name: "phone", NS: NSPhone, IP: PhoneIP, Port: 5070, Target: ProviderAddr, Number: DID}
	// Kamailio relays the trunk's calls to the phone at 198.51.100.70:5060.
	PhoneCallee = Endpoint{Name: "phone", NS: NSPhone, IP: PhoneIP, Port: 5060}
)

// WithPort returns a copy of e with another SIP port.
func (e Endpoint) WithPort(p int) Endpoint { e.Port = p; return e }

// SippSpec is one sipp process running a scenario of lab/sipp.
type SippSpec struct {
	Endpoint
	Scenario string
	Calls    int           // -m; default 1
	Limit    int           // -l (simultaneous calls); default Calls
	Rate     int           // -r (calls per second); default 10
	Hold     time.Duration // -d: how long <pause/> waits
	Timeout  time.Duration // sipp's own -timeout (fails the run); default 60 s
	// Stats, when set, writes sipp's -trace_stat file every Stats period
	// (Sipp.StatFile) instead of the -trace_msg file, which a long run
	// would make huge; Messages and everything built on it are then empty.
	Stats time.Duration
	// Args are more sipp arguments (e.g. -key NAME VALUE), placed before
	// the remote host of a UAC.
	Args []string
}

func (s SippSpec) uac() bool { return s.Target != "" }

// Sipp is a running sipp.
type Sipp struct {
	*Proc
	Spec     SippSpec
	MsgFile  string
	StatFile string // with Spec.Stats: sipp's -trace_stat CSV
}

// StartSipp starts sipp in the background. A UAS is waited for until its SIP
// port is bound (bounded).
func (l *Lab) StartSipp(spec SippSpec) *Sipp {
	l.t.Helper()
	if spec.Calls == 0 {
		spec.Calls = 1
	}
	if spec.Limit == 0 {
		spec.Limit = spec.Calls
	}
	if spec.Rate == 0 {
		spec.Rate = 10
	}
	if spec.Timeout == 0 {
		spec.Timeout = 60 * time.Second
	}
	args := []string{"-i", spec.IP, "-p", strconv.Itoa(spec.Port),
		"-m", strconv.Itoa(spec.Calls), "-l", strconv.Itoa(spec.Limit), "-r", strconv.Itoa(spec.Rate),
		"-d", strconv.FormatInt(spec.Hold.Milliseconds(), 10),
		"-timeout", fmt.Sprintf("%ds", int(spec.Timeout.Round(time.Second)/time.Second)), "-timeout_error"}
	if spec.uac() {
		args = append(args, "-s", spec.Number)
		if spec.Auth {
			args = append(args, "-au", TrunkUser, "-ap", TrunkPass)
		}
	}
	args = append(args, spec.Args...)
	if spec.uac() {
		args = append(args, spec.Target)
	}
	role := "uas"
	if spec.uac() {
		role = "uac"
	}
	name := fmt.Sprintf("%s-%s-%s", spec.Name, role, strings.TrimSuffix(filepath.Base(spec.Scenario), ".xml"))
	argv, msgFile := l.sippArgs(name, spec.Scenario, args...)
	statFile := ""
	if spec.Stats > 0 {
		statFile = strings.TrimSuffix(msgFile, ".msg") + ".csv"
		i := slices.Index(argv, "-trace_msg")
		argv = slices.Replace(argv, i, i+3, "-trace_stat", "-stf", statFile,
			"-fd", strconv.Itoa(max(1, int(spec.Stats/time.Second))))
	}
	p := l.Start(spec.NS, strings.TrimSuffix(msgFile, ".msg")+".out", argv...)
	s := &Sipp{Proc: p, Spec: spec, MsgFile: msgFile, StatFile: statFile}
	if !spec.uac() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			// bound by this very sipp (ip netns exec execs it: same PID)
			out, err := l.Exec(spec.NS, "ss", "-Hlunp", "sport", "= :"+strconv.Itoa(spec.Port))
			if err == nil && strings.Contains(out, spec.IP+":"+strconv.Itoa(spec.Port)) && strings.Contains(out, fmt.Sprintf("pid=%d,", p.PID())) {
				break
			}
			if p.Exited() || time.Now().After(deadline) {
				l.t.Fatalf("sipp %s (%s) did not bind %s:%d:\n%s", spec.Name, spec.Scenario, spec.IP, spec.Port, tail(p.Log(), 20))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return s
}

// Messages returns what the UA sent and received so far.
func (s *Sipp) Messages() []SIPMessage { return parseSippMessages(s.MsgFile) }

// Finals returns the codes of the final responses to INVITEs the UA
// received (retransmissions included).
func (s *Sipp) Finals() []int {
	var res []int
	for _, m := range s.Messages() {
		if !m.Sent && m.Code >= 200 && strings.HasSuffix(m.CSeq, "INVITE") {
			res = append(res, m.Code)
		}
	}
	return res
}

// Answer is the final response to the initial INVITE: the first final
// response to an INVITE that is not a 401/407 challenge (0: none).
func (s *Sipp) Answer() int {
	for _, c := range s.Finals() {
		if c != 401 && c != 407 {
			return c
		}
	}
	return 0
}

// Received counts the requests of method the UA received.
func (s *Sipp) Received(method string) int {
	n := 0
	for _, m := range s.Messages() {
		if !m.Sent && strings.HasPrefix(m.First, method+" ") {
			n++
		}
	}
	return n
}

// ReceivedResponse counts responses with code to requests of method.
func (s *Sipp) ReceivedResponse(code int, method string) int {
	n := 0
	for _, m := range s.Messages() {
		if !m.Sent && m.Code == code && strings.HasSuffix(m.CSeq, " "+method) {
			n++
		}
	}
	return n
}

// Trace is the UA's message flow, one line per message, for failure messages.
func (s *Sipp) Trace() string {
	var b strings.Builder
	ms := s.Messages()
	for i, m := range ms {
		if len(ms) > 60 && i == 30 {
			fmt.Fprintf(&b, "  ... %d messages ...\n", len(ms)-60)
		}
		if len(ms) > 60 && i >= 30 && i < len(ms)-30 {
			continue
		}
		dir := "<-"
		if m.Sent {
			dir = "->"
		}
		fmt.Fprintf(&b, "  %s %s %s [%s]\n", m.Time, dir, m.First, m.CSeq)
	}
	return fmt.Sprintf("sipp %s %s (exit %d):\n%s%s", s.Spec.Name, s.Spec.Scenario, s.ExitCode(), b.String(), tail(s.Log(), 6))
}

// CallSetup is one sipp caller against one sipp callee.
type CallSetup struct {
	Caller, Callee SippSpec
	// Namespaces to capture UDP in (eth0); default: the caller's, the
	// callee's and the provider's.
	Capture []string
}

// CallRun is a call (or a batch of calls) in progress, then finished.
type CallRun struct {
	l              *Lab
	Caller, Callee *Sipp
	caps           map[string]*Capture
	Pkts           map[string][]Packet  // by namespace, after Finish
	SIP            map[string][]WireSIP // by namespace, after Finish
	// Dropped is what each capture's kernel ring lost (by namespace, after
	// Finish). A busy machine can make tcpdump fall behind; CheckAudio then
	// needs the relay's own counters before it blames the relay.
	Dropped map[string]int
}

// StartCall starts the captures, the callee (and waits until it listens),
// then the caller.
func (l *Lab) StartCall(s CallSetup) *CallRun {
	l.t.Helper()
	nss := s.Capture
	if nss == nil {
		nss = []string{s.Caller.NS, s.Callee.NS, NSProvider}
	}
	r := &CallRun{l: l, caps: map[string]*Capture{}}
	for _, ns := range nss {
		if r.caps[ns] == nil {
			r.caps[ns] = l.StartCapture(ns, "eth0", "udp")
		}
	}
	r.Callee = l.StartSipp(s.Callee)
	r.Caller = l.StartSipp(s.Caller)
	return r
}

// Finish waits (bounded by the sipp timeouts) for the caller and then the
// callee, stops whichever still runs, stops the captures and reads them.
func (r *CallRun) Finish(t testing.TB) {
	t.Helper()
	if _, err := r.Caller.Wait(r.Caller.Spec.Timeout + 10*time.Second); err != nil {
		t.Errorf("caller: %v", err)
		r.Caller.Stop(2 * time.Second)
	}
	if _, err := r.Callee.Wait(10 * time.Second); err != nil {
		r.Callee.Stop(2 * time.Second)
	}
	time.Sleep(300 * time.Millisecond) // trailing packets
	r.Pkts, r.SIP, r.Dropped = map[string][]Packet{}, map[string][]WireSIP{}, map[string]int{}
	for ns, c := range r.caps {
		c.Stop()
		if n := c.Dropped(); n > 0 {
			r.Dropped[ns] = n
			t.Logf("capture in %s: tcpdump dropped %d packets (the machine is busy); audio counts there are cross-checked with the relay's counters", ns, n)
		}
		r.Pkts[ns] = pcapPackets(t, c.Path)
		r.SIP[ns] = SIPMessages(r.Pkts[ns])
	}
}

// Traces returns both UAs' message flows.
func (r *CallRun) Traces() string { return r.Caller.Trace() + "\n" + r.Callee.Trace() }

// AudioCheck says what RTP must have reached an endpoint.
type AudioCheck struct {
	At      Endpoint
	PT      uint8  // default PT 8
	SrcIP   string // who must send it (the relay's address facing At)
	PortMin int    // the relay's port range (0: any port)
	PortMax int
	Streams int // number of source streams (one per call); default 1
	PerCall int // packets the far end sent per call; default G711Packets
	// Relayed is, per call, what the daemon says it forwarded towards At
	// (relayedTo). Only consulted when the capture at At dropped packets:
	// then a shortfall in the capture no larger than its drops is the
	// capture's, provided the relay forwarded >= 99 % on every stream.
	Relayed []int
	// Window (zero: the whole capture).
	From, To time.Time
}

// CheckAudio asserts: every SDP the endpoint received announces SrcIP and an
// even port in range; every packet of PT came from an announced address
// (a lost pinhole race shows up as another source port); Streams sources
// delivered ≥ 99 % of PerCall each and in total, and none more than PerCall.
// It returns the count per source.
func (r *CallRun) CheckAudio(t testing.TB, c AudioCheck) map[netip.AddrPort]int {
	t.Helper()
	if c.PT == 0 {
		c.PT = PTPCMA
	}
	if c.Streams == 0 {
		c.Streams = 1
	}
	if c.PerCall == 0 {
		c.PerCall = G711Packets
	}
	pkts, ok := r.Pkts[c.At.NS]
	if !ok {
		t.Fatalf("no capture in %s", c.At.NS)
	}
	src := netip.MustParseAddr(c.SrcIP)
	inRange := func(a netip.AddrPort) bool {
		return c.PortMin == 0 || (int(a.Port()) >= c.PortMin && int(a.Port()) <= c.PortMax)
	}
	announced := AnnouncedTo(r.SIP[c.At.NS], c.At.IP)
	if len(announced) == 0 {
		t.Errorf("%s: no SDP reached %s", c.At.Name, c.At.IP)
	}
	for a := range announced {
		if a.Addr() != src || !inRange(a) || a.Port()%2 != 0 {
			t.Errorf("%s was told to send RTP to %s; want %s on an even port in %d-%d", c.At.Name, a, c.SrcIP, c.PortMin, c.PortMax)
		}
	}
	got := BySource(Select(pkts, To(c.At.IP), RTPWithPT(c.PT), Between(c.From, c.To)))
	need := MinDelivered(c.PerCall)
	full, total := 0, 0
	var lines []string
	for a, n := range got {
		total += n
		lines = append(lines, fmt.Sprintf("%s: %d", a, n))
		switch {
		case a.Addr() != src || !inRange(a):
			t.Errorf("%s got %d RTP packets (PT %d) from %s; want them from %s, ports %d-%d", c.At.Name, n, c.PT, a, c.SrcIP, c.PortMin, c.PortMax)
		case !announced[a]:
			t.Errorf("%s got %d RTP packets (PT %d) from %s, which no SDP announced to it (a lost pinhole race moves the public port)", c.At.Name, n, c.PT, a)
		}
		if n > c.PerCall {
			t.Errorf("%s got %d RTP packets (PT %d) from %s, more than the %d sent: duplicated", c.At.Name, n, c.PT, a, c.PerCall)
		}
		if n >= need {
			full++
		}
	}
	sort.Strings(lines)
	short := full != c.Streams || total < MinDelivered(c.Streams*c.PerCall)
	if dropped := r.Dropped[c.At.NS]; short && dropped > 0 {
		// Only the count is in doubt: every packet the capture did see was
		// checked for its source above. A relay loss must show in the
		// relay's own counters; a capture loss is bounded by its drops.
		missing := 0
		for _, n := range got {
			if n < need {
				missing += need - n
			}
		}
		missing = max(missing, MinDelivered(c.Streams*c.PerCall)-total)
		relayedFull := 0
		for _, n := range c.Relayed {
			if n >= need {
				relayedFull++
			}
		}
		switch {
		case len(c.Relayed) == 0:
			t.Errorf("%s: the capture dropped %d packets and the test gave no relay counters to tell a capture loss from an RTP loss", c.At.Name, dropped)
		case len(got) != c.Streams || relayedFull != c.Streams || missing > dropped:
			t.Errorf("%s: %d of %d streams captured with %d sources, %d missing; the capture dropped %d; the relay forwarded >= %d on %d of %d calls (%v)",
				c.At.Name, full, c.Streams, len(got), missing, dropped, need, relayedFull, c.Streams, c.Relayed)
		default:
			t.Logf("%s: %d packets missing from the capture, within its %d drops; the relay forwarded >= %d on all %d calls", c.At.Name, missing, dropped, need, c.Streams)
			short = false
		}
		if short {
			return got
		}
	}
	if short {
		t.Errorf("%s (%s): %d of %d streams delivered >= %d of %d RTP packets (PT %d), %d of %d in total (need >= 99%%); per source: %v",
			c.At.Name, c.At.IP, full, c.Streams, need, c.PerCall, c.PT, total, c.Streams*c.PerCall, lines)
	}
	if len(lines) > 4 {
		lines = append(lines[:4], "...")
	}
	t.Logf("%s received PT %d: %d packets from %d sources (%d of %d streams >= %d): %v", c.At.Name, c.PT, total, len(got), full, c.Streams, need, lines)
	return got
}

// CheckNoLANLeak asserts that no SIP message the provider got from the
// router's public address, and none that reached the phone, names a LAN
// address (192.168.100.x), in headers or SDP.
func (r *CallRun) CheckNoLANLeak(t testing.TB) {
	t.Helper()
	seen := 0
	check := func(where string, ms []WireSIP, pred func(WireSIP) bool) {
		for _, m := range ms {
			if !pred(m) {
				continue
			}
			seen++
			if strings.Contains(m.Text, "192.168.100.") {
				var bad []string
				for _, l := range strings.Split(m.Text, "\r\n") {
					if strings.Contains(l, "192.168.100.") {
						bad = append(bad, l)
					}
				}
				t.Errorf("LAN address in %s %s -> %s %q: %q", where, m.Src, m.Dst, m.First, bad)
			}
		}
	}
	wan := netip.MustParseAddr(WANIP1)
	provider := netip.MustParseAddr(ProviderIP)
	check("what the provider received", r.SIP[NSProvider], func(m WireSIP) bool { return m.Src.Addr() == wan && m.Dst.Addr() == provider })
	phone := netip.MustParseAddr(PhoneIP)
	check("what the phone received", r.SIP[NSPhone], func(m WireSIP) bool { return m.Dst.Addr() == phone })
	if seen == 0 {
		t.Errorf("no SIP message from the daemon at the provider or at the phone to check for LAN addresses")
	}
	t.Logf("no LAN address in %d SIP messages the provider got from %s or the phone got", seen, WANIP1)
}

// CheckPBXIsolation asserts that no Via, Record-Route, Route or Contact the
// PBX received names an Internet address (the provider's dialog stays on its
// own leg).
func (r *CallRun) CheckPBXIsolation(t testing.TB) {
	t.Helper()
	pbx := netip.MustParseAddr(PBXIP)
	for _, m := range r.SIP[NSPBX] {
		if m.Dst.Addr() != pbx {
			continue
		}
		for _, h := range []string{"Via", "v", "Record-Route", "Route", "Contact", "m"} {
			for _, v := range m.Header(h) {
				if strings.Contains(v, "198.51.100.") || strings.Contains(v, SIPDomain) {
					t.Errorf("the PBX got %q with %s: %s (provider headers must stay on the provider leg)", m.First, h, v)
				}
			}
		}
	}
}

// CheckSDPPassThrough asserts that the SDP that reached at carries the
// scenarios' codecs untouched: PCMA and telephone-event with its fmtp, ptime.
func (r *CallRun) CheckSDPPassThrough(t testing.TB, at Endpoint) {
	t.Helper()
	ip := netip.MustParseAddr(at.IP)
	n := 0
	for _, m := range r.SIP[at.NS] {
		if m.Dst.Addr() != ip {
			continue
		}
		s, ok := ParseSDPAudio(m.Body())
		if !ok {
			continue
		}
		n++
		if s.Formats != "8 101" {
			t.Errorf("%s got m=audio formats %q in %q, want \"8 101\"", at.Name, s.Formats, m.First)
		}
		have := strings.Join(s.Lines, "\n")
		for _, l := range []string{"a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15", "a=ptime:30"} {
			if !strings.Contains(have, l) {
				t.Errorf("%s got an SDP without %q in %q:\n%s", at.Name, l, m.First, have)
			}
		}
	}
	if n == 0 {
		t.Errorf("%s got no SDP", at.Name)
	}
}

// SIPTo returns the SIP messages captured in at's namespace that reached it.
func (r *CallRun) SIPTo(at Endpoint) []WireSIP {
	ip := netip.MustParseAddr(at.IP)
	var res []WireSIP
	for _, m := range r.SIP[at.NS] {
		if m.Dst.Addr() == ip {
			res = append(res, m)
		}
	}
	return res
}

// SIPFrom returns the SIP messages captured in at's namespace that at sent.
func (r *CallRun) SIPFrom(at Endpoint) []WireSIP {
	ip := netip.MustParseAddr(at.IP)
	var res []WireSIP
	for _, m := range r.SIP[at.NS] {
		if m.Src.Addr() == ip {
			res = append(res, m)
		}
	}
	return res
}

// Flows is the capture of ns summarised, for failure messages.
func (r *CallRun) Flows(ns string) string { return FlowSummary(r.Pkts[ns]) }

// DTMF of uac-dtmf.xml: dtmf_2833_1, _5 and _9.pcap, 10 packets of PT 101
// each (the last three are the end-of-event retransmissions).
var dtmfDigits = []int{1, 5, 9}

const dtmfPacketsPerDigit = 10

// checkDTMF asserts that every RFC 4733 packet of uac-dtmf.xml reached at
// from the announced address srcIP (relay port range as in c), with the
// digits in order and each digit's end bit.
func checkDTMF(t testing.TB, r *CallRun, c AudioCheck) {
	t.Helper()
	c.PT = PTEvent
	c.PerCall = len(dtmfDigits) * dtmfPacketsPerDigit
	r.CheckAudio(t, c)
	var digits []int
	ends := map[int]int{}
	for _, p := range Select(r.Pkts[c.At.NS], To(c.At.IP), From(c.SrcIP), RTPWithPT(PTEvent)) {
		h, _ := ParseRTP(p.Payload)
		if len(h.Body) < 4 {
			t.Errorf("telephone-event packet with a %d-byte payload", len(h.Body))
			continue
		}
		ev := int(h.Body[0])
		if len(digits) == 0 || digits[len(digits)-1] != ev {
			digits = append(digits, ev)
		}
		if h.Body[1]&0x80 != 0 {
			ends[ev]++
		}
	}
	if fmt.Sprint(digits) != fmt.Sprint(dtmfDigits) {
		t.Errorf("%s got the events %v, want %v", c.At.Name, digits, dtmfDigits)
	}
	for _, d := range dtmfDigits {
		if ends[d] != 3 {
			t.Errorf("%s got %d end packets of event %d, want 3", c.At.Name, ends[d], d)
		}
	}
}

// ForwardRTPPool makes the router forward UDP 55000-56000 on its WAN address
// to the daemon, as the README's firewall rules ("RTP in to 55000-56000 from
// anywhere") do on a real router. Without it, the lab's stateful NAT drops
// any packet that does not answer a flow the daemon opened, so a foreign
// source never reaches the daemon at all. The rules live in the router
// namespace only.
func (l *Lab) ForwardRTPPool() error { return l.forwardUDP(fmt.Sprintf("%d:%d", PoolMin, PoolMax)) }

// forwardUDP adds a router port forward of ports (iptables syntax: one
// port or lo:hi) on the WAN address to the daemon, and lets it through.
func (l *Lab) forwardUDP(ports string) error {
	for _, rule := range [][]string{
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport", ports, "-j", "DNAT", "--to-destination", DaemonIP},
		{"iptables", "-I", "FORWARD", "1", "-i", "wan", "-o", "lan", "-p", "udp", "-d", DaemonIP, "--dport", ports, "-j", "ACCEPT"},
	} {
		if _, err := l.Exec(NSRouter, rule...); err != nil {
			return err
		}
	}
	return nil
}

// ExplainOnFailure logs both UAs' message flows and every flow in the
// captures when t has failed (deferred right after StartCall).
func (r *CallRun) ExplainOnFailure(t testing.TB) {
	t.Helper()
	if !t.Failed() {
		return
	}
	t.Logf("message flows:\n%s", r.Traces())
	nss := make([]string, 0, len(r.Pkts))
	for ns := range r.Pkts {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	for _, ns := range nss {
		t.Logf("UDP flows captured in %s:\n%s", ns, r.Flows(ns))
	}
	if r.Pkts[NSLM] != nil && r.Pkts[NSPhone] != nil {
		t.Logf("pinhole timeline (first events):\n%s", r.PinholeTimeline())
	}
}

// PinholeTimeline lists, for the call(s) in the captures, when the daemon
// learnt the phone's media address, ACKed, sent its first media packet to
// the phone, and when the phone's first RTP left: the order that decides the
// pinhole race (nat-findings 4). Needs the lm and phone captures.
func (r *CallRun) PinholeTimeline() string {
	lm, phone := r.Pkts[NSLM], r.Pkts[NSPhone]
	if lm == nil || phone == nil {
		return "(no lm/phone capture)"
	}
	var ev []string
	at := func(what string, t time.Time) {
		if !t.IsZero() {
			ev = append(ev, fmt.Sprintf("%s %s", t.Format("15:04:05.000000"), what))
		}
	}
	provider := netip.MustParseAddr(ProviderIP)
	for _, m := range SIPMessages(lm) {
		switch {
		case m.Src.Addr() == provider && m.Method == "INVITE" && strings.Contains(m.Body(), PhoneIP):
			at("lm: provider's INVITE with the phone's SDP arrives", m.T)
		case m.Src.Addr() == provider && (m.Code == 183 || m.Code == 200) && m.CSeqMethod() == "INVITE" && strings.Contains(m.Body(), PhoneIP):
			at(fmt.Sprintf("lm: provider's %d with the phone's SDP arrives", m.Code), m.T)
		case m.Dst.Addr() == provider && m.Method == "ACK":
			at("lm: daemon's ACK leaves for the provider (to a 407, or to the 200)", m.T)
		}
	}
	first := func(ps []Packet, what string) {
		if len(ps) > 0 {
			at(fmt.Sprintf("%s (%s -> %s)", what, ps[0].Src, ps[0].Dst), ps[0].T)
		}
	}
	isMedia := func(p Packet) bool { return p.Src.Port() >= PoolMin && p.Src.Port() <= PoolMax }
	first(Select(lm, From(DaemonIP), To(PhoneIP), isMedia), "lm: daemon's first media packet to the phone leaves")
	first(Select(phone, From(PhoneIP), To(WANIP1), func(p Packet) bool { _, ok := ParseRTP(p.Payload); return ok }), "phone: its first RTP leaves")
	first(Select(phone, From(WANIP1), To(PhoneIP), func(p Packet) bool { _, ok := ParseRTP(p.Payload); return ok }), "phone: the daemon's first RTP arrives")
	sort.Strings(ev)
	if len(ev) > 15 {
		ev = append(ev[:15], "...")
	}
	return "  " + strings.Join(ev, "\n  ")
}
