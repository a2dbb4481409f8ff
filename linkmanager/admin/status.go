// Package admin is the local HTTP endpoint: health, readiness, /status
// and Prometheus metrics, all built from snapshots and call-ended events
// the daemon hands it.
package admin

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// Status is what /status reports and `linkmanager status` prints.
type Status struct {
	Ready     bool          `json:"ready"`
	Reason    string        `json:"reason,omitempty"` // why not ready
	Draining  bool          `json:"draining"`
	Public    string        `json:"public_addr,omitempty"`
	PublicSrc string        `json:"public_addr_source,omitempty"` // stun | registrar
	NAT       string        `json:"nat"`                          // endpoint-independent | symmetric | unknown
	NATTest   *NATTest      `json:"nat_test,omitempty"`           // the last RFC 5780 self-test
	SIPALG    SIPALG        `json:"sip_alg"`                      // whether the router rewrites SIP, over all trunks
	Trunks    []TrunkStatus `json:"trunks"`
	Calls     []CallStatus  `json:"calls"`
	Ports     *PortStatus   `json:"ports,omitempty"`
	// PortMap is what the router granted (nat.portmap), nil when off.
	PortMap *portmap.Status `json:"portmap,omitempty"`
}

// NATTest is the last NAT self-test (stunkeeper.NATWatch), in an admin's
// words and in RFC 4787/5780 terms.
type NATTest struct {
	Verdict   string `json:"verdict"` // e.g. port-restricted cone, symmetric
	Works     bool   `json:"works"`   // a remote that does not latch reaches the SDP address
	Advice    string `json:"advice"`  // what to do, one line
	Mapping   string `json:"mapping"`
	Filtering string `json:"filtering"`
	Hairpin   string `json:"hairpin"`
	Server    string `json:"server,omitempty"`
	Public    string `json:"public_addr,omitempty"` // the test socket's mapping
	Note      string `json:"note,omitempty"`
	Tests     uint64 `json:"tests"` // how many have run
}

// TrunkStatus is one provider account.
type TrunkStatus struct {
	Name       string    `json:"name"`
	Register   bool      `json:"register"`
	Registered bool      `json:"registered"`
	Since      time.Time `json:"since,omitzero"`
	Contact    string    `json:"contact,omitempty"`
	Expires    float64   `json:"expires_seconds,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	Registrar  string    `json:"registrar,omitempty"`
	Public     string    `json:"public_addr,omitempty"` // as the registrar sees us
	PublicSrc  string    `json:"public_addr_source,omitempty"`
	Keepalive  string    `json:"keepalive"`
	Failures   int       `json:"consecutive_failures"`
	Addresses  AddrView  `json:"addresses"`
	SIPALG     SIPALG    `json:"sip_alg"`
}

// SIPALG is whether a router on the way rewrites SIP (a SIP ALG), from
// comparing what a trunk sent with what its registrar's answers echo.
type SIPALG struct {
	Verdict  string    `json:"verdict"`             // unknown | none | detected
	Advice   string    `json:"advice,omitempty"`    // while detected: what to switch off
	Fields   string    `json:"rewritten,omitempty"` // e.g. Via/Contact
	Sent     string    `json:"sent,omitempty"`      // what we sent there
	Seen     string    `json:"came_back,omitempty"` // what came back instead
	Rewrites uint64    `json:"rewrites"`
	Since    time.Time `json:"since,omitzero"`   // per trunk: when the verdict last changed            // answers that came back rewritten
	Trunks   []string  `json:"trunks,omitempty"` // top level: the trunks that see it
	// Top level: SIP from the providers whose Content-Length was not its
	// body's length, and what that means. Forgeable, so no verdict alone.
	LengthMismatches uint64 `json:"content_length_mismatches"`
	Note             string `json:"note,omitempty"`
}

// sipALG is one trunk's verdict as /status shows it.
func sipALG(a trunk.ALGStatus) SIPALG {
	v := SIPALG{Verdict: a.Verdict, Advice: a.Advice, Rewrites: a.Rewrites, Since: a.Since}
	if v.Verdict == "" {
		v.Verdict = trunk.ALGUnknown
	}
	if a.Rewrites > 0 {
		v.Fields, v.Sent, v.Seen = a.Fields, a.Sent, a.Seen
	}
	return v
}

// sipALGOverall is the router's verdict: detected when any trunk's
// answers come back rewritten (it is one router), none when every trunk
// that could tell says so.
func sipALGOverall(trunks []TrunkStatus) SIPALG {
	all := SIPALG{Verdict: trunk.ALGUnknown}
	for _, t := range trunks {
		a := t.SIPALG
		all.Rewrites += a.Rewrites
		switch a.Verdict {
		case trunk.ALGDetected:
			if all.Verdict != trunk.ALGDetected {
				all.Verdict, all.Advice, all.Fields, all.Sent, all.Seen = a.Verdict, a.Advice, a.Fields, a.Sent, a.Seen
			}
			all.Trunks = append(all.Trunks, t.Name)
		case trunk.ALGNone:
			if all.Verdict == trunk.ALGUnknown {
				all.Verdict = trunk.ALGNone
			}
		}
	}
	return all
}

// AddrView is, for one trunk, what each party sees of our public address
// and which of them we hand out, so that a mismatch behind a NAT that maps
// per destination is visible rather than a mystery.
type AddrView struct {
	Registrar string `json:"registrar_sees,omitempty"` // Via received/rport in the registrar's answers
	STUN      string `json:"stun_sees,omitempty"`      // the freshest STUN answer
	Contact   string `json:"contact_uses,omitempty"`   // the registered Contact
	SDP       string `json:"sdp_uses,omitempty"`       // the IP our SDP carries (its ports are the relay's)
	Note      string `json:"note,omitempty"`           // set when they disagree: what it means
}

// addrView compares the views; zero addresses are unknown. forwarded: the
// admin declared a port forward of the pool (nat.port_forward).
func addrView(registrar, stun, contact, sdp netip.AddrPort, forwarded bool) AddrView {
	str := func(a netip.AddrPort) string {
		if a.IsValid() {
			return a.String()
		}
		return ""
	}
	v := AddrView{Registrar: str(registrar), STUN: str(stun), Contact: str(contact)}
	if sdp.IsValid() {
		v.SDP = sdp.Addr().String()
	}
	switch {
	case registrar.IsValid() && stun.IsValid() && registrar.Addr() != stun.Addr():
		v.Note = fmt.Sprintf("the registrar sees %s but STUN sees %s: two public IPs (two uplinks, or a carrier-grade NAT); "+
			"the provider answers where it sees us, so signalling works, but media to %s may not", registrar.Addr(), stun.Addr(), sdp.Addr())
	case registrar.IsValid() && stun.IsValid() && registrar != stun:
		media := "inbound media needs the remote to latch or a port forward of the RTP pool (run `linkmanager nat-test`)"
		if forwarded {
			media = "inbound media comes through the declared port forward of the RTP pool (nat.port_forward)"
		}
		v.Note = fmt.Sprintf("the registrar sees port %d but STUN sees %d: the router maps per destination (symmetric NAT); "+
			"signalling works on the registrar's flow, and %s", registrar.Port(), stun.Port(), media)
	case contact.IsValid() && registrar.IsValid() && contact != registrar:
		v.Note = fmt.Sprintf("the registered Contact %s is not where the registrar sees us (%s): the next refresh moves it", contact, registrar)
	}
	return v
}

// CallStatus is one active call.
type CallStatus struct {
	ID        string    `json:"id"`
	Direction string    `json:"direction"`
	Trunk     string    `json:"trunk"`
	From      string    `json:"from"`
	To        string    `json:"to"`
	Answered  bool      `json:"answered"`
	Duration  float64   `json:"duration_seconds"`
	Codec     string    `json:"codec,omitempty"`
	PBXToNet  Flow      `json:"pbx_to_provider"`
	NetToPBX  Flow      `json:"provider_to_pbx"`
	OneWay    bool      `json:"one_way_audio"`
	Started   time.Time `json:"started"`
}

// Flow is one direction of a call's media.
type Flow struct {
	Packets uint64  `json:"packets"`
	Lost    int64   `json:"lost"`
	Jitter  float64 `json:"jitter_seconds"`
	Dropped uint64  `json:"dropped"`
}

// PortStatus is the relay pools' usage, in RTP/RTCP pairs, and what it
// means in calls.
type PortStatus struct {
	LAN      rtpbridge.PoolCounts `json:"lan"`
	WAN      rtpbridge.PoolCounts `json:"internet"`
	Capacity Capacity             `json:"capacity"`
}

// CapacityWarn is the share of the relay's call capacity in use at which
// /status warns and the daemon logs a warning.
const CapacityWarn = 0.9

// Capacity is how many calls the relay pools hold and how many are up.
type Capacity struct {
	Calls   int     `json:"calls"`
	Max     int     `json:"max_calls"`
	Percent float64 `json:"percent"`
	Warning string  `json:"warning,omitempty"` // set from CapacityWarn up
}

// CapacityOf is the relay's capacity in calls. Quarantined pairs count as
// available: a new call takes one over when no pair is free. The warning
// names the pool that bounds it and how to widen it.
func CapacityOf(c rtpbridge.BridgeCounts) Capacity {
	cp := Capacity{Calls: c.Sessions, Max: c.MaxSessions()}
	if cp.Max > 0 {
		cp.Percent = math.Round(1000*float64(cp.Calls)/float64(cp.Max)) / 10
	}
	if cp.Max == 0 || float64(cp.Calls) < CapacityWarn*float64(cp.Max) {
		return cp
	}
	lan, p := c.Limit()
	field, forward := "rtp.port_min and rtp.port_max", " and the router's port forward to match (`linkmanager firewall` prints it)"
	if lan {
		field, forward = "rtp.lan_port_min and rtp.lan_port_max", ""
	}
	perCall := 2
	if c.Shared {
		perCall = 4
	}
	cp.Warning = fmt.Sprintf("relay ports %.0f %% used (%d of %d calls): widen %s (now %d-%d, %d ports per call)%s",
		cp.Percent, cp.Calls, cp.Max, field, p.MinPort, p.MaxPort, perCall, forward)
	return cp
}

func flowOf(d rtpbridge.Direction) Flow {
	return Flow{Packets: d.Packets, Lost: d.Lost, Jitter: d.Jitter.Seconds(), Dropped: d.Foreign + d.Malformed}
}

// Source is the daemon as the admin endpoint sees it: readiness and a
// snapshot taken when asked. Admin never reads another package's fields.
type Source interface {
	Ready() (bool, string)
	Snapshot() Snapshot
}

// Snapshot is the daemon's state at one instant, gathered by its owner.
type Snapshot struct {
	Ready    bool
	Reason   string
	Draining bool
	Public   stunkeeper.Mapping // zero when unknown; what our SDP and Via carry
	STUNView stunkeeper.Mapping // the freshest STUN answer; zero when none
	NAT      string
	// NATTest is the last self-test, nil before the first (or without
	// STUN servers); NATAdvice its advice for the configured RTP pool.
	NATTest   *stunkeeper.NATReport
	NATAdvice string
	// PortForward: nat.port_forward, known from the start (the first
	// NAT test's report carries it only seconds later).
	PortForward bool
	NATTests    uint64
	STUN        stunkeeper.Stats
	Trunks      []trunk.RegStatus
	Sockets     []SocketDrops
	// The B2BUA side; nil without a PBX socket.
	Calls *b2bua.Snapshot
	Media *MediaCounts
	// PortMap is the router's mappings; nil with nat.portmap off.
	PortMap *portmap.Status
}

// SocketDrops is what one SIP socket dropped before parsing.
type SocketDrops struct {
	Name      string // "internet" or "pbx"
	Source    uint64 // from an address not allowed
	Rejected  uint64 // of those, answered with a stateless 403
	Malformed uint64
	LargeSent uint64 // SIP messages sent above sharedconn.LargeDatagram bytes
	// LengthMismatch is SIP received whose Content-Length is not its
	// body's length (sharedconn.Stats.LengthMismatch).
	LengthMismatch uint64
}

// MediaCounts is the relay's own counters.
type MediaCounts struct {
	Pools     rtpbridge.BridgeCounts
	NoSession uint64 // packets for no session
	// RefusedAddrs counts SDP media addresses the relay would not send to
	// (loopback, the LAN from the Internet side, ...).
	RefusedAddrs uint64
}

// status turns a snapshot into what /status reports.
func status(s Snapshot) Status {
	st := Status{Ready: s.Ready, Reason: s.Reason, NAT: s.NAT, Draining: s.Draining, Trunks: []TrunkStatus{}, Calls: []CallStatus{}}
	st.PortMap = s.PortMap
	if r := s.NATTest; r != nil {
		st.NATTest = &NATTest{Verdict: string(r.Verdict), Works: r.Works(), Advice: s.NATAdvice, Mapping: string(r.Mapping),
			Filtering: string(r.Filtering), Hairpin: string(r.Hairpin), Server: r.Server, Note: r.Note, Tests: s.NATTests}
		if r.Public.IsValid() {
			st.NATTest.Public = r.Public.String()
		}
	}
	// The top-level address is the one the provider sees (issue 9 item 14):
	// behind a NAT that maps per destination, the STUN server's view is
	// a port the provider never sends to. The first trunk whose registrar
	// reported one gives it; without one, the keeper's view.
	if s.Public.Addr.IsValid() {
		st.Public, st.PublicSrc = s.Public.Addr.String(), string(s.Public.Source)
	}
	for _, r := range s.Trunks {
		if r.Public.IsValid() {
			st.Public, st.PublicSrc = r.Public.String(), string(stunkeeper.SourceRegistrar)
			break
		}
	}
	for _, r := range s.Trunks {
		ts := TrunkStatus{Name: r.Trunk, Register: r.Register, Registered: r.Registered, Since: r.Since,
			LastError: r.LastError, Keepalive: r.Keepalive, Failures: r.Failures}
		if r.Registered {
			ts.Contact, ts.Expires = r.Contact.String(), r.Expires.Seconds()
		}
		if r.Registrar.IsValid() {
			ts.Registrar = r.Registrar.String()
		}
		if r.Public.IsValid() {
			ts.Public, ts.PublicSrc = r.Public.String(), string(stunkeeper.SourceRegistrar)
		} else if s.Public.Addr.IsValid() {
			ts.Public, ts.PublicSrc = s.Public.Addr.String(), string(s.Public.Source)
		}
		var contact netip.AddrPort
		if r.Registered {
			contact = r.Contact
		}
		ts.Addresses = addrView(r.Public, s.STUNView.Addr, contact, s.Public.Addr, s.PortForward || s.NATTest != nil && s.NATTest.PortForward)
		ts.SIPALG = sipALG(r.ALG)
		st.Trunks = append(st.Trunks, ts)
	}
	st.SIPALG = sipALGOverall(st.Trunks)
	for _, sc := range s.Sockets {
		if sc.Name == "internet" {
			st.SIPALG.LengthMismatches = sc.LengthMismatch
		}
	}
	if n := st.SIPALG.LengthMismatches; n > 0 {
		st.SIPALG.Note = fmt.Sprintf("%d SIP message(s) from the providers had a Content-Length other than their body's length: "+
			"the mark of a SIP ALG that edits SDP (or of a broken sender); if calls fail, switch off 'SIP ALG' on the router", n)
	}
	if s.Calls != nil {
		st.Calls = callStatus(s.Calls.Calls)
	}
	if s.Media != nil {
		st.Ports = &PortStatus{LAN: s.Media.Pools.LAN, WAN: s.Media.Pools.WAN, Capacity: CapacityOf(s.Media.Pools)}
	}
	return st
}

func callStatus(calls []b2bua.CallInfo) []CallStatus {
	out := make([]CallStatus, 0, len(calls))
	for _, c := range calls {
		cs := CallStatus{ID: c.ID, Direction: c.Direction, Trunk: c.Trunk, From: c.From, To: c.To, Codec: c.Codec,
			Started: c.Started, PBXToNet: flowOf(c.Media.AtoB), NetToPBX: flowOf(c.Media.BtoA)}
		if !c.Answered.IsZero() {
			cs.Answered = true
			cs.Duration = time.Since(c.Answered).Seconds()
			cs.OneWay = c.Media.OneWay()
		}
		out = append(out, cs)
	}
	return out
}
