package sdp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// summary renders a Media the way the corpus spells its expectations.
func summary(m Media) string {
	addr, rtcp := "-", "-"
	if m.Addr.IsValid() {
		addr = m.Addr.String()
	}
	if m.RTCP.IsValid() {
		rtcp = m.RTCP.String()
	}
	return fmt.Sprintf("%s %d %s [%s] %s rtcp=%s %s hold=%v mux=%v",
		m.Kind, m.Port, m.Proto, strings.Join(m.Formats, " "), addr, rtcp, m.Direction, m.Hold, m.RTCPMux)
}

func TestParseCorpus(t *testing.T) {
	for _, c := range corpus {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse(c.wire())
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if s.Origin != c.origin {
				t.Errorf("origin = %+v, want %+v", s.Origin, c.origin)
			}
			if len(s.Media) != len(c.media) {
				t.Fatalf("%d media, want %d", len(s.Media), len(c.media))
			}
			for i, m := range s.Media {
				if m.Index != i {
					t.Errorf("media %d: Index = %d", i, m.Index)
				}
				if got := summary(m); got != c.media[i] {
					t.Errorf("media %d:\n got  %s\n want %s", i, got, c.media[i])
				}
			}
		})
	}
}

// sdpWith builds a small CRLF offer with the given lines in place of the
// usual connection and media lines, for the error table.
func sdpWith(lines ...string) []byte {
	return []byte(strings.Join(lines, "\r\n") + "\r\n")
}

const (
	hdrV = "v=0"
	hdrO = "o=- 1 1 IN IP4 192.168.100.20"
	hdrS = "s=-"
	hdrC = "c=IN IP4 192.168.100.20"
	hdrT = "t=0 0"
	mAud = "m=audio 10062 RTP/AVP 8 101"
)

func TestParseErrors(t *testing.T) {
	huge := append(sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud),
		bytes.Repeat([]byte("a=x-pad:0123456789abcdef\r\n"), MaxSize/26+1)...)
	tests := []struct {
		name string
		body []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"only line endings", []byte("\r\n\r\n"), ErrMalformed},
		{"garbage text", []byte("hello world"), ErrMalformed},
		{"binary garbage", []byte{0x80, 0x00, 0xff, '=', '\n', 0x01}, ErrMalformed},
		{"SIP message instead of body", []byte("INVITE sip:100@pbx SIP/2.0\r\nVia: x\r\n\r\n"), ErrMalformed},
		{"missing v=", sdpWith(hdrO, hdrS, hdrC, hdrT, mAud), ErrMalformed},
		{"v=1", sdpWith("v=1", hdrO, hdrS, hdrC, hdrT, mAud), ErrMalformed},
		{"second v=", sdpWith(hdrV, hdrO, hdrV, hdrS, hdrC, hdrT, mAud), ErrMalformed},
		{"missing o=", sdpWith(hdrV, hdrS, hdrC, hdrT, mAud), ErrMalformed},
		{"short o=", sdpWith(hdrV, "o=- 1 1 IN IP4", hdrS, hdrC, hdrT, mAud), ErrMalformed},
		{"second o=", sdpWith(hdrV, hdrO, hdrO, hdrS, hdrC, hdrT, mAud), ErrMalformed},
		{"o= inside media", sdpWith(hdrV, hdrS, hdrC, hdrT, mAud, hdrO), ErrMalformed},
		{"line without =", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "a:rtpmap 8 PCMA/8000"), ErrMalformed},
		{"upper-case type", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "A=sendonly"), ErrMalformed},
		{"leading space", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, " a=sendonly"), ErrMalformed},
		{"whitespace-only line", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "  ", mAud), ErrMalformed},
		{"NUL in line", sdpWith(hdrV, hdrO, "s=a\x00b", hdrC, hdrT, mAud), ErrMalformed},
		{"bare CR inside line", sdpWith(hdrV, hdrO, "s=a\rb", hdrC, hdrT, mAud), ErrMalformed},
		{"m= port not a number", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=audio abc RTP/AVP 8"), ErrMalformed},
		{"m= port too big", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=audio 70000 RTP/AVP 8"), ErrMalformed},
		{"m= port negative", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=audio -1 RTP/AVP 8"), ErrMalformed},
		{"m= port with sign", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=audio +5000 RTP/AVP 8"), ErrMalformed},
		{"m= without proto", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=audio 5000"), ErrMalformed},
		{"active m= without formats", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=audio 5000 RTP/AVP"), ErrMalformed},
		{"active stream without c=", sdpWith(hdrV, hdrO, hdrS, hdrT, mAud), ErrMalformed},
		{"two session c=", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrC, hdrT, mAud), ErrMalformed},
		{"two media c=", sdpWith(hdrV, hdrO, hdrS, hdrT, mAud, hdrC, hdrC), ErrMalformed},
		{"c= bad IPv4", sdpWith(hdrV, hdrO, hdrS, "c=IN IP4 300.1.1.1", hdrT, mAud), ErrMalformed},
		{"c= IPv6 literal typed IP4", sdpWith(hdrV, hdrO, hdrS, "c=IN IP4 ::1", hdrT, mAud), ErrMalformed},
		{"c= missing address", sdpWith(hdrV, hdrO, hdrS, "c=IN IP4", hdrT, mAud), ErrMalformed},
		{"a=rtcp port 0", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "a=rtcp:0"), ErrMalformed},
		{"a=rtcp not a number", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "a=rtcp:abc"), ErrMalformed},
		{"a=rtcp address incomplete", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "a=rtcp:10063 IN IP4"), ErrMalformed},
		{"no m= line", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT), ErrNoMedia},
		{"IPv6 session c=", sdpWith(hdrV, hdrO, hdrS, "c=IN IP6 2001:db8::20", hdrT, mAud), ErrIPv6},
		{"IPv6 media c=", sdpWith(hdrV, hdrO, hdrS, hdrT, mAud, "c=IN IP6 2001:db8::20"), ErrIPv6},
		{"IPv6 c= on disabled stream", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "m=video 0 RTP/AVP 31", "c=IN IP6 ::"), ErrIPv6},
		{"IPv6 a=rtcp", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud, "a=rtcp:10063 IN IP6 2001:db8::20"), ErrIPv6},
		{"multicast with TTL", sdpWith(hdrV, hdrO, hdrS, "c=IN IP4 224.2.17.12/127", hdrT, mAud), ErrUnsupported},
		{"multicast without TTL", sdpWith(hdrV, hdrO, hdrS, "c=IN IP4 239.1.1.1", hdrT, mAud), ErrUnsupported},
		{"host name in c=", sdpWith(hdrV, hdrO, hdrS, "c=IN IP4 media.example.com", hdrT, mAud), ErrUnsupported},
		{"network type not IN", sdpWith(hdrV, hdrO, hdrS, "c=TN RFC2543 +1-212-555-0100", hdrT, mAud), ErrUnsupported},
		{"address type not IP4/IP6", sdpWith(hdrV, hdrO, hdrS, "c=IN ATM NSAP", hdrT, mAud), ErrUnsupported},
		{"port count", sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, "m=video 49170/2 RTP/AVP 31"), ErrUnsupported},
		{"huge", huge, ErrTooLarge},
		{"huge garbage", bytes.Repeat([]byte{0xff}, 1<<20), ErrTooLarge},
	}
	sentinels := []error{ErrMalformed, ErrTooLarge, ErrNoMedia, ErrIPv6, ErrUnsupported}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse(tt.body)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse = %v, want %v", err, tt.want)
			}
			if s != nil {
				t.Error("Session returned with an error")
			}
			for _, e := range sentinels {
				if e != tt.want && errors.Is(err, e) {
					t.Errorf("error %v also matches %v", err, e)
				}
			}
		})
	}
}

// The exact boundary: MaxSize parses, one byte more does not.
func TestParseMaxSize(t *testing.T) {
	base := sdpWith(hdrV, hdrO, hdrS, hdrC, hdrT, mAud)
	pad := MaxSize - len(base) - len("a=x:\r\n")
	body := append(base, "a=x:"+strings.Repeat("p", pad)+"\r\n"...)
	if len(body) != MaxSize {
		t.Fatalf("test body is %d bytes", len(body))
	}
	if _, err := Parse(body); err != nil {
		t.Fatalf("Parse at MaxSize: %v", err)
	}
	if _, err := Parse(append(body, 'x')); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Parse at MaxSize+1 = %v, want ErrTooLarge", err)
	}
}

// Parse must not keep references into the caller's buffer: the SIP layer
// reuses it for the next message.
func TestParseDoesNotAliasInput(t *testing.T) {
	body := corpus[0].wire()
	s, err := Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	for i := range body {
		body[i] = 'X'
	}
	if s.Media[0].Kind != "audio" || s.Media[0].Formats[0] != "8" || s.Origin.SessionID != "1838367154" {
		t.Fatalf("session changed with the input buffer: %+v", s)
	}
}
