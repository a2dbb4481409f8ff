// Package sdp reads and rewrites the SDP bodies that linkmanager forwards
// between the PBX leg and the provider leg.
//
// The daemon anchors all media in its own relay (package rtpbridge), so every
// SDP it forwards has to point at the relay instead of at the sender: the
// provider must never see a LAN address, and the PBX must send to our LAN
// relay port. Everything else in the body is negotiated end to end. Codecs,
// payload types, telephone-event, ptime, fmtp, crypto keys and attributes we
// have never heard of belong to the two endpoints, and a relay that does not
// transcode has no business touching them: every field a middlebox
// re-serialises is a new chance to break some endpoint's interop quirk.
//
// So this is a line editor, not an SDP object model. Parse extracts what the
// relay needs and refuses what it cannot relay. Rewrite changes only the
// lines that carry transport addresses (o=, c=, the m= port, a=rtcp), removes
// the lines that would route media around the relay or leak an address past
// it (ICE, and any line naming a hidden address), and copies every other
// byte, line endings included.
package sdp

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// MaxSize bounds the body we parse. A SIP message over UDP cannot carry more,
// and real offers, even with many codecs, are a few KiB; anything larger is
// an attack or a bug and is not worth the memory.
const MaxSize = 64 << 10

// Session is what the relay needs from an SDP body.
type Session struct {
	Origin Origin
	Media  []Media
}

// Origin is the o= line. The fields are kept as text: the SIP layer only
// compares them (an unchanged version means an unchanged offer, RFC 3264
// §8, as in a session-timer refresh), and real stacks do not all stay within
// uint64.
type Origin struct {
	Username  string
	SessionID string
	Version   string
	Address   string // as written; may be a host name or IPv6, it is only an identifier
}

// Media is one m= line with the attributes that steer the relay.
type Media struct {
	Index   int      // position among the m-lines, the key of Rewrite's ports
	Kind    string   // "audio", "image" (T.38, relayed like audio), "video", ...
	Port    int      // 0 = rejected or disabled stream
	Proto   string   // "RTP/AVP", "RTP/SAVP", "udptl", ...
	Formats []string // payload types or format names, in offer order

	// Addr is the effective connection address: media-level c= overrides
	// session-level. Unspecified (0.0.0.0) is an RFC 2543 hold. It is the
	// zero Addr only for a disabled stream without any c= line.
	Addr netip.Addr

	// RTCP is where the peer wants RTCP: a=rtcp (RFC 3605) if present, else
	// Addr:Port+1. It is the zero AddrPort when the stream is disabled or
	// the protocol has no RTCP (udptl).
	RTCP netip.AddrPort

	// RTCPMux reports a=rtcp-mux (RFC 5761). In an offer it is a proposal,
	// not a promise; the relay copes either way since it relays RTCP found
	// on the RTP port too.
	RTCPMux bool

	// Direction is sendrecv, sendonly, recvonly or inactive: media-level
	// overrides session-level, and the default is sendrecv.
	Direction string

	// Hold is true for sendonly, inactive, or a 0.0.0.0 address. recvonly
	// is not hold: it is what the held party answers.
	Hold bool
}

// Parse extracts what the relay needs from an SDP body. It rejects, with one
// of the package's sentinel errors, anything the relay cannot serve, so the
// SIP layer can answer 400 or 488 before allocating ports.
//
// It is lenient where real stacks are sloppy and strictness would only fail
// calls: LF or CRLF line endings, blank lines, extra spaces between fields,
// a disabled stream without formats or c= line. It is strict where a wrong
// guess would misroute media.
func Parse(body []byte) (*Session, error) {
	p, err := parse(body)
	if err != nil {
		return nil, err
	}
	return p.sess, nil
}

// line is one line of the body. text excludes the terminator, so that the
// rewritten body can keep each line's own ending.
type line struct {
	text  string
	eol   string // "\r\n", "\n", or "" for a last line without one
	media int    // index of the enclosing m-section; -1 at session level
}

type parsed struct {
	sess  *Session
	lines []line
	// addrs are the IPv4 addresses the sender put in o=, c= and a=rtcp.
	// Rewrite hides them wherever else they appear.
	addrs []netip.Addr
}

// mediaState is what a section says before the session-level defaults apply.
type mediaState struct {
	conn     netip.Addr
	haveConn bool
	dir      string
	rtcpPort int
	rtcpAddr netip.Addr
}

func parse(body []byte) (*parsed, error) {
	if len(body) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), MaxSize)
	}
	p := &parsed{sess: &Session{}, lines: splitLines(string(body))}
	var (
		sessConn     netip.Addr
		haveSessConn bool
		sessDir      string
		haveVersion  bool
		haveOrigin   bool
		states       []mediaState
	)
	cur := -1
	for i := range p.lines {
		l := &p.lines[i]
		if l.text == "" {
			l.media = cur
			continue
		}
		t := l.text
		if err := checkLine(t); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrMalformed, i+1, err)
		}
		if !haveVersion {
			if t != "v=0" {
				return nil, fmt.Errorf("%w: body must start with v=0, got %q", ErrMalformed, clip(t))
			}
			haveVersion = true
			l.media = cur
			continue
		}
		val := t[2:]
		switch t[0] {
		case 'v':
			return nil, fmt.Errorf("%w: line %d: second v= line", ErrMalformed, i+1)
		case 'o':
			if haveOrigin || cur >= 0 {
				return nil, fmt.Errorf("%w: line %d: o= must appear once, before the first m=", ErrMalformed, i+1)
			}
			o, err := parseOrigin(val)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			p.sess.Origin = o
			if a, err := netip.ParseAddr(o.Address); err == nil && a.Is4() {
				p.addrs = append(p.addrs, a)
			}
			haveOrigin = true
		case 'c':
			a, err := parseAddr(fields(val))
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			p.addrs = append(p.addrs, a)
			if cur < 0 {
				if haveSessConn {
					return nil, fmt.Errorf("%w: line %d: second session-level c=", ErrMalformed, i+1)
				}
				sessConn, haveSessConn = a, true
			} else {
				if states[cur].haveConn {
					return nil, fmt.Errorf("%w: line %d: second c= in m-line %d", ErrMalformed, i+1, cur)
				}
				states[cur].conn, states[cur].haveConn = a, true
			}
		case 'm':
			m, err := parseMedia(val)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			cur++
			m.Index = cur
			p.sess.Media = append(p.sess.Media, m)
			states = append(states, mediaState{})
		case 'a':
			// Direction and rtcp-mux are property attributes: one with a
			// value is something else and passes through unread.
			prop := strings.TrimRight(val, " \t")
			name, value, _ := strings.Cut(val, ":")
			switch {
			case prop == "sendrecv", prop == "sendonly", prop == "recvonly", prop == "inactive":
				if cur < 0 {
					sessDir = prop
				} else {
					states[cur].dir = prop
				}
			case name == "rtcp":
				if cur < 0 {
					break // RFC 3605 defines it per stream only
				}
				port, a, err := parseRTCP(value)
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", i+1, err)
				}
				if a.IsValid() {
					p.addrs = append(p.addrs, a)
				}
				states[cur].rtcpPort, states[cur].rtcpAddr = port, a
			case prop == "rtcp-mux":
				if cur >= 0 {
					p.sess.Media[cur].RTCPMux = true
				}
			}
		}
		l.media = cur
	}
	if !haveVersion {
		return nil, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	if !haveOrigin {
		return nil, fmt.Errorf("%w: no o= line", ErrMalformed)
	}
	if len(p.sess.Media) == 0 {
		return nil, ErrNoMedia
	}
	for i := range p.sess.Media {
		m, st := &p.sess.Media[i], states[i]
		m.Addr = sessConn
		if st.haveConn {
			m.Addr = st.conn
		}
		if m.Port != 0 && !m.Addr.IsValid() {
			return nil, fmt.Errorf("%w: m-line %d has no c= address", ErrMalformed, i)
		}
		m.Direction = "sendrecv"
		if st.dir != "" {
			m.Direction = st.dir
		} else if sessDir != "" {
			m.Direction = sessDir
		}
		m.Hold = m.Direction == "sendonly" || m.Direction == "inactive" ||
			(m.Addr.IsValid() && m.Addr.IsUnspecified())
		if m.Port == 0 || !isRTP(m.Proto) {
			continue
		}
		switch {
		case st.rtcpPort != 0 && st.rtcpAddr.IsValid():
			m.RTCP = netip.AddrPortFrom(st.rtcpAddr, uint16(st.rtcpPort))
		case st.rtcpPort != 0:
			m.RTCP = netip.AddrPortFrom(m.Addr, uint16(st.rtcpPort))
		case m.Port < 65535:
			m.RTCP = netip.AddrPortFrom(m.Addr, uint16(m.Port+1))
		}
	}
	return p, nil
}

// splitLines splits at LF and remembers each line's terminator, so that
// joining text+eol gives back the body exactly.
func splitLines(s string) []line {
	lines := make([]line, 0, strings.Count(s, "\n")+1)
	for s != "" {
		l := line{text: s}
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			l.text, l.eol, s = s[:i], "\n", s[i+1:]
			if strings.HasSuffix(l.text, "\r") {
				l.text, l.eol = l.text[:len(l.text)-1], "\r\n"
			}
		} else {
			s = ""
		}
		lines = append(lines, l)
	}
	return lines
}

// checkLine accepts "x=value" with no control characters but tab. A stray CR
// or NUL inside a line is how header injection and parser confusion start.
func checkLine(t string) error {
	if len(t) < 2 || t[0] < 'a' || t[0] > 'z' || t[1] != '=' {
		return fmt.Errorf("not a type=value line: %q", clip(t))
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("control character 0x%02x", c)
		}
	}
	return nil
}

func parseOrigin(v string) (Origin, error) {
	f := fields(v)
	if len(f) != 6 {
		return Origin{}, fmt.Errorf("%w: o= needs 6 fields, got %d", ErrMalformed, len(f))
	}
	// The o= address is replaced on rewrite and never used to route
	// media, so its type does not matter here.
	return Origin{Username: f[0], SessionID: f[1], Version: f[2], Address: f[5]}, nil
}

// parseAddr reads "<nettype> <addrtype> <address>" as in c= and a=rtcp.
func parseAddr(f []string) (netip.Addr, error) {
	if len(f) != 3 {
		return netip.Addr{}, fmt.Errorf("%w: address needs 3 fields, got %d", ErrMalformed, len(f))
	}
	if f[0] != "IN" {
		return netip.Addr{}, fmt.Errorf("%w: network type %q", ErrUnsupported, clip(f[0]))
	}
	switch f[1] {
	case "IP4":
	case "IP6":
		return netip.Addr{}, fmt.Errorf("%w: %q", ErrIPv6, clip(f[2]))
	default:
		return netip.Addr{}, fmt.Errorf("%w: address type %q", ErrUnsupported, clip(f[1]))
	}
	if strings.Contains(f[2], "/") {
		return netip.Addr{}, fmt.Errorf("%w: multicast address %q", ErrUnsupported, clip(f[2]))
	}
	a, err := netip.ParseAddr(f[2])
	switch {
	case err != nil && isHostName(f[2]):
		return netip.Addr{}, fmt.Errorf("%w: host name %q instead of an address", ErrUnsupported, clip(f[2]))
	case err != nil || !a.Is4():
		return netip.Addr{}, fmt.Errorf("%w: bad IPv4 address %q", ErrMalformed, clip(f[2]))
	case a.IsMulticast():
		return netip.Addr{}, fmt.Errorf("%w: multicast address %s", ErrUnsupported, a)
	}
	return a, nil
}

func parseMedia(v string) (Media, error) {
	f := fields(v)
	if len(f) < 3 {
		return Media{}, fmt.Errorf("%w: m= needs media, port and proto", ErrMalformed)
	}
	if strings.Contains(f[1], "/") {
		return Media{}, fmt.Errorf("%w: port count in m= %q", ErrUnsupported, clip(f[1]))
	}
	port, ok := parsePort(f[1])
	if !ok {
		return Media{}, fmt.Errorf("%w: bad m= port %q", ErrMalformed, clip(f[1]))
	}
	m := Media{Kind: f[0], Port: port, Proto: f[2], Formats: append([]string(nil), f[3:]...)}
	if port != 0 && len(m.Formats) == 0 {
		return Media{}, fmt.Errorf("%w: m= without formats", ErrMalformed)
	}
	return m, nil
}

// parseRTCP reads the value of "a=rtcp:<port> [IN IP4 <address>]". The
// address is the zero Addr when the attribute has none.
func parseRTCP(v string) (int, netip.Addr, error) {
	f := fields(v)
	if len(f) != 1 && len(f) != 4 {
		return 0, netip.Addr{}, fmt.Errorf("%w: a=rtcp:%q", ErrMalformed, clip(v))
	}
	port, ok := parsePort(f[0])
	if !ok || port == 0 {
		return 0, netip.Addr{}, fmt.Errorf("%w: bad a=rtcp port %q", ErrMalformed, clip(f[0]))
	}
	if len(f) == 1 {
		return port, netip.Addr{}, nil
	}
	a, err := parseAddr(f[1:])
	return port, a, err
}

// parsePort accepts plain decimal 0..65535; strconv.Atoi alone would take
// "+80" and "-0".
func parsePort(s string) (int, bool) {
	if len(s) == 0 || len(s) > 5 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n <= 65535
}

// isRTP tells protocols that have RTCP beside them (RTP/AVP, RTP/SAVPF,
// UDP/TLS/RTP/SAVPF, ...) from those that do not (udptl).
func isRTP(proto string) bool { return strings.Contains(proto, "RTP/") }

func isHostName(s string) bool {
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			letter = true
		case c >= '0' && c <= '9', c == '.', c == '-':
		default:
			return false
		}
	}
	return letter
}

// fields splits at spaces and tabs only. strings.Fields would also split at
// Unicode spaces such as U+00A0, and Rewrite must find the m= port exactly
// where Parse found it.
func fields(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' })
}

// clip keeps error messages about hostile input short.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
