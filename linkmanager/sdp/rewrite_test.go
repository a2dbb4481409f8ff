package sdp

import (
	"errors"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var (
	public = netip.MustParseAddr("192.0.2.1")     // what stunkeeper reports
	lanIP  = netip.MustParseAddr("192.168.100.2") // the daemon on the LAN
)

// ipv4 finds dotted quads independently of the package's own scanner.
var ipv4 = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+`)

// addrsIn returns every IPv4 address written anywhere in b.
func addrsIn(b []byte) []netip.Addr {
	var out []netip.Addr
	for _, m := range ipv4.FindAllString(string(b), -1) {
		if a, err := netip.ParseAddr(m); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func textLines(b []byte) []string {
	s := strings.TrimSuffix(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	return strings.Split(s, "\n")
}

// corpusBody finds a corpus SDP by the start of its name.
func corpusBody(t *testing.T, prefix string) string {
	t.Helper()
	for _, c := range corpus {
		if strings.HasPrefix(c.name, prefix) {
			return c.body
		}
	}
	t.Fatalf("no corpus case %q", prefix)
	return ""
}

func iceLine(l string) bool {
	for _, p := range []string{"a=candidate:", "a=ice-", "a=end-of-candidates", "a=remote-candidates:"} {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}

// relayPorts gives every m-line a relay port, disabled ones included: they
// must stay disabled anyway.
func relayPorts(n int) map[int]int {
	ports := make(map[int]int)
	for i := range n {
		ports[i] = 55000 + 2*i
	}
	return ports
}

// TestRewriteCorpus rewrites every real-world SDP towards the provider and
// checks the whole contract: only o=, c=, the m= port and a=rtcp change,
// ICE goes, every other line is byte for byte the same, line endings are
// kept, no address but the relay's (or a 0.0.0.0 hold) remains, and the
// result parses to exactly what the relay allocated.
func TestRewriteCorpus(t *testing.T) {
	for _, c := range corpus {
		t.Run(c.name, func(t *testing.T) {
			in := c.wire()
			orig, err := Parse(in)
			if err != nil {
				t.Fatal(err)
			}
			ports := relayPorts(len(orig.Media))
			out, err := Rewrite(in, public, ports, 7)
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}

			// Line endings: CRLF in, CRLF out; LF in, LF out.
			if c.lf && strings.Contains(string(out), "\r") {
				t.Error("CR added to an LF body")
			}
			if !c.lf && strings.Count(string(out), "\n") != strings.Count(string(out), "\r\n") {
				t.Error("bare LF in a CRLF body")
			}
			if strings.HasSuffix(string(in), "\n") != strings.HasSuffix(string(out), "\n") {
				t.Error("final line ending changed")
			}

			// Pass-through, line by line.
			inL, outL := textLines(in), textLines(out)
			j := 0
			for _, l := range inL {
				if iceLine(l) {
					continue
				}
				if j >= len(outL) {
					t.Fatalf("output ends before input line %q", l)
				}
				o := outL[j]
				j++
				switch {
				case strings.HasPrefix(l, "o="), strings.HasPrefix(l, "c="), strings.HasPrefix(l, "a=rtcp:"):
					if !strings.HasPrefix(o, l[:2]) || strings.HasPrefix(l, "a=rtcp:") != strings.HasPrefix(o, "a=rtcp:") {
						t.Errorf("line %q became %q", l, o)
					}
				case strings.HasPrefix(l, "m="):
					lf, of := fields(l), fields(o)
					if len(lf) != len(of) || lf[0] != of[0] || !slices.Equal(lf[2:], of[2:]) {
						t.Errorf("m= line %q became %q: only the port may change", l, o)
					}
				default:
					if o != l {
						t.Errorf("line %q became %q", l, o)
					}
				}
			}
			if j != len(outL) {
				t.Errorf("extra output lines: %q", outL[j:])
			}

			// No LAN (or other sender) address anywhere.
			for _, a := range addrsIn(out) {
				if a != public && !a.IsUnspecified() {
					t.Errorf("address %s left in rewritten body", a)
				}
			}

			// The result says what the relay allocated, and keeps the hold.
			got, err := Parse(out)
			if err != nil {
				t.Fatalf("rewritten body does not parse: %v\n%s", err, out)
			}
			want := orig.Origin
			want.Version, want.Address = "7", public.String()
			if got.Origin != want {
				t.Errorf("origin = %+v, want %+v", got.Origin, want)
			}
			for i, m := range got.Media {
				om := orig.Media[i]
				wantPort, wantAddr := ports[i], public
				if om.Port == 0 {
					wantPort = 0
				}
				if om.Addr.IsValid() && om.Addr.IsUnspecified() {
					wantAddr = om.Addr
				}
				if m.Port != wantPort || m.Addr != wantAddr && om.Addr.IsValid() {
					t.Errorf("media %d at %s:%d, want %s:%d", i, m.Addr, m.Port, wantAddr, wantPort)
				}
				if wantPort != 0 && isRTP(m.Proto) && m.RTCP != netip.AddrPortFrom(wantAddr, uint16(wantPort+1)) {
					t.Errorf("media %d RTCP %s, want %s:%d", i, m.RTCP, wantAddr, wantPort+1)
				}
				if m.Direction != om.Direction || m.Hold != om.Hold || m.Kind != om.Kind ||
					m.Proto != om.Proto || !slices.Equal(m.Formats, om.Formats) || m.RTCPMux != om.RTCPMux {
					t.Errorf("media %d changed:\n was %s\n now %s", i, summary(om), summary(m))
				}
			}

			// Resending the same version reproduces the same bytes.
			again, err := Rewrite(out, public, ports, 7)
			if err != nil || string(again) != string(out) {
				t.Errorf("rewrite of the rewritten body differs (err %v):\n%s\n---\n%s", err, out, again)
			}
		})
	}
}

// Exact bytes for the two directions of one call: the PBX's offer towards
// the provider, and the provider's answer towards the PBX.
func TestRewriteGolden(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		addr    netip.Addr
		ports   map[int]int
		version uint64
		want    string
	}{
		{
			name:    "asterisk offer to provider",
			in:      corpusBody(t, "asterisk pjsip offer"),
			addr:    public,
			ports:   map[int]int{0: 55012},
			version: 1838367154,
			want: `v=0
o=- 1838367154 1838367154 IN IP4 192.0.2.1
s=Asterisk
c=IN IP4 192.0.2.1
t=0 0
m=audio 55012 RTP/AVP 8 0 9 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
`,
		},
		{
			name:    "provider answer to PBX",
			in:      corpusBody(t, "sipgate-style"),
			addr:    lanIP,
			ports:   map[int]int{0: 40002},
			version: 1,
			want: `v=0
o=- 3921874521 1 IN IP4 192.168.100.2
s=sipgate VoIP
c=IN IP4 192.168.100.2
t=0 0
m=audio 40002 RTP/AVP 8 0 9 18 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:9 G722/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:40003
a=ptime:20
a=sendrecv
`,
		},
		{
			name:    "RFC 2543 hold keeps 0.0.0.0, a=rtcp address rewritten",
			in:      "v=0\no=root 1042 1043 IN IP4 192.168.100.50\ns=call\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 62000 RTP/AVP 8\nc=IN IP4 192.168.100.50\na=rtcp:62001 IN IP4 192.168.100.50\nm=audio 62002 RTP/AVP 8\na=rtcp:62003 IN IP4 0.0.0.0\n",
			addr:    public,
			ports:   map[int]int{0: 55000, 1: 55002},
			version: 3,
			want:    "v=0\no=root 1042 3 IN IP4 192.0.2.1\ns=call\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 55000 RTP/AVP 8\nc=IN IP4 192.0.2.1\na=rtcp:55001 IN IP4 192.0.2.1\nm=audio 55002 RTP/AVP 8\na=rtcp:55003 IN IP4 0.0.0.0\n",
		},
		{
			name:    "ICE removed, rtcp-mux kept",
			in:      corpusBody(t, "asterisk ICE offer"),
			addr:    public,
			ports:   map[int]int{0: 55100},
			version: 2,
			want: `v=0
o=- 1838367200 2 IN IP4 192.0.2.1
s=Asterisk
c=IN IP4 192.0.2.1
t=0 0
m=audio 55100 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
a=rtcp-mux
`,
		},
		{
			name: "leaking lines dropped, s= and o= identifiers scrubbed",
			in: `v=0
o=pbx@10.1.2.3 10.1.2.3 1 IN IP4 10.1.2.3
s=Call from 10.1.2.3
c=IN IP4 10.1.2.3
t=0 0
m=audio 5004 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ssrc:305419896 cname:pbx@10.1.2.3
a=X-local-media:10.1.2.3:5004
a=X-site-gw:172.16.9.1
a=X-cgnat:100.64.1.1
a=X-public-ok:198.51.100.9
a=sendrecv
`,
			addr:    public,
			ports:   map[int]int{0: 55200},
			version: 1,
			want: `v=0
o=- 0 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 55200 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=X-public-ok:198.51.100.9
a=sendrecv
`,
		},
		{
			name:    "stream not relayed is disabled, its a=rtcp dropped, c= still rewritten",
			in:      "v=0\r\no=- 1 1 IN IP4 192.168.100.60\r\ns=-\r\nt=0 0\r\nm=audio 7078 RTP/AVP 0\r\nc=IN IP4 192.168.100.60\r\nm=video 9078 RTP/AVP 96\r\nc=IN IP4 192.168.100.60\r\na=rtcp:9079 IN IP4 192.168.100.60\r\na=rtpmap:96 VP8/90000\r\nm=audio 0 RTP/AVP 0\r\na=rtcp:1\r\n",
			addr:    public,
			ports:   map[int]int{0: 55300, 2: 55302},
			version: 1,
			want:    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 55300 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 192.0.2.1\r\na=rtpmap:96 VP8/90000\r\nm=audio 0 RTP/AVP 0\r\n",
		},
		{
			name:    "mixed endings, blank line and missing final newline kept",
			in:      "v=0\r\no=- 1 1 IN IP4 10.0.0.5\ns=-\r\n\r\nc=IN IP4 10.0.0.5\nt=0 0\r\nm=audio  5004\tRTP/AVP 0 \r\na=ptime:20",
			addr:    public,
			ports:   map[int]int{0: 55400},
			version: 9,
			want:    "v=0\r\no=- 1 9 IN IP4 192.0.2.1\ns=-\r\n\r\nc=IN IP4 192.0.2.1\nt=0 0\r\nm=audio  55400\tRTP/AVP 0 \r\na=ptime:20",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			want := tt.want
			if !strings.Contains(in, "\r") {
				in, want = crlf(in), crlf(want)
			}
			got, err := Rewrite([]byte(in), tt.addr, tt.ports, tt.version)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Errorf("got:\n%q\nwant:\n%q", got, want)
			}
		})
	}
}

func TestRewriteErrors(t *testing.T) {
	body := corpus[0].wire()
	tests := []struct {
		name  string
		body  []byte
		addr  netip.Addr
		ports map[int]int
		want  error
	}{
		{"IPv6 relay address", body, netip.MustParseAddr("2001:db8::1"), map[int]int{0: 55000}, ErrIPv6},
		{"zero relay address", body, netip.Addr{}, map[int]int{0: 55000}, ErrBadRelay},
		{"unspecified relay address", body, netip.IPv4Unspecified(), map[int]int{0: 55000}, ErrBadRelay},
		{"multicast relay address", body, netip.MustParseAddr("239.1.1.1"), map[int]int{0: 55000}, ErrBadRelay},
		{"broadcast relay address", body, netip.MustParseAddr("255.255.255.255"), map[int]int{0: 55000}, ErrBadRelay},
		{"port 0", body, public, map[int]int{0: 0}, ErrBadRelay},
		{"port 65535 leaves no RTCP port", body, public, map[int]int{0: 65535}, ErrBadRelay},
		{"port out of range", body, public, map[int]int{0: 70000}, ErrBadRelay},
		{"negative port", body, public, map[int]int{0: -2}, ErrBadRelay},
		{"no such m-line", body, public, map[int]int{0: 55000, 1: 55002}, ErrBadRelay},
		{"negative m-line", body, public, map[int]int{-1: 55000}, ErrBadRelay},
		{"malformed body", []byte("o=- 1 1 IN IP4 1.2.3.4\r\n"), public, nil, ErrMalformed},
		{"IPv6 body", sdpWith(hdrV, hdrO, hdrS, "c=IN IP6 2001:db8::20", hdrT, mAud), public, map[int]int{0: 55000}, ErrIPv6},
		{"LAN address in m= formats", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=application 5000 udp 192.168.1.1"), public, map[int]int{0: 55000}, ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Rewrite(tt.body, tt.addr, tt.ports, 1)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Rewrite = %v, want %v", err, tt.want)
			}
			if out != nil {
				t.Error("body returned with an error")
			}
		})
	}
}

// An IPv4-mapped IPv6 relay address (what a dual-stack socket reports) is
// written as plain IPv4.
func TestRewriteUnmapsRelayAddress(t *testing.T) {
	mapped := netip.AddrFrom16(public.As16())
	out, err := Rewrite(corpus[0].wire(), mapped, map[int]int{0: 55000}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "c=IN IP4 192.0.2.1\r\n") || strings.Contains(string(out), "::ffff") {
		t.Errorf("mapped address not unmapped:\n%s", out)
	}
}

// The o= version is the caller's, per leg: the session id stays, and the
// version is exactly what was passed, including values beyond int64.
func TestRewriteOriginVersion(t *testing.T) {
	for _, v := range []uint64{0, 1, 1838367155, 1<<64 - 1} {
		out, err := Rewrite([]byte(crlf(corpusBody(t, "freeswitch offer"))), public, map[int]int{0: 55000}, v)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Parse(out)
		if err != nil {
			t.Fatal(err)
		}
		if s.Origin.Version != strconv.FormatUint(v, 10) || s.Origin.SessionID != "1718203400" || s.Origin.Username != "FreeSWITCH" {
			t.Errorf("version %d: origin %+v", v, s.Origin)
		}
	}
}

// Rewriting for the PBX leg writes the LAN relay address, which is private
// itself and must not be mistaken for a leak.
func TestRewriteToLANKeepsOwnAddress(t *testing.T) {
	for _, c := range corpus {
		in := c.wire()
		s, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		out, err := Rewrite(in, lanIP, relayPorts(len(s.Media)), 1)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for _, a := range addrsIn(out) {
			if a != lanIP && !a.IsUnspecified() {
				t.Errorf("%s: address %s left in PBX-facing body", c.name, a)
			}
		}
		if !strings.Contains(string(out), "IN IP4 "+lanIP.String()) {
			t.Errorf("%s: LAN relay address missing", c.name)
		}
	}
}
