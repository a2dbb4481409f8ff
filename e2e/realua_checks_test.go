//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// TestCheckDialogTags: the real-UA dialog checks on synthetic captures,
// without a lab. A consistent dialog passes; the B2BUA bug of issue 8 (a
// fresh To tag on the 200, a third tag on its BYE, the UA's 481) fails.
func TestCheckDialogTags(t *testing.T) {
	pbx := netip.MustParseAddrPort(PBXIP + ":5070")
	lm := netip.MustParseAddrPort(DaemonIP + ":5060")
	at := Endpoint{Name: "pbx", NS: NSPBX, IP: PBXIP}
	msg := func(src, dst netip.AddrPort, first, cseq, fromTag, toTag string) WireSIP {
		to := "<sip:b@x>"
		if toTag != "" {
			to += ";tag=" + toTag
		}
		text := fmt.Sprintf("%s\r\nFrom: <sip:a@x>;tag=%s\r\nTo: %s\r\nCall-ID: c1\r\nCSeq: %s\r\n\r\n", first, fromTag, to, cseq)
		m := WireSIP{Src: src, Dst: dst, Text: text, First: first, CSeq: cseq, CallID: "c1"}
		if strings.HasPrefix(first, "SIP/2.0 ") {
			_, _ = fmt.Sscanf(first, "SIP/2.0 %d", &m.Code)
		} else {
			m.Method, _, _ = strings.Cut(first, " ")
		}
		return m
	}
	call := func(ringTag, okTag, byeTag string, byeCode string) []WireSIP {
		return []WireSIP{
			msg(pbx, lm, "INVITE sip:n@lm SIP/2.0", "1 INVITE", "A", ""),
			msg(lm, pbx, "SIP/2.0 180 Ringing", "1 INVITE", "A", ringTag),
			msg(lm, pbx, "SIP/2.0 200 OK", "1 INVITE", "A", okTag),
			msg(pbx, lm, "ACK sip:n@lm SIP/2.0", "1 ACK", "A", okTag),
			msg(lm, pbx, "BYE sip:pbx SIP/2.0", "1 BYE", byeTag, "A"),
			msg(pbx, lm, "SIP/2.0 "+byeCode, "1 BYE", byeTag, "A"),
		}
	}
	cases := []struct {
		name    string
		msgs    []WireSIP
		wantErr []string
	}{
		{"one dialog", call("B", "B", "B", "200 OK"), nil},
		{"issue 8: three tags, 481", call("B1", "B2", "B3", "481 Call Does Not Exist"),
			[]string{"carry 2 To tags", "From tag B3", "answered \"SIP/2.0 481"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recTB{TB: t}
			checkDialogTags(rec, c.msgs, at)
			checkInDialogAnswered(rec, c.msgs, at)
			got := strings.Join(rec.errs, "\n")
			if len(c.wantErr) == 0 && got != "" {
				t.Errorf("want a pass, got:\n%s", got)
			}
			for _, w := range c.wantErr {
				if !strings.Contains(got, w) {
					t.Errorf("want an error containing %q, got:\n%s", w, got)
				}
			}
		})
	}
}
