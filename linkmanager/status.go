package linkmanager

import (
	"strings"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
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
	Trunks    []TrunkStatus `json:"trunks"`
	Calls     []CallStatus  `json:"calls"`
	Ports     *PortStatus   `json:"ports,omitempty"`
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

// PortStatus is the relay pools' usage, in RTP/RTCP pairs.
type PortStatus struct {
	LAN rtpbridge.PoolCounts `json:"lan"`
	WAN rtpbridge.PoolCounts `json:"internet"`
}

func flowOf(d rtpbridge.Direction) Flow {
	return Flow{Packets: d.Packets, Lost: d.Lost, Jitter: d.Jitter.Seconds(), Dropped: d.Foreign + d.Malformed}
}

// Ready reports whether the daemon can carry calls: the SIP socket is
// served, every trunk that registers is registered, and we are not
// draining. The reason names what is missing.
func (s *Server) Ready() (bool, string) {
	if s.draining.Load() {
		return false, "shutting down"
	}
	select {
	case <-s.conn.Ready():
	default:
		return false, "SIP socket not served yet"
	}
	var missing []string
	for _, t := range s.trunkList() {
		if t.conf.Register && !t.reg.Status().Registered {
			missing = append(missing, t.conf.Name)
		}
	}
	if len(missing) > 0 {
		return false, "not registered: " + strings.Join(missing, ", ")
	}
	return true, ""
}

// Snapshot gathers the status.
func (s *Server) Snapshot() Status {
	st := Status{NAT: string(s.keeper.NAT()), Draining: s.draining.Load(), Trunks: []TrunkStatus{}, Calls: []CallStatus{}}
	st.Ready, st.Reason = s.Ready()
	if m, ok := s.keeper.Public(); ok {
		st.Public, st.PublicSrc = m.Addr.String(), string(m.Source)
	}
	for _, t := range s.trunkList() {
		r := t.reg.Status()
		ts := TrunkStatus{Name: t.conf.Name, Register: t.conf.Register, Registered: r.Registered, Since: r.Since,
			LastError: r.LastError, Keepalive: t.conf.Keepalive, Failures: r.Failures}
		if m := t.keepalive.Load(); m != nil {
			ts.Keepalive = *m
		}
		if r.Registered {
			ts.Contact, ts.Expires = r.Contact.String(), r.Expires.Seconds()
		}
		if r.Registrar.IsValid() {
			ts.Registrar = r.Registrar.String()
		}
		if r.Public.IsValid() {
			ts.Public, ts.PublicSrc = r.Public.String(), string(stunkeeper.SourceRegistrar)
		} else if m, ok := s.keeper.Public(); ok {
			ts.Public, ts.PublicSrc = m.Addr.String(), string(m.Source)
		}
		st.Trunks = append(st.Trunks, ts)
	}
	if b := s.b2bua; b != nil {
		st.Calls = callStatus(b.Snapshot().Calls)
		c := s.media.Counts()
		st.Ports = &PortStatus{LAN: c.LAN, WAN: c.WAN}
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
