package linkmanager

import (
	"strings"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

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
		if st := t.Status(); st.Register && !st.Registered {
			missing = append(missing, t.Name())
		}
	}
	if len(missing) > 0 {
		return false, "not registered: " + strings.Join(missing, ", ")
	}
	return true, ""
}

// Snapshot gathers every component's state for the admin endpoint, each
// through its own accessor.
func (s *Server) Snapshot() admin.Snapshot {
	snap := admin.Snapshot{NAT: string(s.keeper.NAT()), Draining: s.draining.Load(), STUN: s.keeper.Stats(),
		Trunks: s.Status()}
	snap.Ready, snap.Reason = s.Ready()
	if m, ok := s.keeper.Public(); ok {
		snap.Public = m
	}
	// The STUN view: Public when it came from STUN (the keeper prefers
	// its primary server, so this is steady behind a symmetric NAT), else
	// the freshest STUN answer left.
	if snap.Public.Source != stunkeeper.SourceRegistrar {
		snap.STUNView = snap.Public
	} else {
		for _, o := range s.keeper.Observations() {
			if o.Source != stunkeeper.SourceRegistrar && o.At.After(snap.STUNView.At) {
				snap.STUNView = o
			}
		}
	}
	if s.natw != nil {
		snap.PortForward = s.natw.PortForward()
		if r, n, ok := s.natw.Last(); ok {
			snap.NATTest, snap.NATTests = &r, n
			snap.NATAdvice = r.Advice(s.rtpPorts[0], s.rtpPorts[1])
		}
	}
	if s.portmap != nil {
		st := s.portmap.Status()
		snap.PortMap = &st
	}
	for _, sc := range []struct {
		name string
		c    *sharedconn.Conn
	}{{"internet", s.conn}, {"pbx", s.lan}} {
		if sc.c == nil {
			continue
		}
		st := sc.c.Stats()
		snap.Sockets = append(snap.Sockets, admin.SocketDrops{Name: sc.name, Source: st.DroppedSource, Rejected: st.Rejected, Malformed: st.DroppedMalformed,
			LargeSent: st.LargeSent, LengthMismatch: st.LengthMismatch})
	}
	if s.b2bua != nil {
		calls := s.b2bua.Snapshot()
		snap.Calls = &calls
		snap.Media = &admin.MediaCounts{Pools: s.media.Counts(), NoSession: s.media.NoSessionDrops(), RefusedAddrs: s.policy.refused.Load()}
	}
	return snap
}

// Metrics is the call counters the B2BUA feeds, for admin.New.
func (s *Server) Metrics() *admin.Metrics { return s.metrics }
