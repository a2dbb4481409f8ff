package sdp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// seed adds the corpus, in both line-ending styles, and a few hostile
// shapes, so the fuzzer starts from SDP that gets past the first line.
func seed(f *testing.F, add func([]byte)) {
	for _, c := range corpus {
		add(c.wire())
		add([]byte(c.body))
	}
	for _, s := range []string{
		"", "v=0", "v=0\r\n", "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
		"v=0\no=- 1 1 IN IP4 10.0.0.1\nc=IN IP4 10.0.0.1\nm=audio 65535 RTP/AVP 0\na=rtcp:65535 IN IP4 10.0.0.1\n",
		"v=0\no=a 10.0.0.1 1 IN IP4 x\nc=IN IP4 0.0.0.0\nm=x 1 y 10.0.0.1.5\na=X:1.10.0.0.1\n",
		"v=0\nc=IN IP6 ::1\n", "v=0\no=\nm=\nc=\na=\n",
	} {
		add([]byte(s))
	}
}

func FuzzParse(f *testing.F) {
	seed(f, func(b []byte) { f.Add(b) })
	sentinels := []error{ErrMalformed, ErrTooLarge, ErrNoMedia, ErrIPv6, ErrUnsupported}
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := Parse(body)
		if err != nil {
			if s != nil {
				t.Fatal("session with error")
			}
			for _, e := range sentinels {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("error without a sentinel: %v", err)
		}
		if len(s.Media) == 0 {
			t.Fatal("no media without ErrNoMedia")
		}
		for i, m := range s.Media {
			if m.Index != i || m.Port < 0 || m.Port > 65535 {
				t.Fatalf("media %d: %+v", i, m)
			}
			switch m.Direction {
			case "sendrecv", "sendonly", "recvonly", "inactive":
			default:
				t.Fatalf("media %d direction %q", i, m.Direction)
			}
			if m.Port != 0 && (!m.Addr.Is4() || len(m.Formats) == 0) {
				t.Fatalf("active media %d without IPv4 address or formats: %+v", i, m)
			}
			if m.RTCP.IsValid() && (!m.RTCP.Addr().Is4() || m.RTCP.Port() == 0) {
				t.Fatalf("media %d RTCP %s", i, m.RTCP)
			}
		}
	})
}

// FuzzRewrite: whatever Parse accepts, Rewrite turns into SDP that parses,
// points every live stream at the relay, keeps holds, and names no internal
// address and none of the sender's own.
func FuzzRewrite(f *testing.F) {
	seed(f, func(b []byte) { f.Add(b, uint16(55000), uint64(1)) })
	f.Fuzz(func(t *testing.T, body []byte, port uint16, version uint64) {
		if port == 0 || port == 65535 {
			port = 55000
		}
		in, err := Parse(body)
		if err != nil {
			if _, rerr := Rewrite(body, public, nil, version); rerr == nil {
				t.Fatalf("Parse failed (%v) but Rewrite succeeded", err)
			}
			return
		}
		ports := make(map[int]int)
		for i := range in.Media {
			ports[i] = int(port)
		}
		out, err := Rewrite(body, public, ports, version)
		if errors.Is(err, ErrUnsupported) && strings.Contains(err.Error(), "m-line") {
			return // an m= line naming an internal address: refused, not leaked
		}
		if err != nil {
			t.Fatalf("Parse accepted what Rewrite refused: %v", err)
		}
		got, err := Parse(out)
		if err != nil {
			t.Fatalf("rewritten body does not parse: %v\n%q", err, out)
		}
		if len(got.Media) != len(in.Media) {
			t.Fatalf("%d media became %d", len(in.Media), len(got.Media))
		}
		for i, m := range got.Media {
			om := in.Media[i]
			if om.Port == 0 && m.Port != 0 || om.Port != 0 && m.Port != int(port) {
				t.Fatalf("media %d port %d -> %d", i, om.Port, m.Port)
			}
			if m.Port != 0 && m.Addr != public && !(om.Addr.IsUnspecified() && m.Addr.IsUnspecified()) {
				t.Fatalf("media %d address %s -> %s", i, om.Addr, m.Addr)
			}
			if m.Hold != om.Hold || m.Direction != om.Direction {
				t.Fatalf("media %d hold/direction changed: %s -> %s", i, summary(om), summary(m))
			}
		}
		secret := map[netip.Addr]bool{}
		for _, m := range in.Media {
			secret[m.Addr] = true
			secret[m.RTCP.Addr()] = true
		}
		if a, err := netip.ParseAddr(in.Origin.Address); err == nil {
			secret[a] = true
		}
		for _, a := range addrsIn(out) {
			if a == public || a.IsUnspecified() {
				continue
			}
			if internal(a) || secret[a] {
				t.Fatalf("address %s leaked:\n%q", a, out)
			}
		}
	})
}
