package config

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// HostPort is a parsed host[:port]: a host name or an IP literal (IPv6
// without brackets). Port 0 means the file gave none.
type HostPort struct {
	Host string
	Port int
}

// String gives host or host:port, bracketing IPv6.
func (h HostPort) String() string {
	if h.Port == 0 {
		return h.Host
	}
	return net.JoinHostPort(h.Host, strconv.Itoa(h.Port))
}

// Validate checks every rule and returns all problems joined, one
// *FieldError per problem (see Problems). Run it after SetDefaults; it also
// fills the parsed fields (ListenAddr, RegistrarAddr, ...), which are only
// meaningful when it returns nil.
func (c *Config) Validate() error { return joinErrs(c.check()) }

// checker collects problems and looks up where in the file they are.
type checker struct {
	lines map[string]int
	kind  error
	errs  []*FieldError
}

func (k *checker) add(field, problem, fix string) {
	line := 0
	// A defaulted or missing key has no line of its own; point at the
	// nearest enclosing one that the file does have.
	for f := field; f != "" && line == 0; f = parentPath(f) {
		line = k.lines[f]
	}
	k.errs = append(k.errs, &FieldError{Line: line, Field: field, Problem: problem, Fix: fix, Err: k.kind})
}

func parentPath(f string) string {
	i := strings.LastIndexAny(f, ".[")
	if i < 0 {
		return ""
	}
	return f[:i]
}

var (
	trunkName       = regexp.MustCompile(`^[a-z0-9_-]+$`)
	didPattern      = regexp.MustCompile(`^\+?[0-9]+\*?$`)
	digitPrefix     = regexp.MustCompile(`^\+?[0-9]+$`)
	emergencyNumber = regexp.MustCompile(`^[0-9]{2,8}$`)
	countryCode     = regexp.MustCompile(`^[1-9][0-9]{0,2}$`)
)

func (c *Config) check() []*FieldError {
	k := &checker{lines: c.lines, kind: ErrInvalid}

	k.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	k.oneOf("log.format", c.Log.Format, "console", "json")

	c.SIP.ListenAddr = k.ipPort("sip.listen", c.SIP.Listen, DefaultSIPPort,
		"use an IP of this machine, e.g. 192.168.100.2:65002, or 0.0.0.0:65002 for the default-route interface")

	c.STUN.ServerAddrs = nil
	for i, s := range c.STUN.Servers {
		hp, problem := parseHostPort(s)
		if problem != "" {
			k.add(fmt.Sprintf("stun.servers[%d]", i), problem, "use host or host:port, e.g. stun.example.net:3478")
			continue
		}
		if hp.Port == 0 {
			hp.Port = DefaultSTUNPort
		}
		c.STUN.ServerAddrs = append(c.STUN.ServerAddrs, hp)
	}
	k.duration("stun.interval", c.STUN.Interval, MinSTUNInterval, MaxSTUNInterval,
		"NAT routers often drop idle UDP mappings after 30s, so stay well below that; 10s is safe")

	if len(c.Trunks) == 0 {
		k.add("trunks", "no trunk configured", "add at least one entry with name, registrar, username and password")
	}
	names := map[string]int{}
	for i := range c.Trunks {
		t := &c.Trunks[i]
		f := fmt.Sprintf("trunks[%d]", i)
		if first, dup := names[t.Name]; dup && t.Name != "" {
			k.add(f+".name", fmt.Sprintf("%q is already used by trunks[%d]", t.Name, first), "give every trunk its own name")
		} else {
			names[t.Name] = i
		}
		k.trunk(f, t)
	}

	c.PBX.ListenAddr = k.ipPort("pbx.listen", c.PBX.Listen, DefaultPBXPort,
		"use this machine's LAN IP, e.g. 192.168.100.2:5060")
	c.PBX.Addr = k.ipPort("pbx.address", c.PBX.Address, DefaultPBXPort,
		"use the PBX's LAN IP, e.g. 192.168.100.20:5060")
	if c.PBX.Addr.IsValid() && c.PBX.Addr.Addr().IsUnspecified() {
		k.add("pbx.address", fmt.Sprintf("%q is not a host we can send to", c.PBX.Address), "use the PBX's own LAN IP, e.g. 192.168.100.20:5060")
	}
	if sameSocket(c.SIP.ListenAddr, c.PBX.ListenAddr) {
		k.add("pbx.listen", fmt.Sprintf("%s collides with sip.listen %s", c.PBX.ListenAddr, c.SIP.ListenAddr),
			"use a different port for each, e.g. 5060 for pbx.listen and 65002 for sip.listen")
	}
	c.PBX.AllowPrefixes = k.allowList("pbx.allow", c.PBX.Allow, "use e.g. 192.168.100.20 or 192.168.100.0/24")
	if (c.PBX.Username == "") != (c.PBX.Password == "") {
		k.add("pbx.password", "only one of pbx.username and pbx.password is set", "set both to require digest auth from the PBX, or neither")
	}

	k.duration("pbx.ring_timeout", c.PBX.RingTimeout, 5*time.Second, 10*time.Minute, "e.g. 120s")
	for j, n := range c.PBX.EmergencyNumbers {
		if !emergencyNumber.MatchString(n) {
			k.add(fmt.Sprintf("pbx.emergency_numbers[%d]", j), fmt.Sprintf("%q is not an emergency number", n),
				`use the exact digits the PBX dials, e.g. "112"`)
		}
	}
	if r := c.PBX.MaxCallRate; r != nil && (*r < 0 || *r > 1000) {
		k.add("pbx.max_call_rate", fmt.Sprintf("%v is out of range", *r), "use new calls per second per PBX address, 0 (no limit) to 1000; default 10")
	}

	k.rtp(&c.RTP, c.SIP.ListenAddr, c.PBX.ListenAddr)

	c.Admin.ListenAddr = netip.AddrPort{}
	if l := c.Admin.Listen; l != nil && *l != "" && *l != AdminOff {
		c.Admin.ListenAddr = k.ipPort("admin.listen", *l, DefaultAdminPort, `use an IP such as 127.0.0.1:9065, or "off" to disable`)
	}
	k.duration("shutdown.grace", c.Shutdown.Grace, time.Second, 0, "e.g. 30s")
	k.oneOf("nat.portmap", c.NAT.Portmap, PortmapAuto, PortmapOff)
	return k.errs
}

func (k *checker) trunk(f string, t *Trunk) {
	if t.Name == "" {
		k.add(f+".name", "missing", "name the trunk with lowercase letters, digits, _ or -, e.g. provider")
	} else if !trunkName.MatchString(t.Name) {
		k.add(f+".name", fmt.Sprintf("%q has characters other than a-z 0-9 _ -", t.Name), "use lowercase letters, digits, _ or -, e.g. "+suggestName(t.Name))
	}

	const hostFix = "use host or host:port, e.g. sip.example.net:5060"
	var problem string
	if t.RegistrarAddr, problem = parseHostPort(t.Registrar); problem != "" {
		k.add(f+".registrar", problem, hostFix)
	}
	// Proxy and domain default from the registrar; if it is broken, saying
	// so once is enough.
	if t.Proxy != "" {
		if t.ProxyAddr, problem = parseHostPort(t.Proxy); problem != "" {
			k.add(f+".proxy", problem, hostFix+`, or "" to send to the registrar`)
		}
	}
	if t.Domain != "" {
		if hp, problem := parseHostPort(t.Domain); problem != "" || hp.Port != 0 {
			k.add(f+".domain", fmt.Sprintf("%q is not a domain", t.Domain), "use the provider's SIP domain without port, e.g. example.net")
		}
	}

	if t.Username == "" {
		k.add(f+".username", "missing", `set the account's user, usually the phone number, e.g. "4930123456"`)
	}
	switch {
	case t.Password == "" && t.PasswordFile == "":
		k.add(f+".password", "missing", `set password (a literal or "${ENV_VAR}") or password_file`)
	case t.Password != "" && t.PasswordFile != "":
		k.add(f+".password_file", "both password and password_file are set", "keep only one of them")
	}

	k.duration(f+".expires", t.Expires, MinExpires, MaxExpires, "300s suits most providers")
	k.duration(f+".refresh_max", t.RefreshMax, MinRefreshMax, MaxExpires, "120s bounds how long a provider that lost our registration can miss inbound calls")
	if time.Duration(t.Expires)%time.Second != 0 {
		k.add(f+".expires", fmt.Sprintf("%s is not a whole number of seconds", t.Expires), "SIP Expires counts seconds; use e.g. 300s")
	}
	k.oneOf(f+".keepalive", t.Keepalive, KeepaliveAuto, KeepaliveSTUN, KeepaliveOptions, KeepaliveCRLF, KeepaliveOff)

	for j, d := range t.DIDs {
		if !didPattern.MatchString(d) {
			k.add(fmt.Sprintf("%s.dids[%d]", f, j), fmt.Sprintf("%q is not a DID", d),
				`use digits with an optional leading + and optional trailing * for a block, e.g. "+4930123456" or "+4930123456*"`)
		}
	}
	for _, list := range []struct {
		name     string
		patterns []string
	}{{"outbound_allow", t.OutboundAllow}, {"outbound_deny", t.OutboundDeny}} {
		for j, p := range list.patterns {
			if !didPattern.MatchString(p) {
				k.add(fmt.Sprintf("%s.%s[%d]", f, list.name, j), fmt.Sprintf("%q is not a number pattern", p),
					`use digits with an optional leading + and optional trailing * for a prefix, e.g. "0900*" or "+49*"`)
			}
		}
	}
	if t.MaxCalls < 0 {
		k.add(f+".max_calls", fmt.Sprintf("%d is negative", t.MaxCalls), "use the provider's channel count, or 0 for no cap")
	}
	for j, p := range t.OutboundPrefixes {
		if !digitPrefix.MatchString(p) {
			k.add(fmt.Sprintf("%s.outbound_prefixes[%d]", f, j), fmt.Sprintf("%q is not a number prefix", p), `use digits with an optional leading +, e.g. "0049" or "+49"`)
		}
	}

	k.oneOf(f+".number_format", t.NumberFormat, NumberE164, NumberE164NoPlus, NumberNational, NumberAsIs)
	k.oneOf(f+".caller_id.from_user", t.CallerID.FromUser, FromUserAccount, FromUserNumber)
	k.oneOf(f+".caller_id.asserted", t.CallerID.Asserted, AssertedNone, AssertedPAI, AssertedPPI)
	if t.CallerID.NumberFormat != "" { // empty only when number_format is bad, which is reported
		k.oneOf(f+".caller_id.number_format", t.CallerID.NumberFormat, NumberE164, NumberE164NoPlus, NumberNational, NumberAsIs)
	}
	k.didFrom(f+".did_from", t.DIDFrom)
	if t.RTPLatching != "" { // empty only when rtp.latching is bad, which is reported
		k.oneOf(f+".rtp_latching", t.RTPLatching, LatchingStrict, LatchingIP, LatchingAny)
	}
	t.AllowPrefixes = k.allowList(f+".allow", t.Allow,
		`use the provider's SBC addresses, e.g. "198.51.100.0/28" or "198.51.100.7"`)
	switch {
	case t.CountryCode != "" && !countryCode.MatchString(t.CountryCode):
		k.add(f+".country_code", fmt.Sprintf("%q is not a country code", t.CountryCode), `use 1 to 3 digits without + or 00, e.g. "49"`)
	case t.CountryCode == "":
		for _, nf := range []struct{ field, v string }{{"number_format", t.NumberFormat}, {"caller_id.number_format", t.CallerID.NumberFormat}} {
			if needsCountry(nf.v) {
				k.add(f+".country_code", "missing, but "+nf.field+" "+nf.v+" needs it", `set the country code digits, e.g. "49" for Germany`)
				break
			}
		}
	}
}

// needsCountry reports whether a number format converts between
// national and international numbers, which takes the country code.
func needsCountry(format string) bool {
	return format == NumberE164 || format == NumberE164NoPlus || format == NumberNational
}

// sipToken is an RFC 3261 token, what a header name is made of.
var sipToken = regexp.MustCompile("^[A-Za-z0-9.!%*_+`'~-]+$")

func (k *checker) didFrom(field, v string) {
	if name, ok := strings.CutPrefix(v, DIDFromHeader); ok {
		if !sipToken.MatchString(name) {
			k.add(field, fmt.Sprintf("%q does not name a header", v), "write header: and the header's name, e.g. header:P-Called-Party-ID")
		}
		return
	}
	k.oneOf(field, v, DIDFromAuto, DIDFromRURI, DIDFromTo, DIDFromHeader+"NAME")
}

func (k *checker) rtp(r *RTP, sip, pbx netip.AddrPort) {
	inet := k.portRange("rtp.port_min", "rtp.port_max", r.PortMin, r.PortMax)
	lan := k.portRange("rtp.lan_port_min", "rtp.lan_port_max", r.LANPortMin, r.LANPortMax)
	if inet && lan && r.PortMin <= r.LANPortMax && r.LANPortMin <= r.PortMax {
		k.add("rtp.lan_port_min", fmt.Sprintf("LAN range %d..%d overlaps Internet range %d..%d", r.LANPortMin, r.LANPortMax, r.PortMin, r.PortMax),
			"move one of them, e.g. lan_port_min: 40000 and lan_port_max: 41000")
	}
	for _, s := range []struct {
		field string
		ap    netip.AddrPort
	}{{"sip.listen", sip}, {"pbx.listen", pbx}} {
		p := int(s.ap.Port())
		if inet && r.PortMin <= p && p <= r.PortMax {
			k.add("rtp.port_min", fmt.Sprintf("range %d..%d contains the %s port %d", r.PortMin, r.PortMax, s.field, p), "move the range or the listen port")
		}
		if lan && r.LANPortMin <= p && p <= r.LANPortMax {
			k.add("rtp.lan_port_min", fmt.Sprintf("range %d..%d contains the %s port %d", r.LANPortMin, r.LANPortMax, s.field, p), "move the range or the listen port")
		}
	}
	k.duration("rtp.media_timeout", r.MediaTimeout, time.Second, 0, "e.g. 60s")
	k.duration("rtp.hold_timeout", r.HoldTimeout, time.Second, 0, "e.g. 1h")
	k.oneOf("rtp.latching", r.Latching, LatchingStrict, LatchingIP, LatchingAny)
	k.oneOf("rtp.lan_latching", r.LANLatching, LatchingStrict, LatchingIP, LatchingAny)
	k.oneOf("rtp.io", r.IO, IOGoroutines, IOEpoll)
	k.duration("rtp.relatch_after", r.RelatchAfter, MinRelatchAfter, MaxRelatchAfter,
		"shorter lets an injector take over in a pause, longer cuts a moved stream for longer; 1s suits most")
	if r.DSCP != nil && (*r.DSCP < 0 || *r.DSCP > 63) {
		k.add("rtp.dscp", fmt.Sprintf("%d is outside 0..63", *r.DSCP), "use 46 (EF, usual for voice) or 0 to leave packets unmarked")
	}
}

// portRange reports whether min..max is a usable pool.
func (k *checker) portRange(minField, maxField string, lo, hi int) bool {
	ok := true
	for _, p := range []struct {
		field string
		v     int
	}{{minField, lo}, {maxField, hi}} {
		if p.v < MinRTPPort || p.v > MaxRTPPort {
			k.add(p.field, fmt.Sprintf("%d is outside %d..%d", p.v, MinRTPPort, MaxRTPPort), "pick an unprivileged port up to 65535")
			ok = false
		}
	}
	if lo%2 != 0 {
		k.add(minField, fmt.Sprintf("%d is odd", lo), fmt.Sprintf("use %d: RTP takes the even port and RTCP the odd one above it", lo-1))
		ok = false
	}
	if ok && hi-lo+1 < MinRTPPorts {
		k.add(maxField, fmt.Sprintf("range %d..%d has %d ports, fewer than %d", lo, hi, max(hi-lo+1, 0), MinRTPPorts),
			fmt.Sprintf("raise it to at least %d; each call needs an RTP and an RTCP port per leg", lo+MinRTPPorts-1))
		ok = false
	}
	return ok
}

func (k *checker) oneOf(field, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	k.add(field, fmt.Sprintf("%q is not allowed", v), "use one of "+strings.Join(allowed, ", "))
}

// duration checks lo <= d <= hi; hi 0 means no upper bound.
func (k *checker) duration(field string, d Duration, lo, hi time.Duration, why string) {
	v := time.Duration(d)
	switch {
	case hi == 0 && v < lo:
		k.add(field, fmt.Sprintf("%s is below %s", v, lo), why)
	case hi != 0 && (v < lo || v > hi):
		k.add(field, fmt.Sprintf("%s is outside %s..%s", v, lo, hi), fmt.Sprintf("use %s to %s; %s", lo, hi, why))
	}
}

// ipPort parses a listen-style address, returning the zero AddrPort (and
// recording a problem) when it is not usable.
func (k *checker) ipPort(field, s string, defPort uint16, fix string) netip.AddrPort {
	ap, problem := parseIPPort(s, defPort)
	if problem != "" {
		k.add(field, problem, fix)
	}
	return ap
}

// parseIPPort accepts IP, [IPv6], IP:port or [IPv6]:port. Host names are
// refused: we bind to these or compare them with packet sources, and
// resolving names is not config's job.
func parseIPPort(s string, defPort uint16) (netip.AddrPort, string) {
	if s == "" {
		return netip.AddrPort{}, "missing"
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Sprintf("port 0 in %q", s)
		}
		return ap, ""
	}
	bare := s
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		bare = s[1 : len(s)-1]
	}
	if a, err := netip.ParseAddr(bare); err == nil {
		return netip.AddrPortFrom(a, defPort), ""
	}
	if _, problem := parseHostPort(s); problem != "" {
		return netip.AddrPort{}, problem
	}
	return netip.AddrPort{}, fmt.Sprintf("%q is a host name, not an IP address", s)
}

// parseHostPort accepts name, IPv4, IPv6, each with an optional port
// (IPv6 in brackets when it has one). Problems quote the input.
func parseHostPort(s string) (HostPort, string) {
	if s == "" {
		return HostPort{}, "missing"
	}
	if strings.Contains(s, "://") || strings.HasPrefix(strings.ToLower(s), "sip:") || strings.HasPrefix(strings.ToLower(s), "sips:") {
		return HostPort{}, fmt.Sprintf("%q is a URI, not host[:port]", s)
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return HostPort{Host: a.String()}, ""
	}
	host, port, hasPort := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return HostPort{}, fmt.Sprintf("missing ] in %q", s)
		}
		host, port = s[1:end], s[end+1:]
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return HostPort{}, fmt.Sprintf("%q in brackets is not an IPv6 address", host)
		}
		if port != "" {
			if port[0] != ':' {
				return HostPort{}, fmt.Sprintf("unexpected %q after ] in %q", port, s)
			}
			port, hasPort = port[1:], true
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port, hasPort = s[:i], s[i+1:], true
		if strings.Contains(host, ":") {
			return HostPort{}, fmt.Sprintf("%q has more than one ':'; an IPv6 address with a port needs brackets, e.g. [2001:db8::1]:5060", s)
		}
		if !validHost(host) {
			return HostPort{}, fmt.Sprintf("%q is not a valid host name or IP address", host)
		}
	} else if !validHost(host) {
		return HostPort{}, fmt.Sprintf("%q is not a valid host name or IP address", host)
	}
	if !hasPort {
		return HostPort{Host: host}, ""
	}
	p, err := strconv.Atoi(port)
	if err != nil || port[0] == '+' || port[0] == '-' || p < 1 || p > 65535 {
		return HostPort{}, fmt.Sprintf("invalid port %q in %q", port, s)
	}
	return HostPort{Host: host, Port: p}, ""
}

// validHost accepts an IPv4 literal or an RFC 1123 host name.
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Is4()
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	// An all-digit last label is a mistyped IPv4 address (999.1.1.1), not a name.
	_, err := strconv.Atoi(labels[len(labels)-1])
	return err != nil
}

// allowList parses an allow list, reporting each entry that is neither
// an IP nor a CIDR under field[i].
func (k *checker) allowList(field string, list []string, fix string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range list {
		p, ok := parseAllow(s)
		if !ok {
			k.add(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("%q is not an IP or CIDR", s), fix)
			continue
		}
		out = append(out, p)
	}
	return out
}

// parseAllow accepts a bare IP (one host) or a CIDR; host bits are masked
// off so 192.168.100.20/24 means the /24.
func parseAllow(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

// sameSocket reports whether binding both would collide: same port and the
// same IP, or either on the wildcard address.
func sameSocket(a, b netip.AddrPort) bool {
	if !a.IsValid() || !b.IsValid() || a.Port() != b.Port() {
		return false
	}
	return a.Addr() == b.Addr() || a.Addr().IsUnspecified() || b.Addr().IsUnspecified()
}

// suggestName lowercases a name and replaces what the pattern forbids.
func suggestName(s string) string {
	out := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, s)
	return out
}
