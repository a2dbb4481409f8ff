package linkmanager

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// mediaPolicy decides which addresses an SDP may send the relay's media
// to (issue 9 item 8). An SDP is the peer's word, and the relay sends to
// it before anything is heard from there (the pinhole packet on the
// Internet leg): left unchecked, a provider-side SDP naming 127.0.0.1:5999
// or the PBX's 192.168.100.20:5060 makes the daemon send there, from
// inside the LAN. Refused on either leg: loopback (unless that side's
// own socket is on loopback: a PBX on the same host), link-local, multicast,
// the limited broadcast, the daemon's own addresses, and its public
// address on a relay pool port (both relay loops). On the Internet leg
// also the LAN: the PBX, pbx.allow and our LAN address. The public address
// on other ports stays allowed: a softphone behind the same router, seen
// through the provider, has it, and a hairpinning router reaches it.
type mediaPolicy struct {
	lan    atomic.Pointer[[]netip.Prefix] // the PBX side; swapped on reload
	own    [2]netip.Addr                  // our LAN and Internet socket addresses (any port)
	public func() (netip.Addr, bool)      // our public address (pool ports only)
	pool   [2]int                         // the Internet pool's range
	// loopbackOK, by leg: that side's own socket is on loopback (a PBX on
	// the same host, or a test), so loopback media is that side's peer.
	loopbackOK [2]bool
	refused    atomic.Uint64
	log        *zap.Logger
	logged     rate.Sometimes
}

func newMediaPolicy(pbx b2bua.PBXOptions, wan netip.Addr, public func() (netip.Addr, bool), pool [2]int, log *zap.Logger) *mediaPolicy {
	p := &mediaPolicy{own: [2]netip.Addr{pbx.Listen.Addr().Unmap(), wan.Unmap()}, public: public, pool: pool, log: log,
		logged: rate.Sometimes{Interval: 10 * time.Second}}
	p.loopbackOK[rtpbridge.LegA] = pbx.Listen.Addr().Unmap().IsLoopback()
	p.loopbackOK[rtpbridge.LegB] = wan.Unmap().IsLoopback()
	p.setPBX(pbx)
	return p
}

// setPBX takes the LAN side's addresses from the PBX settings.
func (p *mediaPolicy) setPBX(o b2bua.PBXOptions) {
	lan := append([]netip.Prefix(nil), o.Allow...)
	for _, a := range []netip.Addr{o.Addr.Addr(), o.Listen.Addr()} {
		if a.IsValid() {
			lan = append(lan, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		}
	}
	p.lan.Store(&lan)
}

// check returns why leg may not send to a, nil when it may. A zero
// address (no remote, or hold) is always allowed: nothing is sent.
func (p *mediaPolicy) check(leg rtpbridge.Leg, a netip.AddrPort) error {
	if p == nil || !a.IsValid() {
		return nil
	}
	ip := a.Addr().Unmap()
	var why string
	switch {
	case ip.IsUnspecified() || a.Port() == 0:
		why = "unspecified"
	case ip.IsLoopback() && !p.loopbackOK[leg]:
		why = "loopback"
	case ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast():
		why = "link-local"
	case ip.IsMulticast():
		why = "multicast"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "broadcast"
	}
	if why == "" {
		for _, own := range p.own {
			if ip == own && !ip.IsLoopback() {
				why = "one of the daemon's own addresses"
			}
		}
	}
	if why == "" {
		if pub, ok := p.public(); ok && ip == pub.Unmap() && int(a.Port()) >= p.pool[0] && int(a.Port()) <= p.pool[1] {
			why = "the daemon's public address on a relay port"
		}
	}
	if why == "" && leg == rtpbridge.LegB {
		for _, pre := range *p.lan.Load() {
			if pre.Contains(ip) {
				why = "on the PBX's side (" + pre.String() + ")"
			}
		}
	}
	if why == "" {
		return nil
	}
	n := p.refused.Add(1)
	p.logged.Do(func() {
		p.log.Warn("SDP media address refused: nothing is sent there", zap.Stringer("leg", leg), zap.Stringer("addr", a),
			zap.String("why", why), zap.Uint64("refused", n))
	})
	return fmt.Errorf("%w: %s is %s", ErrMediaAddress, a, why)
}

// policedSession is a relay session whose remotes pass the policy first.
type policedSession struct {
	*rtpbridge.Session
	policy *mediaPolicy
}

// SetRemote sets nothing when either address is refused: the leg then
// has no remote, so the relay sends nowhere rather than to the SDP's
// target.
func (s policedSession) SetRemote(l rtpbridge.Leg, rtp, rtcp netip.AddrPort) error {
	if err := s.policy.check(l, rtp); err != nil {
		return err
	}
	if err := s.policy.check(l, rtcp); err != nil {
		return err
	}
	return s.Session.SetRemote(l, rtp, rtcp)
}
