package sdp

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rewrite returns a copy of body that sends the media of each m-line i in
// ports to addr:ports[i], with RTCP on ports[i]+1, as the relay allocates
// them. It is used in both directions: towards the provider with the public
// address and a pool port, towards the PBX with the LAN address and a LAN
// relay port.
//
// Changed lines:
//   - o=: username and session id kept, version set to originVersion, address
//     set to addr. A B2BUA's two legs are separate sessions, so the caller
//     keeps one version counter per leg: the same value to resend an
//     unchanged SDP (session-timer refresh), the last value plus one for
//     every changed offer (RFC 3264 §8). The sender's own counter cannot be
//     copied: the relay may change ports without the sender re-offering.
//   - c=, session and media level: addr, except that c=IN IP4 0.0.0.0 stays.
//     It is an RFC 2543 hold and the far end must still see a hold; the
//     direction attributes are never touched either, so every hold form
//     reaches the far end as it was sent.
//   - m=: the port becomes ports[i]. A stream that had port 0 keeps it, and
//     a stream missing from ports gets port 0: it is not relayed, so the
//     only honest thing to offer or answer is a disabled stream.
//   - a=rtcp (RFC 3605): port ports[i]+1, and addr if it carried an address
//     (0.0.0.0 kept, as for c=). Dropped in a disabled stream.
//
// Removed lines:
//   - ICE (a=candidate, a=ice-ufrag, ...). The relay does not answer
//     connectivity checks, host candidates are exactly the LAN addresses we
//     must not leak, and any path ICE found would bypass the relay. Without
//     ICE attributes both ends use plain c=/m= (RFC 8445 backward
//     compatibility).
//   - Any other line naming the sender's o=/c=/a=rtcp address or any
//     private, loopback, link-local or CGNAT IPv4 address (say a vendor
//     attribute or an a=ssrc cname with a host address): LAN addresses never
//     leave the LAN. An s= line is replaced by "s=-" instead, since s= is
//     mandatory, and an o= username or session id by "-" or "0". An m= line
//     that names such an address cannot be dropped, so Rewrite fails with
//     ErrUnsupported; no real stack writes one.
//
// Everything else is copied byte for byte, each line with its own ending.
// SRTP (RTP/SAVP with a=crypto, or DTLS fingerprints) needs nothing special:
// it encrypts payloads only, so the relay forwards it like RTP, and the keys
// travel end to end in the body as they would through any SIP proxy.
func Rewrite(body []byte, addr netip.Addr, ports map[int]int, originVersion uint64) ([]byte, error) {
	addr = addr.Unmap()
	switch {
	case addr.Is6():
		return nil, fmt.Errorf("%w: relay address %s", ErrIPv6, addr)
	case !addr.IsValid(), addr.IsUnspecified(), addr.IsMulticast(), addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return nil, fmt.Errorf("%w: relay address %s", ErrBadRelay, addr)
	}
	p, err := parse(body)
	if err != nil {
		return nil, err
	}
	for i, port := range ports {
		if i < 0 || i >= len(p.sess.Media) {
			return nil, fmt.Errorf("%w: no m-line %d", ErrBadRelay, i)
		}
		if port < 1 || port > 65534 {
			return nil, fmt.Errorf("%w: port %d for m-line %d", ErrBadRelay, port, i)
		}
	}
	r := rewriter{p: p, relay: addr, ports: ports, version: originVersion, hidden: make(map[netip.Addr]bool)}
	for _, a := range p.addrs {
		if !a.IsUnspecified() && a != addr {
			r.hidden[a] = true
		}
	}
	out := make([]byte, 0, len(body)+64)
	for _, l := range p.lines {
		text, keep := r.line(l)
		if keep && text != "" && text[0] == 'm' && r.leaks(text) {
			// An m= line cannot be dropped or edited beyond its port.
			return nil, fmt.Errorf("%w: m-line %d names an address to hide", ErrUnsupported, l.media)
		}
		if keep {
			out = append(out, text...)
			out = append(out, l.eol...)
		}
	}
	return out, nil
}

type rewriter struct {
	p       *parsed
	relay   netip.Addr
	ports   map[int]int
	version uint64
	hidden  map[netip.Addr]bool
}

// line returns the rewritten text of l, or false to drop it. parse has
// validated every line, so the re-parsing here cannot fail.
func (r *rewriter) line(l line) (string, bool) {
	t := l.text
	if t == "" {
		return t, true
	}
	port, active := r.port(l.media)
	switch t[0] {
	case 'o':
		o := r.p.sess.Origin
		// Username and session id are only identifiers; a stack that
		// builds them from its address must not leak it.
		user, id := o.Username, o.SessionID
		if r.leaks(user) {
			user = "-"
		}
		if r.leaks(id) {
			id = "0"
		}
		return "o=" + user + " " + id + " " + strconv.FormatUint(r.version, 10) + " IN IP4 " + r.relay.String(), true
	case 'c':
		if a, _ := parseAddr(fields(t[2:])); a.IsUnspecified() {
			return t, true
		}
		return "c=IN IP4 " + r.relay.String(), true
	case 'm':
		start, end := portSpan(t)
		return t[:start] + strconv.Itoa(port) + t[end:], true
	case 'a':
		name, value, _ := strings.Cut(t[2:], ":")
		if isICE(name) {
			return "", false
		}
		if name == "rtcp" && l.media >= 0 {
			if !active {
				return "", false
			}
			_, a, _ := parseRTCP(value)
			s := "a=rtcp:" + strconv.Itoa(port+1)
			switch {
			case a.IsUnspecified():
				s += " IN IP4 0.0.0.0"
			case a.IsValid():
				s += " IN IP4 " + r.relay.String()
			}
			return s, true
		}
	}
	if r.leaks(t) {
		if t[0] == 's' {
			return "s=-", true
		}
		return "", false
	}
	return t, true
}

// port is the relay port of m-line mi, and false (port 0) if the stream is
// or becomes disabled.
func (r *rewriter) port(mi int) (int, bool) {
	if mi < 0 || r.p.sess.Media[mi].Port == 0 {
		return 0, false
	}
	p, ok := r.ports[mi]
	return p, ok
}

// leaks reports whether s names an address that must not pass the relay.
// Splitting at everything but digits and dots finds an address glued to
// other text ("cname:pbx@192.168.1.5", "ip=10.0.0.1:5004"), and trying every
// four consecutive parts finds it inside a longer dotted run too.
func (r *rewriter) leaks(s string) bool {
	for _, tok := range strings.FieldsFunc(s, func(c rune) bool { return c != '.' && (c < '0' || c > '9') }) {
		parts := strings.Split(tok, ".")
		for k := 0; k+4 <= len(parts); k++ {
			a, err := netip.ParseAddr(strings.Join(parts[k:k+4], "."))
			if err == nil && a != r.relay && (r.hidden[a] || internal(a)) {
				return true
			}
		}
	}
	return false
}

// internal reports addresses that only mean something inside a site,
// including the carrier-grade NAT range 100.64.0.0/10 (RFC 6598).
func internal(a netip.Addr) bool {
	b := a.As4()
	return a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() || (b[0] == 100 && b[1]&0xc0 == 64)
}

func isICE(name string) bool {
	switch name {
	case "candidate", "remote-candidates", "end-of-candidates",
		"ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "ice-mismatch", "ice-pacing":
		return true
	}
	return false
}

// portSpan returns the byte range of the second field of an m= line, with
// the same separators as fields, so that only the port is replaced.
func portSpan(t string) (start, end int) {
	sep := func(c byte) bool { return c == ' ' || c == '\t' }
	i := 2
	for i < len(t) && sep(t[i]) {
		i++
	}
	for i < len(t) && !sep(t[i]) {
		i++
	}
	for i < len(t) && sep(t[i]) {
		i++
	}
	start = i
	for i < len(t) && !sep(t[i]) {
		i++
	}
	return start, i
}
