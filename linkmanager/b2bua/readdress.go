package b2bua

import "go.uber.org/zap"

// Readdress re-INVITEs the provider leg of every answered call on trunk
// ("" for every trunk) with our address as it is now (issue 9 item 9).
// After a redial the router has a new public IP: the remote's RTP to the
// SDP's old address, and its BYE to the old Contact, are lost, so without
// this the remote→PBX audio is dead for the rest of the call. The
// re-INVITE carries the same relay port, the new address in c= and
// Contact, and the next o= version; each runs on its own, and Readdress
// returns at once with how many it started.
func (b *B2BUA) Readdress(trunk string) int {
	b.mu.Lock()
	seen := map[*call]bool{}
	var calls []*call
	for _, c := range b.calls {
		if !seen[c] && (trunk == "" || c.trunk == trunk) {
			seen[c] = true
			calls = append(calls, c)
		}
	}
	b.mu.Unlock()
	n := 0
	for _, c := range calls {
		leg := b.wan.leg
		c.mu.Lock()
		live := !c.ended && !c.setup
		d := c.legs[leg]
		c.mu.Unlock()
		if !live || d == nil || !d.confirmed() {
			continue
		}
		n++
		b.goCall(func() {
			const what = "public address changed"
			if b.reinviteWith(c, d, c.media.LocalPort(leg), what, nil) {
				c.log.Info(what+"; re-INVITEd the provider leg with the new address",
					zap.Stringer("contact", d.side.contact()))
			}
		})
	}
	return n
}
