package b2bua

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// TestRedirectRelayedThroughUs (issue 8 item 6): a 302 from the provider
// reaches the PBX with its target numbers at our LAN address, so that the
// PBX's follow-up INVITE comes back through us as a new call; targets that
// are not numbers, and the provider's hosts, are left out.
func TestRedirectRelayedThroughUs(t *testing.T) {
	h := newHarness(t)
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(t, tx, req, 302, "Moved Temporarily", "prov", nil,
			sip.NewHeader("Contact", "<sip:+4930999000@gw.provider.test>"),
			sip.NewHeader("Contact", "<sip:voicemail@10.0.0.1>"),
			sip.NewHeader("Contact", "<sip:0301111@192.168.1.1:5060;transport=udp>"))
	})
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
	final, _ := u.final()
	if final.StatusCode != 302 {
		t.Fatalf("PBX got %d, want the 302", final.StatusCode)
	}
	var got []string
	for _, c := range final.GetHeaders("Contact") {
		got = append(got, c.Value())
	}
	want := []string{"<sip:+4930999000@" + h.lan.addr.String() + ">", "<sip:0301111@" + h.lan.addr.String() + ">"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("302 Contacts %q, want %q", got, want)
	}
	for _, leak := range []string{"gw.provider.test", "10.0.0.1", "192.168.1.1", "voicemail", provIP} {
		if strings.Contains(final.String(), leak) {
			t.Errorf("the PBX's 302 names %q:\n%s", leak, final)
		}
	}
	if e := h.awaitEnded(); e.Answered {
		t.Errorf("call ended %+v", e)
	}
}
