package b2bua

import (
	"regexp"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// The identity headers of RFC 3325.
const (
	HeaderPAI = "P-Asserted-Identity"
	HeaderPPI = "P-Preferred-Identity"
)

// CallerID is how one trunk presents the PBX's caller to its provider
// (trunks[].caller_id). The zero value is what the daemon always did: the
// account in From and no identity header.
type CallerID struct {
	// FromNumber puts the calling number into the From user instead of
	// the account.
	FromNumber bool
	// Asserted is the header that carries the calling number: "" for
	// none, HeaderPAI or HeaderPPI.
	Asserted string
	// Format writes a number the way the provider wants it; nil: as the
	// PBX sent it.
	Format func(string) string
}

func (c CallerID) format(n string) string {
	if c.Format == nil {
		return n
	}
	return c.Format(n)
}

// The anonymous From of RFC 3323 §4.1.1.3, for a caller who withholds the
// number.
var anonymous = sip.Uri{Scheme: "sip", User: "anonymous", Host: "anonymous.invalid"}

// maxForwarded bounds the Diversion and History-Info entries passed on:
// a real forward has a handful, and a LAN host must not make us build an
// INVITE that no longer fits a datagram.
const maxForwarded = 8

// identity is what the INVITE to a provider says about its caller.
type identity struct {
	from    sip.Uri
	headers []sip.Header // appended to the INVITE
}

// outboundIdentity builds From, P-Asserted-Identity or
// P-Preferred-Identity, Privacy, Diversion and History-Info of the INVITE
// to a provider from the PBX's INVITE and the trunk's settings. Nothing
// of the PBX's is copied as it came: each number is re-written into the
// provider's domain, so no LAN address leaves.
func outboundIdentity(req *sip.Request, r Route) identity {
	c := r.CallerID
	number := c.format(callingNumber(req))
	id := identity{from: sip.Uri{Scheme: "sip", User: r.User, Host: r.Domain}}
	if c.FromNumber && number != "" {
		id.from.User = number
	}
	if c.Asserted != "" && number != "" {
		id.headers = append(id.headers, sip.NewHeader(c.Asserted, "<sip:"+number+"@"+r.Domain+">"))
	}
	if withheld(req) {
		// The provider may still need the number (billing, emergency
		// calls): it stays in the identity header, which Privacy: id asks
		// the provider to remove before the call leaves its network
		// (RFC 3325 §7). The From goes anonymous either way.
		id.from = anonymous
		id.headers = append(id.headers, sip.NewHeader("Privacy", "id"))
	}
	id.headers = append(id.headers, forwardedHeaders(req, r.Domain, c.format)...)
	return id
}

// forwardedHeaders are the Diversion and History-Info of req, re-written
// into domain (see forwarded).
func forwardedHeaders(req *sip.Request, domain string, format func(string) string) []sip.Header {
	var out []sip.Header
	for _, name := range []string{"Diversion", "History-Info"} {
		if v := forwarded(req, name, domain, format); v != "" {
			out = append(out, sip.NewHeader(name, v))
		}
	}
	return out
}

// asSent leaves a number as it came: the PBX gets the provider's numbers
// in the provider's format, as it gets the caller's.
func asSent(n string) string { return n }

// callingNumber is the number the PBX presents: what it asserts, else
// what it prefers, else its From user.
func callingNumber(req *sip.Request) string {
	for _, name := range []string{HeaderPAI, HeaderPPI} {
		for _, h := range req.GetHeaders(name) {
			for _, v := range splitList(h.Value()) {
				if u := userOf(addrURI(v)); u != "" && !isAnonymous(u) {
					return u
				}
			}
		}
	}
	if f := req.From(); f != nil && !isAnonymous(f.Address.User) && plainUser.MatchString(f.Address.User) {
		return f.Address.User
	}
	return ""
}

// withheld reports whether the PBX asks to hide its caller (CLIR): an
// anonymous From (RFC 3323 §4.1.1.3), or a Privacy header asking for
// id, user or header privacy.
func withheld(req *sip.Request) bool {
	if f := req.From(); f != nil && (isAnonymous(f.Address.User) || isAnonymous(f.DisplayName) ||
		strings.EqualFold(f.Address.Host, anonymous.Host)) {
		return true
	}
	for _, h := range req.GetHeaders("Privacy") {
		for _, v := range strings.FieldsFunc(h.Value(), func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
			switch strings.ToLower(v) {
			case "id", "user", "header":
				return true
			}
		}
	}
	return false
}

func isAnonymous(s string) bool { return strings.EqualFold(strings.Trim(s, `" `), "anonymous") }

// forwarded re-writes the PBX's Diversion (RFC 5806) or History-Info (RFC
// 7044) entries for the provider: each number in format, in domain; the
// entry's own parameters (reason, counter, index, ...) kept, and of its
// URI only the redirect cause (RFC 4458) and the Reason and Privacy
// headers, which name no host. Entries without a number are dropped.
func forwarded(req *sip.Request, name, domain string, format func(string) string) string {
	var out []string
	for _, h := range req.GetHeaders(name) {
		for _, v := range splitList(h.Value()) {
			if len(out) == maxForwarded {
				return strings.Join(out, ", ")
			}
			uri := addrURI(v)
			user := userOf(uri)
			if user == "" {
				continue
			}
			out = append(out, "<sip:"+format(user)+"@"+domain+keptURIParts(uri)+">"+keptParams(addrParams(v)))
		}
	}
	return strings.Join(out, ", ")
}

// splitList splits a header value at the commas between entries, not at
// those inside <> or quotes.
func splitList(v string) []string {
	var out []string
	depth, quoted, start := 0, false, 0
	for i := 0; i < len(v); i++ {
		switch ch := v[i]; {
		case ch == '"':
			quoted = !quoted
		case quoted:
		case ch == '<':
			depth++
		case ch == '>':
			depth--
		case ch == ',' && depth == 0:
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	out = append(out, v[start:])
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return out
}

// addrURI is the URI of a name-addr ("Name" <uri>;params) or addr-spec
// (uri;params).
func addrURI(v string) string {
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j >= 0 {
			return v[i+1 : i+j]
		}
		return ""
	}
	if i := strings.IndexByte(v, ';'); i >= 0 {
		return strings.TrimSpace(v[:i])
	}
	return strings.TrimSpace(v)
}

// addrParams is what follows the URI of a name-addr or addr-spec: its
// header parameters, with their leading ';'.
func addrParams(v string) string {
	if i := strings.IndexByte(v, '>'); i >= 0 {
		return strings.TrimSpace(v[i+1:])
	}
	if strings.IndexByte(v, '<') >= 0 {
		return ""
	}
	if i := strings.IndexByte(v, ';'); i >= 0 {
		return strings.TrimSpace(v[i:])
	}
	return ""
}

// userOf is the user of a sip:, sips: or tel: URI: for tel the number.
func userOf(uri string) string {
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok {
		return ""
	}
	switch strings.ToLower(scheme) {
	case "tel":
	case "sip", "sips":
		at := strings.IndexByte(rest, '@')
		if at < 0 {
			return ""
		}
		rest = rest[:at]
	default:
		return ""
	}
	user, _, _ := strings.Cut(rest, ";")
	user, _, _ = strings.Cut(user, "?")
	if !plainUser.MatchString(user) {
		return "" // not a number we would write into a header of ours
	}
	return user
}

// plainUser is what we take as a number or user from a URI: no
// characters that would need escaping, nothing that could end the URI
// we write it into.
var plainUser = regexp.MustCompile(`^[A-Za-z0-9+*#._~-]{1,64}$`)

// forwardParams are the parameters of Diversion (RFC 5806) and
// History-Info (RFC 7044) entries; others might name a host.
var forwardParams = map[string]bool{"reason": true, "counter": true, "limit": true, "privacy": true,
	"screen": true, "extension": true, "index": true, "rc": true, "mp": true, "np": true}

// paramValue is a token value; a quoted string is not passed on.
var paramValue = regexp.MustCompile(`^[A-Za-z0-9._-]{0,32}$`)

// keptParams is params (";a=b;c") with only the forwardParams whose value
// is a plain token.
func keptParams(params string) string {
	var b strings.Builder
	for _, p := range strings.Split(params, ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		if forwardParams[strings.ToLower(k)] && paramValue.MatchString(v) {
			b.WriteString(";" + strings.TrimSpace(p))
		}
	}
	return b.String()
}

// keptURIParts is the cause parameter and the Reason and Privacy headers
// of uri, written as they go into a URI.
func keptURIParts(uri string) string {
	addr, hdrs, _ := strings.Cut(uri, "?")
	var b strings.Builder
	for i, p := range strings.Split(addr, ";") {
		if k, v, _ := strings.Cut(p, "="); i > 0 && strings.EqualFold(k, "cause") && paramValue.MatchString(v) {
			b.WriteString(";" + p)
		}
	}
	sep := "?"
	for _, h := range strings.Split(hdrs, "&") {
		k, v, _ := strings.Cut(h, "=")
		if (strings.EqualFold(k, "Reason") || strings.EqualFold(k, "Privacy")) && escapedValue.MatchString(v) {
			b.WriteString(sep + h)
			sep = "&"
		}
	}
	return b.String()
}

// escapedValue is a URI header value as RFC 3261 escapes it: Reason's
// "SIP%3Bcause%3D302" and the like, never a host.
var escapedValue = regexp.MustCompile(`^[A-Za-z0-9%._+-]{1,128}$`)

// DIDSource says where an inbound INVITE names the number called
// (trunks[].did_from): DIDAuto, DIDRURI, DIDTo, or DIDHeader followed by
// a header's name.
type DIDSource string

const (
	DIDAuto   DIDSource = "auto" // the Request-URI user, else the To user
	DIDRURI   DIDSource = "ruri"
	DIDTo     DIDSource = "to"
	DIDHeader DIDSource = "header:" // e.g. "header:P-Called-Party-ID"
)

// CalledNumbers are the numbers an inbound INVITE was sent to, by src, in
// the order to try them against the trunk's DIDs. A header that is
// missing, or holds no number, gives none.
func CalledNumbers(req *sip.Request, src DIDSource) []string {
	ruri := req.Recipient.User
	to := ""
	if t := req.To(); t != nil {
		to = t.Address.User
	}
	switch {
	case src == DIDRURI:
		return []string{ruri}
	case src == DIDTo:
		return []string{to}
	case strings.HasPrefix(string(src), string(DIDHeader)):
		var out []string
		for _, h := range req.GetHeaders(strings.TrimPrefix(string(src), string(DIDHeader))) {
			for _, v := range splitList(h.Value()) {
				if u := userOf(addrURI(v)); u != "" {
					out = append(out, u)
				} else if n := strings.TrimSpace(v); n != "" && !strings.ContainsAny(n, "<>:@;") {
					out = append(out, n) // a bare number, as some SBCs send it
				}
			}
		}
		return out
	}
	return []string{ruri, to}
}
