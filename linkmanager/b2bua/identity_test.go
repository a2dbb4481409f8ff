package b2bua

import (
	"reflect"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
)

// e164 stands in for the trunk's number format: national numbers (one
// leading 0) become +49...
func e164(n string) string {
	if rest, ok := strings.CutPrefix(n, "0"); ok && !strings.HasPrefix(rest, "0") {
		return "+49" + rest
	}
	return n
}

// pbxFrom is a From header of the PBX's INVITE.
func pbxFrom(display, user, host string) *sip.FromHeader {
	return &sip.FromHeader{DisplayName: display, Address: sip.Uri{Scheme: "sip", User: user, Host: host},
		Params: sipmsg.Params("tag", sip.GenerateTagN(10))}
}

// placeOutbound has the PBX call out with the given headers and returns
// the INVITE the provider got (the provider refuses the call).
func placeOutbound(t *testing.T, h *harness, extra ...sip.Header) *sip.Request {
	t.Helper()
	u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000), extra...)
	inv := h.prov.next(sip.INVITE)
	if res, _ := u.final(); res.StatusCode < 400 {
		t.Fatalf("call answered %d; the provider refuses it", res.StatusCode)
	}
	return inv
}

// header is the value of a header of req, "" when it has none.
func header(req *sip.Request, name string) string {
	if h := req.GetHeader(name); h != nil {
		return h.Value()
	}
	return ""
}

// The provider gets the caller as the trunk's caller_id says: From user,
// P-Asserted-Identity or P-Preferred-Identity, number format. The
// calling number is what the PBX asserts, else its From user.
func TestOutboundCallerID(t *testing.T) {
	const number = "030555123" // the PBX's calling number, national
	asserted := sip.NewHeader(HeaderPAI, "<sip:"+number+"@"+pbxIP+">")
	tests := []struct {
		name     string
		caller   CallerID
		extra    []sip.Header
		fromUser string
		pai, ppi string
	}{
		// The control: what the daemon always sent.
		{name: "default is the account and no identity", fromUser: "4930123456"},
		{name: "from the number", caller: CallerID{FromNumber: true, Format: e164},
			extra: []sip.Header{pbxFrom("Reception", number, pbxIP)}, fromUser: "+4930555123"},
		{name: "from the number as sent", caller: CallerID{FromNumber: true},
			extra: []sip.Header{pbxFrom("", number, pbxIP)}, fromUser: number},
		{name: "P-Asserted-Identity", caller: CallerID{Asserted: HeaderPAI, Format: e164},
			extra: []sip.Header{pbxFrom("", number, pbxIP)}, fromUser: "4930123456",
			pai: "<sip:+4930555123@sip.provider.test>"},
		{name: "P-Preferred-Identity", caller: CallerID{Asserted: HeaderPPI, Format: e164},
			extra: []sip.Header{pbxFrom("", number, pbxIP)}, fromUser: "4930123456",
			ppi: "<sip:+4930555123@sip.provider.test>"},
		// An extension in From, the trunk number in the PBX's own PAI.
		{name: "the PBX's assertion wins over its From", caller: CallerID{FromNumber: true, Asserted: HeaderPAI, Format: e164},
			extra: []sip.Header{asserted}, fromUser: "+4930555123", pai: "<sip:+4930555123@sip.provider.test>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, trunkOptions{caller: tt.caller})
			inv := placeOutbound(t, h, tt.extra...)
			if f := inv.From(); f.Address.User != tt.fromUser || f.Address.Host != "sip.provider.test" {
				t.Errorf("From is %s, want user %s at sip.provider.test", f.Value(), tt.fromUser)
			}
			if got := header(inv, HeaderPAI); got != tt.pai {
				t.Errorf("P-Asserted-Identity is %q, want %q", got, tt.pai)
			}
			if got := header(inv, HeaderPPI); got != tt.ppi {
				t.Errorf("P-Preferred-Identity is %q, want %q", got, tt.ppi)
			}
			if got := header(inv, "Privacy"); got != "" {
				t.Errorf("Privacy %q on a call the PBX does not withhold", got)
			}
			if s := inv.String(); strings.Contains(s, pbxIP) || strings.Contains(s, "Reception") {
				t.Errorf("the provider's INVITE names the PBX:\n%s", s)
			}
		})
	}
}

// A call the PBX withholds (CLIR) leaves with an anonymous From and
// Privacy: id; the number stays only in the identity header the trunk
// asks for, which Privacy: id tells the provider to remove.
func TestOutboundWithheldNumber(t *testing.T) {
	const number = "030555123"
	tests := []struct {
		name   string
		caller CallerID
		extra  []sip.Header
		pai    string
	}{
		{name: "anonymous From", caller: CallerID{FromNumber: true, Format: e164},
			extra: []sip.Header{pbxFrom("Anonymous", "anonymous", "anonymous.invalid")}},
		{name: "Privacy id with the number in From", caller: CallerID{FromNumber: true, Format: e164},
			extra: []sip.Header{pbxFrom("", number, pbxIP), sip.NewHeader("Privacy", "id")}},
		{name: "the account withheld too", caller: CallerID{},
			extra: []sip.Header{pbxFrom("", number, pbxIP), sip.NewHeader("Privacy", "user;id")}},
		{name: "asserted by the PBX, withheld by its Privacy", caller: CallerID{Asserted: HeaderPAI, Format: e164},
			extra: []sip.Header{pbxFrom("", "200", pbxIP), sip.NewHeader(HeaderPAI, "<sip:"+number+"@"+pbxIP+">"),
				sip.NewHeader("Privacy", "id")},
			pai: "<sip:+4930555123@sip.provider.test>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, trunkOptions{caller: tt.caller})
			inv := placeOutbound(t, h, tt.extra...)
			if f := inv.From().Address; f.User != "anonymous" || f.Host != "anonymous.invalid" {
				t.Errorf("From is %s, want sip:anonymous@anonymous.invalid", inv.From().Value())
			}
			if got := header(inv, "Privacy"); got != "id" {
				t.Errorf("Privacy is %q, want id", got)
			}
			if got := header(inv, HeaderPAI); got != tt.pai {
				t.Errorf("P-Asserted-Identity is %q, want %q", got, tt.pai)
			}
			// Nowhere else: not in From, Contact or anywhere.
			s := strings.ReplaceAll(inv.String(), HeaderPAI+": "+tt.pai, "")
			for _, leak := range []string{"30555123", "4930123456", "200@"} {
				if strings.Contains(s, leak) {
					t.Errorf("withheld call names %q outside its identity header:\n%s", leak, inv)
				}
			}
		})
	}
}

// A call the PBX forwards keeps its Diversion and History-Info, with each
// number in the trunk's format at the provider's domain: no LAN address
// leaves, the reasons and indexes stay.
func TestOutboundForwardedCall(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{caller: CallerID{Format: e164}})
	inv := placeOutbound(t, h,
		sip.NewHeader("Diversion", `"Sales" <sip:030555777@`+pbxIP+`;user=phone>;reason=unconditional;counter=1`),
		sip.NewHeader("History-Info", `<sip:030555777@`+pbxIP+`>;index=1, <sip:030555888@`+pbxIP+`;cause=302?Reason=SIP%3Bcause%3D302&X-Pbx=secret>;index=1.1`),
	)
	for _, tt := range []struct{ name, want string }{
		{"Diversion", "<sip:+4930555777@sip.provider.test>;reason=unconditional;counter=1"},
		{"History-Info", "<sip:+4930555777@sip.provider.test>;index=1, <sip:+4930555888@sip.provider.test;cause=302?Reason=SIP%3Bcause%3D302>;index=1.1"},
	} {
		if got := header(inv, tt.name); got != tt.want {
			t.Errorf("%s is %q, want %q", tt.name, got, tt.want)
		}
	}
	if s := inv.String(); strings.Contains(s, pbxIP) || strings.Contains(s, "secret") || strings.Contains(s, "Sales") {
		t.Errorf("the provider's INVITE carries the PBX's own parts:\n%s", s)
	}
}

// A call the provider forwards to us tells the PBX from where, in the
// PBX's terms: our LAN address, none of the provider's hosts.
func TestInboundForwardedCall(t *testing.T) {
	h := newHarness(t)
	u := h.prov.call(h.wan.addr, "+4930123456", sdpOf(provIP, 30000),
		sip.NewHeader("Diversion", "<sip:+4915112345@sbc.provider.test;user=phone>;reason=unconditional;counter=1"),
		sip.NewHeader("History-Info", "<sip:+4915112345@sbc.provider.test>;index=1, <sip:+4930123456@"+provIP+";cause=302>;index=1.1"))
	inv := h.pbx.next(sip.INVITE)
	if res, _ := u.final(); res.StatusCode < 400 {
		t.Fatalf("call answered %d; the PBX refuses it", res.StatusCode)
	}
	for _, tt := range []struct{ name, want string }{
		{"Diversion", "<sip:+4915112345@" + lanIP + ">;reason=unconditional;counter=1"},
		{"History-Info", "<sip:+4915112345@" + lanIP + ">;index=1, <sip:+4930123456@" + lanIP + ";cause=302>;index=1.1"},
	} {
		if got := header(inv, tt.name); got != tt.want {
			t.Errorf("%s is %q, want %q", tt.name, got, tt.want)
		}
	}
	if s := inv.String(); strings.Contains(s, "provider.test") || strings.Contains(s, provIP) {
		t.Errorf("the PBX's INVITE names the provider:\n%s", s)
	}
}

// The PBX gets the DID from where the trunk's did_from says the provider
// puts it: a provider that sends to the registered account puts the DID
// in To, or in a header of its own.
func TestInboundDIDSource(t *testing.T) {
	const did, account = "+4930123456", "4930999000"
	to := &sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: did, Host: "sip.provider.test"}, Params: sip.NewParams()}
	tests := []struct {
		name    string
		src     DIDSource
		ruri    string
		extra   []sip.Header
		wantDID string
	}{
		{name: "auto takes the Request-URI", src: DIDAuto, ruri: did, wantDID: did},
		{name: "ruri", src: DIDRURI, ruri: did, extra: []sip.Header{to}, wantDID: did},
		{name: "to", src: DIDTo, ruri: account, extra: []sip.Header{to}, wantDID: did},
		{name: "header", src: DIDHeader + "P-Called-Party-ID", ruri: account,
			extra:   []sip.Header{sip.NewHeader("P-Called-Party-ID", "<tel:"+did+">")},
			wantDID: did},
		{name: "a bare number in a header", src: DIDHeader + "X-Called-Number", ruri: account,
			extra: []sip.Header{sip.NewHeader("X-Called-Number", did)}, wantDID: did},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessWith(t, trunkOptions{didFrom: tt.src})
			u := h.prov.call(h.wan.addr, tt.ruri, sdpOf(provIP, 30000), tt.extra...)
			inv := h.pbx.next(sip.INVITE)
			if res, _ := u.final(); res.StatusCode < 400 {
				t.Fatalf("call answered %d; the PBX refuses it", res.StatusCode)
			}
			if inv.Recipient.User != tt.wantDID || inv.To().Address.User != tt.wantDID {
				t.Errorf("the PBX got Request-URI %s, To %s; want the DID %s in both", inv.Recipient.String(), inv.To().Value(), tt.wantDID)
			}
		})
	}
}

// A did_from header the INVITE lacks finds no DID: the call is refused,
// not sent to the PBX under another number.
func TestInboundDIDHeaderMissing(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{didFrom: DIDHeader + "P-Called-Party-ID"})
	u := h.prov.call(h.wan.addr, "+4930123456", sdpOf(provIP, 30000))
	if res, _ := u.final(); res.StatusCode != 404 {
		t.Errorf("INVITE without the DID header answered %d, want 404", res.StatusCode)
	}
	if got := h.pbx.received(sip.INVITE); len(got) != 0 {
		t.Errorf("the PBX got %d INVITEs", len(got))
	}
}

func TestCalledNumbers(t *testing.T) {
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "4930999000", Host: "192.0.2.1"})
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: "+4930123456", Host: "example.net"}})
	req.AppendHeader(sip.NewHeader("P-Called-Party-ID", `"Office" <sip:+4930123457@example.net;user=phone>`))
	req.AppendHeader(sip.NewHeader("X-Two", "<tel:+4930111;phone-context=x>, 030222"))
	tests := []struct {
		src  DIDSource
		want []string
	}{
		{"", []string{"4930999000", "+4930123456"}},
		{DIDAuto, []string{"4930999000", "+4930123456"}},
		{DIDRURI, []string{"4930999000"}},
		{DIDTo, []string{"+4930123456"}},
		{DIDHeader + "p-called-party-id", []string{"+4930123457"}},
		{DIDHeader + "X-Two", []string{"+4930111", "030222"}},
		{DIDHeader + "X-None", nil},
	}
	for _, tt := range tests {
		if got := CalledNumbers(req, tt.src); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("CalledNumbers(%q) = %q, want %q", tt.src, got, tt.want)
		}
	}
}

func TestWithheld(t *testing.T) {
	tests := []struct {
		name    string
		from    *sip.FromHeader
		privacy string
		want    bool
	}{
		{"number", pbxFrom("Reception", "030555123", pbxIP), "", false},
		{"privacy none", pbxFrom("", "030555123", pbxIP), "none", false},
		{"anonymous user", pbxFrom("", "Anonymous", pbxIP), "", true},
		{"anonymous display", pbxFrom("anonymous", "030555123", pbxIP), "", true},
		{"anonymous.invalid", pbxFrom("", "restricted", "anonymous.invalid"), "", true},
		{"privacy id", pbxFrom("", "030555123", pbxIP), "id", true},
		{"privacy header;critical", pbxFrom("", "030555123", pbxIP), "header; critical", true},
		{"privacy session only", pbxFrom("", "030555123", pbxIP), "session", false},
	}
	for _, tt := range tests {
		req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "0301234567", Host: lanIP})
		req.AppendHeader(tt.from)
		if tt.privacy != "" {
			req.AppendHeader(sip.NewHeader("Privacy", tt.privacy))
		}
		if got := withheld(req); got != tt.want {
			t.Errorf("%s: withheld = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Whatever the PBX puts into Diversion or History-Info, what leaves has
// only a number, the provider's domain and the known parameters.
func TestForwardedSanitised(t *testing.T) {
	tests := []struct{ in, want string }{
		{`<sip:030555777@192.168.1.5>;reason=user-busy;counter=2`, `<sip:+4930555777@example.net>;reason=user-busy;counter=2`},
		{`<sip:030555777@192.168.1.5>;reason="<sip:200@192.168.1.5>";x-lan=192.168.1.5;counter=1`, `<sip:+4930555777@example.net>;counter=1`},
		{`<sip:0305@192.168.1.5?Reason=SIP%3Bcause%3D302&Route=%3Csip:192.168.1.5%3E>;index=1`, `<sip:+49305@example.net?Reason=SIP%3Bcause%3D302>;index=1`},
		{`<sip:0305@192.168.1.5;cause=302;maddr=192.168.1.5>;index=1.1;rc=1`, `<sip:+49305@example.net;cause=302>;index=1.1;rc=1`},
		{`<sip:03%3E05@192.168.1.5>;reason=deflection`, ``},
		{`<sip:200@192.168.1.5>, sip:201@192.168.1.5;reason=no-answer`, `<sip:200@example.net>, <sip:201@example.net>;reason=no-answer`},
		{`<sip:192.168.1.5>;reason=deflection`, ``},
	}
	for _, tt := range tests {
		req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "0301234567", Host: lanIP})
		req.AppendHeader(sip.NewHeader("Diversion", tt.in))
		if got := forwarded(req, "Diversion", "example.net", e164); got != tt.want {
			t.Errorf("forwarded(%s)\n = %s\nwant %s", tt.in, got, tt.want)
		}
	}
}

func TestForwardedBounded(t *testing.T) {
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "0301234567", Host: lanIP})
	for range 20 {
		req.AppendHeader(sip.NewHeader("Diversion", "<sip:030555777@"+pbxIP+">;reason=deflection, <tel:030555778>, <sip:"+pbxIP+">"))
	}
	got := forwarded(req, "Diversion", "example.net", e164)
	if n := len(splitList(got)); n != maxForwarded {
		t.Errorf("%d entries passed on, want %d: %s", n, maxForwarded, got)
	}
	if !strings.HasPrefix(got, "<sip:+4930555777@example.net>;reason=deflection, <sip:+4930555778@example.net>, <sip:+4930555777@") {
		t.Errorf("entries without a number must be dropped, the others kept in order: %s", got)
	}
}
