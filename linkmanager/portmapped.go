package linkmanager

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// mappedSession is a relay session whose Internet-side RTP pair the
// router maps (nat.portmap) for as long as the call holds it. It is the
// seam between the relay and the SDP: LocalPort(LegB) is the port the SDP
// advertises, so it answers the router's external port where that differs
// from the local one.
type mappedSession struct {
	b2bua.Session
	pm  *portmap.Mapper
	log *zap.Logger

	mu     sync.Mutex
	local  uint16 // the mapped local RTP port; 0: none
	public uint16 // its external port
}

func newMappedSession(s b2bua.Session, pm *portmap.Mapper, log *zap.Logger) *mappedSession {
	m := &mappedSession{Session: s, pm: pm, log: log}
	m.mapPair(s.LocalPort(rtpbridge.LegB))
	return m
}

// mapPair asks the router for port (RTP) and port+1 (RTCP), before the SDP
// that names them goes out. Without a gateway it returns at once, and the
// call goes on unmapped.
func (m *mappedSession) mapPair(port uint16) {
	if port == 0 {
		return
	}
	start := time.Now()
	rtp, err := m.pm.Add(context.Background(), port)
	if err != nil {
		return // ErrNoGateway (no router support) is the common case: /status says so
	}
	if _, err := m.pm.Add(context.Background(), port+1); err != nil {
		m.log.Debug("RTCP port not mapped", zap.Uint16("port", port+1), zap.Error(err))
	}
	m.log.Debug("call's RTP pair mapped", zap.Uint16("port", port), zap.Stringer("external", rtp), zap.Duration("took", time.Since(start)))
	m.mu.Lock()
	m.local, m.public = port, rtp.Port()
	m.mu.Unlock()
}

func (m *mappedSession) unmapPair() {
	m.mu.Lock()
	port := m.local
	m.local, m.public = 0, 0
	m.mu.Unlock()
	if port != 0 {
		m.pm.Remove(port)
		m.pm.Remove(port + 1)
	}
}

// LocalPort is the port to advertise: on the Internet side the router's
// external port while a mapping holds it.
func (m *mappedSession) LocalPort(l rtpbridge.Leg) uint16 {
	p := m.Session.LocalPort(l)
	if l != rtpbridge.LegB {
		return p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.local == p && m.public != 0 {
		return m.public
	}
	return p
}

// Rebind moves the mapping along with the leg's new port pair.
func (m *mappedSession) Rebind(l rtpbridge.Leg) (uint16, error) {
	p, err := m.Session.Rebind(l)
	if err != nil || l != rtpbridge.LegB {
		return p, err
	}
	m.unmapPair()
	m.mapPair(p)
	return m.LocalPort(l), nil
}

// Close releases the relay pair, then its mapping.
func (m *mappedSession) Close() error {
	err := m.Session.Close()
	m.unmapPair()
	return err
}
