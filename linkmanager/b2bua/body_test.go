package b2bua

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestSDPBody(t *testing.T) {
	sdp := string(sdpOf(provIP, 30000))
	multi := "--unique-boundary-1\r\nContent-Type: application/sdp\r\n\r\n" + sdp +
		"\r\n--unique-boundary-1\r\nContent-Type: application/ISUP; version=itu-t92+\r\nContent-Disposition: signal; handling=optional\r\n\r\n\x01\x00\x49\x00\x00\x03\x02\x00\x07\r\n--unique-boundary-1--\r\n"
	isupFirst := "--b\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b\r\nContent-Type: application/sdp\r\n\r\n" + sdp + "\r\n--b--\r\n"
	for _, tc := range []struct {
		name, ct, body, want string
	}{
		{"sdp", "application/sdp", sdp, sdp},
		{"sdp with parameters", "Application/SDP; charset=utf-8", sdp, sdp},
		{"no content type", "", sdp, sdp},
		{"SIP-I multipart", "multipart/mixed; boundary=unique-boundary-1", multi, sdp},
		{"SDP second", `multipart/mixed;boundary="b"`, isupFirst, sdp},
		{"not SDP", "text/plain", sdp, ""},
		{"multipart without SDP", "multipart/mixed; boundary=b", "--b\r\nContent-Type: application/isup\r\n\r\nxx\r\n--b--\r\n", ""},
		{"broken multipart", "multipart/mixed; boundary=b", "no parts here", ""},
		{"multipart without boundary", "multipart/mixed", multi, ""},
		{"no body", "application/sdp", "", ""},
	} {
		req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", Host: "x"})
		if tc.ct != "" {
			req.AppendHeader(sip.NewHeader("Content-Type", tc.ct))
		}
		req.SetBody([]byte(tc.body))
		if got := string(sdpBody(req)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A SIP-I INVITE from the provider (SDP and ISUP in multipart/mixed) is
// bridged with its SDP; the ISUP stays on the provider's side.
func TestMultipartOfferBridged(t *testing.T) {
	h := newHarness(t)
	h.pbx.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 200, "OK", "pbx", sdpOf(pbxIP, 20000))
	})
	body := "--bb\r\nContent-Type: application/sdp\r\n\r\n" + string(sdpOf(provIP, 30000)) +
		"\r\n--bb\r\nContent-Type: application/isup\r\n\r\nISUP-SECRET\r\n--bb--\r\n"
	u := h.prov.call(h.wan.addr, "4930123456", []byte(body), sip.NewHeader("Content-Type", "multipart/mixed; boundary=bb"))
	if final, _ := u.final(); final.StatusCode != 200 {
		t.Fatalf("SIP-I call: %d, want 200", final.StatusCode)
	}
	u.ack()
	got := h.pbx.next(sip.INVITE)
	if b := string(got.Body()); !strings.Contains(b, "m=audio ") || strings.Contains(b, "ISUP") || strings.Contains(b, provIP) {
		t.Fatalf("the PBX's INVITE body:\n%s", b)
	}
}
