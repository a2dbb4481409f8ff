package b2bua

import (
	"net/netip"
	"regexp"

	"github.com/emiago/sipgo/sip"
)

// maxRedirects bounds the Contacts of a 3xx we pass on.
const maxRedirects = 4

// number is what a redirect may name: a phone number, nothing that could
// point at a host.
var number = regexp.MustCompile(`^\+?[0-9]{1,32}$`)

// redirectContacts are the Contacts a 3xx from one leg becomes towards the
// other (issue 8 item 6): each target number at our own address on the
// caller's side, so that a caller who follows the redirect calls it
// through us again, as a new call that the outbound policy and the trunk's
// routing see like any other. Targets that are not plain numbers (a host,
// a URI of the other side's network) are dropped: no provider host reaches
// the PBX, no LAN host the provider. None for other responses.
func redirectContacts(res *sip.Response, us netip.AddrPort) []sip.Header {
	if res.StatusCode < 300 || res.StatusCode >= 400 {
		return nil
	}
	var out []sip.Header
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || !number.MatchString(c.Address.User) || len(out) == maxRedirects {
			continue
		}
		out = append(out, &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: c.Address.User,
			Host: us.Addr().String(), Port: int(us.Port())}})
	}
	return out
}
