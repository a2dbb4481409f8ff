package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// base is the smallest valid config; bad cases edit one line of it.
const base = `sip:
  listen: 0.0.0.0:65002
stun:
  servers: ["stun.example.net"]
trunks:
  - name: provider
    registrar: sip.example.net:5060
    username: "4930123456"
    password: secret
    dids: ["+4930123456"]
pbx:
  listen: 192.168.100.2:5060
  address: 192.168.100.20:5060
`

// edit replaces each old with new once, failing if old is missing so a
// typo in a test case cannot make it pass vacuously.
func edit(t *testing.T, s string, oldNew ...string) string {
	t.Helper()
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(s, oldNew[i]) {
			t.Fatalf("edit: %q not in config", oldNew[i])
		}
		s = strings.Replace(s, oldNew[i], oldNew[i+1], 1)
	}
	return s
}

func parseDefaultValidate(data string) (*Config, error) {
	c, err := Parse([]byte(data))
	if err != nil {
		return nil, err
	}
	c.SetDefaults()
	return c, c.Validate()
}

func TestBaseIsValid(t *testing.T) {
	if _, err := parseDefaultValidate(base); err != nil {
		t.Fatal(err)
	}
}

func TestValidateErrors(t *testing.T) {
	const (
		trunkLine = "  - name: provider\n"
		regLine   = "    registrar: sip.example.net:5060\n"
		pwLine    = "    password: secret\n"
		rtp       = "pbx:\n"
	)
	second := func(extra string) []string {
		return []string{"trunks:\n", "trunks:\n  - {name: second, registrar: b.example.net, username: u, password: p" + extra + "}\n"}
	}
	tests := []struct {
		name string
		edit []string
		want []string
		n    int
	}{
		{"log level", []string{"sip:\n", "log: {level: verbose}\nsip:\n"},
			[]string{`line 1: log.level: "verbose" is not allowed: use one of debug, info, warn, error`}, 0},
		{"log format", []string{"sip:\n", "log: {format: xml}\nsip:\n"},
			[]string{`log.format: "xml" is not allowed: use one of console, json`}, 0},

		{"sip listen host name", []string{"0.0.0.0:65002", "gateway.lan:65002"},
			[]string{`line 2: sip.listen: "gateway.lan:65002" is a host name, not an IP address: use an IP of this machine`}, 0},
		{"sip listen port 0", []string{"0.0.0.0:65002", "0.0.0.0:0"},
			[]string{`sip.listen: port 0 in "0.0.0.0:0"`}, 0},
		{"sip listen bad port", []string{"0.0.0.0:65002", "0.0.0.0:70000"},
			[]string{`sip.listen: invalid port "70000" in "0.0.0.0:70000"`}, 0},

		{"stun server bad port", []string{`["stun.example.net"]`, `["stun.example.net", "stun2.example.net:0"]`},
			[]string{`stun.servers[1]: invalid port "0" in "stun2.example.net:0": use host or host:port, e.g. stun.example.net:3478`}, 0},
		{"stun server bad host", []string{`["stun.example.net"]`, `["stun example"]`},
			[]string{`stun.servers[0]: "stun example" is not a valid host name or IP address`}, 0},
		{"stun interval too long", []string{`["stun.example.net"]`, "[]\n  interval: 90s"},
			[]string{"stun.interval: 1m30s is outside 1s..1m0s: use 1s to 1m0s;", "often drop idle UDP mappings after 30s"}, 0},
		{"stun interval too short", []string{`["stun.example.net"]`, "[]\n  interval: 500ms"},
			[]string{"line 5: stun.interval: 500ms is outside 1s..1m0s"}, 0},

		{"duplicate trunk name", []string{"trunks:\n", base[strings.Index(base, "trunks:"):strings.Index(base, "pbx:")]},
			[]string{`trunks[1].name: "provider" is already used by trunks[0]: give every trunk its own name`}, 0},
		{"third trunk with the same name points at the first", []string{"trunks:\n", "trunks:\n  - {name: provider, registrar: a.example.net, username: u, password: p}\n  - {name: provider, registrar: b.example.net, username: u, password: p}\n"},
			[]string{`trunks[1].name: "provider" is already used by trunks[0]`, `trunks[2].name: "provider" is already used by trunks[0]`}, 2},
		{"trunk name missing", []string{trunkLine + "    registrar", "  - registrar"},
			[]string{"line 6: trunks[0].name: missing: name the trunk"}, 0},
		{"trunk name bad", []string{"name: provider", "name: Provider 1"},
			[]string{`trunks[0].name: "Provider 1" has characters other than a-z 0-9 _ -: use lowercase letters, digits, _ or -, e.g. provider-1`}, 0},

		{"registrar bad port", []string{regLine, "    registrar: sip.example.net:50x0\n"},
			[]string{`line 7: trunks[0].registrar: invalid port "50x0" in "sip.example.net:50x0": use host or host:port, e.g. sip.example.net:5060`}, 0},
		{"registrar missing", []string{regLine, ""},
			[]string{"trunks[0].registrar: missing: use host or host:port"}, 0},
		{"registrar URI", []string{regLine, "    registrar: sip:sip.example.net\n"},
			[]string{`trunks[0].registrar: "sip:sip.example.net" is a URI, not host[:port]`}, 0},
		{"registrar underscore", []string{regLine, "    registrar: sip_gw.example.net\n"},
			[]string{`trunks[0].registrar: "sip_gw.example.net" is not a valid host name or IP address`}, 0},
		{"registrar bad IPv4", []string{regLine, "    registrar: 999.1.1.1:5060\n"},
			[]string{`trunks[0].registrar: "999.1.1.1" is not a valid host name`}, 0},
		{"registrar two colons", []string{regLine, "    registrar: sip.example.net:5060:1\n"},
			[]string{`trunks[0].registrar: "sip.example.net:5060:1" has more than one ':'`, "[2001:db8::1]:5060"}, 0},
		{"registrar bracket not IPv6", []string{regLine, "    registrar: \"[1.2.3.4]:5060\"\n"},
			[]string{`trunks[0].registrar: "1.2.3.4" in brackets is not an IPv6 address`}, 0},
		{"proxy bad", []string{regLine, regLine + "    proxy: proxy.example.net:99999\n"},
			[]string{`trunks[0].proxy: invalid port "99999" in "proxy.example.net:99999": use host or host:port, e.g. sip.example.net:5060, or "" to send to the registrar`}, 0},
		{"domain with port", []string{regLine, regLine + "    domain: example.net:5060\n"},
			[]string{`trunks[0].domain: "example.net:5060" is not a domain: use the provider's SIP domain without port`}, 0},

		{"username missing", []string{"    username: \"4930123456\"\n", ""},
			[]string{"trunks[0].username: missing: set the account's user"}, 0},
		{"password missing", []string{pwLine, ""},
			[]string{`trunks[0].password: missing: set password (a literal or "${ENV_VAR}") or password_file`}, 0},
		{"password and file", []string{pwLine, pwLine + "    password_file: /run/secret\n"},
			[]string{"trunks[0].password_file: both password and password_file are set: keep only one of them"}, 0},
		{"expires too short", []string{pwLine, pwLine + "    expires: 30s\n"},
			[]string{"trunks[0].expires: 30s is outside 1m0s..1h0m0s: use 1m0s to 1h0m0s"}, 0},
		{"refresh_max too short", []string{pwLine, pwLine + "    refresh_max: 10s\n"},
			[]string{"trunks[0].refresh_max: 10s is outside 30s..1h0m0s: use 30s to 1h0m0s"}, 0},
		{"expires fractional", []string{pwLine, pwLine + "    expires: 90500ms\n"},
			[]string{"trunks[0].expires: 1m30.5s is not a whole number of seconds"}, 0},
		{"keepalive", []string{pwLine, pwLine + "    keepalive: ping\n"},
			[]string{`trunks[0].keepalive: "ping" is not allowed: use one of auto, stun, options, crlf, off`}, 0},
		{"did with space", []string{`["+4930123456"]`, `["+4930123456", "030 123"]`},
			[]string{`line 10: trunks[0].dids[1]: "030 123" is not a DID: use digits with an optional leading +`}, 0},
		{"did star in middle", []string{`["+4930123456"]`, `["+49*30"]`},
			[]string{`trunks[0].dids[0]: "+49*30" is not a DID`}, 0},
		{"did only star", []string{`["+4930123456"]`, `["*"]`},
			[]string{`trunks[0].dids[0]: "*" is not a DID`}, 0},
		{"outbound prefix", []string{pwLine, pwLine + "    outbound_prefixes: [\"00x\"]\n"},
			[]string{`trunks[0].outbound_prefixes[0]: "00x" is not a number prefix`}, 0},
		{"outbound deny", []string{pwLine, pwLine + "    outbound_deny: [\"0900*\", \"00 *\"]\n"},
			[]string{`line 10: trunks[0].outbound_deny[1]: "00 *" is not a number pattern: use digits with an optional leading + and optional trailing * for a prefix, e.g. "0900*" or "+49*"`}, 1},
		{"outbound allow", []string{pwLine, pwLine + "    outbound_allow: [\"+49**\"]\n"},
			[]string{`trunks[0].outbound_allow[0]: "+49**" is not a number pattern`}, 1},
		{"max calls negative", []string{pwLine, pwLine + "    max_calls: -1\n"},
			[]string{`line 10: trunks[0].max_calls: -1 is negative: use the provider's channel count, or 0 for no cap`}, 1},
		{"number format", []string{pwLine, pwLine + "    number_format: international\n"},
			[]string{`trunks[0].number_format: "international" is not allowed: use one of e164, e164-no-plus, national, as-is`}, 1},
		{"caller_id from_user", []string{pwLine, pwLine + "    caller_id: {from_user: pbx}\n"},
			[]string{`line 10: trunks[0].caller_id.from_user: "pbx" is not allowed: use one of account, number`}, 1},
		{"caller_id asserted", []string{pwLine, pwLine + "    caller_id:\n      asserted: PAI\n"},
			[]string{`line 11: trunks[0].caller_id.asserted: "PAI" is not allowed: use one of none, pai, ppi`}, 1},
		{"caller_id number format", []string{pwLine, pwLine + "    caller_id: {number_format: e.164}\n"},
			[]string{`line 10: trunks[0].caller_id.number_format: "e.164" is not allowed: use one of e164, e164-no-plus, national, as-is`}, 1},
		{"caller_id number format needs country code", []string{pwLine, pwLine + "    caller_id: {number_format: e164-no-plus}\n"},
			[]string{`trunks[0].country_code: missing, but caller_id.number_format e164-no-plus needs it: set the country code digits`}, 1},
		{"did_from", []string{pwLine, pwLine + "    did_from: request-uri\n"},
			[]string{`line 10: trunks[0].did_from: "request-uri" is not allowed: use one of auto, ruri, to, header:NAME`}, 1},
		{"did_from header without name", []string{pwLine, pwLine + "    did_from: \"header:\"\n"},
			[]string{`line 10: trunks[0].did_from: "header:" does not name a header: write header: and the header's name, e.g. header:P-Called-Party-ID`}, 1},
		{"did_from header with space", []string{pwLine, pwLine + "    did_from: \"header:X Called\"\n"},
			[]string{`trunks[0].did_from: "header:X Called" does not name a header`}, 1},
		{"country code missing", []string{pwLine, pwLine + "    number_format: national\n"},
			[]string{`trunks[0].country_code: missing, but number_format national needs it: set the country code digits, e.g. "49"`}, 0},
		{"country code with plus", []string{pwLine, pwLine + "    number_format: e164\n    country_code: \"+49\"\n"},
			[]string{`trunks[0].country_code: "+49" is not a country code: use 1 to 3 digits without + or 00`}, 0},
		{"problem in an added trunk names its index", second(", expires: 2h"),
			[]string{"line 6: trunks[0].expires: 2h0m0s is outside"}, 0},

		{"pbx listen missing", []string{"  listen: 192.168.100.2:5060\n", ""},
			[]string{"pbx.listen: missing: use this machine's LAN IP"}, 0},
		{"pbx address missing", []string{"  address: 192.168.100.20:5060\n", ""},
			[]string{"pbx.address: missing: use the PBX's LAN IP, e.g. 192.168.100.20:5060"}, 0},
		{"pbx address wildcard", []string{"192.168.100.20:5060", "0.0.0.0:5060"},
			[]string{`pbx.address: "0.0.0.0:5060" is not a host we can send to`}, 0},
		{"pbx address host name", []string{"192.168.100.20:5060", "pbx.lan"},
			[]string{`pbx.address: "pbx.lan" is a host name, not an IP address`}, 0},
		{"pbx listen collides with sip", []string{"192.168.100.2:5060", "192.168.100.2:65002"},
			[]string{"pbx.listen: 192.168.100.2:65002 collides with sip.listen 0.0.0.0:65002: use a different port for each"}, 0},
		{"pbx allow bad", []string{"  address: 192.168.100.20:5060\n", "  address: 192.168.100.20:5060\n  allow: [192.168.100.0/24, 192.168.100.300]\n"},
			[]string{`line 14: pbx.allow[1]: "192.168.100.300" is not an IP or CIDR: use e.g. 192.168.100.20 or 192.168.100.0/24`}, 0},
		{"trunk allow bad CIDR", []string{"    dids: [\"+4930123456\"]\n", "    dids: [\"+4930123456\"]\n    allow: [\"198.51.100.0/28\", \"198.51.100.0/33\"]\n"},
			[]string{`line 11: trunks[0].allow[1]: "198.51.100.0/33" is not an IP or CIDR: use the provider's SBC addresses, e.g. "198.51.100.0/28" or "198.51.100.7"`}, 0},
		{"trunk allow host name", append([]string(nil), second(`, allow: [sbc.example.net]`)...),
			[]string{`line 6: trunks[0].allow[0]: "sbc.example.net" is not an IP or CIDR`}, 0},
		{"pbx username without password", []string{"  address: 192.168.100.20:5060\n", "  address: 192.168.100.20:5060\n  username: pbx\n"},
			[]string{"pbx.password: only one of pbx.username and pbx.password is set: set both"}, 0},

		{"rtp port odd", []string{rtp, "rtp: {port_min: 55001}\n" + rtp},
			[]string{"line 11: rtp.port_min: 55001 is odd: use 55000: RTP takes the even port"}, 0},
		{"rtp port privileged", []string{rtp, "rtp: {port_min: 1000}\n" + rtp},
			[]string{"rtp.port_min: 1000 is outside 1024..65535: pick an unprivileged port up to 65535"}, 0},
		{"rtp port too high", []string{rtp, "rtp: {lan_port_max: 70000}\n" + rtp},
			[]string{"rtp.lan_port_max: 70000 is outside 1024..65535"}, 0},
		{"rtp max below min", []string{rtp, "rtp: {port_min: 56000, port_max: 55000}\n" + rtp},
			[]string{"rtp.port_max: range 56000..55000 has 0 ports, fewer than 4: raise it to at least 56003"}, 0},
		{"rtp too few ports", []string{rtp, "rtp: {port_min: 55000, port_max: 55002}\n" + rtp},
			[]string{"rtp.port_max: range 55000..55002 has 3 ports, fewer than 4"}, 0},
		{"rtp pools overlap", []string{rtp, "rtp: {lan_port_min: 55500, lan_port_max: 56500}\n" + rtp},
			[]string{"rtp.lan_port_min: LAN range 55500..56500 overlaps Internet range 55000..56000: move one of them"}, 0},
		{"rtp contains sip port", []string{rtp, "rtp: {port_min: 60000, port_max: 65535}\n" + rtp},
			[]string{"rtp.port_min: range 60000..65535 contains the sip.listen port 65002: move the range or the listen port"}, 0},
		{"lan rtp contains pbx port", []string{rtp, "rtp: {lan_port_min: 5000, lan_port_max: 6000}\n" + rtp},
			[]string{"rtp.lan_port_min: range 5000..6000 contains the pbx.listen port 5060"}, 0},
		{"rtp dscp", []string{rtp, "rtp: {dscp: 64}\n" + rtp},
			[]string{"rtp.dscp: 64 is outside 0..63: use 46 (EF"}, 0},
		{"rtp latching", []string{rtp, "rtp: {latching: loose}\n" + rtp},
			[]string{`line 11: rtp.latching: "loose" is not allowed: use one of strict, ip, any`}, 0},
		{"rtp lan latching", []string{rtp, "rtp:\n  lan_latching: IP\n" + rtp},
			[]string{`line 12: rtp.lan_latching: "IP" is not allowed: use one of strict, ip, any`}, 0},
		{"trunk latching", []string{pwLine, pwLine + "    rtp_latching: symmetric\n"},
			[]string{`line 10: trunks[0].rtp_latching: "symmetric" is not allowed: use one of strict, ip, any`}, 0},
		// A bad global value is not repeated for the trunks inheriting it.
		{"rtp latching once", []string{rtp, "rtp: {latching: none}\n" + rtp},
			[]string{`rtp.latching: "none" is not allowed`}, 1},
		{"rtp io", []string{rtp, "rtp: {io: poll}\n" + rtp},
			[]string{`line 11: rtp.io: "poll" is not allowed: use one of goroutines, epoll`}, 0},
		{"rtp relatch too short", []string{rtp, "rtp: {relatch_after: 20ms}\n" + rtp},
			[]string{"line 11: rtp.relatch_after: 20ms is outside 100ms..10s: use 100ms to 10s; shorter lets an injector take over"}, 0},
		{"rtp negative timeout", []string{rtp, "rtp: {media_timeout: -5s, hold_timeout: 500ms}\n" + rtp},
			[]string{"rtp.media_timeout: -5s is below 1s", "rtp.hold_timeout: 500ms is below 1s"}, 2},

		{"admin host name", []string{rtp, "admin: {listen: localhost:9065}\n" + rtp},
			[]string{`admin.listen: "localhost:9065" is a host name, not an IP address: use an IP such as 127.0.0.1:9065, or "off" to disable`}, 0},
		{"shutdown grace negative", []string{rtp, "shutdown: {grace: -1s}\n" + rtp},
			[]string{"shutdown.grace: -1s is below 1s"}, 0},
		{"emergency number", []string{"pbx:\n", "pbx:\n  emergency_numbers: [\"112\", \"+112\"]\n"},
			[]string{`pbx.emergency_numbers[1]: "+112" is not an emergency number: use the exact digits the PBX dials, e.g. "112"`}, 0},
		{"call rate negative", []string{"pbx:\n", "pbx:\n  max_call_rate: -1\n"},
			[]string{`pbx.max_call_rate: -1 is out of range: use new calls per second per PBX address, 0 (no limit) to 1000; default 10`}, 0},
		{"nat portmap", []string{rtp, "nat: {portmap: upnp}\n" + rtp},
			[]string{`nat.portmap: "upnp" is not allowed: use one of auto, off`}, 0},
		{"ring timeout too long", []string{"pbx:\n", "pbx:\n  ring_timeout: 1h\n"},
			[]string{"pbx.ring_timeout: 1h0m0s is outside 5s..10m0s: use 5s to 10m0s; e.g. 120s"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseDefaultValidate(edit(t, base, tt.edit...))
			if err == nil {
				t.Fatal("config validated")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			assertProblems(t, err, tt.n, tt.want...)
		})
	}
}

func TestNoTrunks(t *testing.T) {
	data := base[:strings.Index(base, "trunks:")] + "trunks: []\n" + base[strings.Index(base, "pbx:"):]
	_, err := parseDefaultValidate(data)
	assertProblems(t, err, 1, "line 5: trunks: no trunk configured: add at least one entry")
}

func TestValidateReportsAllAtOnce(t *testing.T) {
	_, err := parseDefaultValidate(edit(t, base,
		"0.0.0.0:65002", "0.0.0.0:0",
		"sip.example.net:5060", "sip.example.net:50x0",
		"    password: secret\n", "",
		"192.168.100.20:5060", "pbx.lan",
	))
	assertProblems(t, err, 4, "sip.listen:", "trunks[0].registrar:", "trunks[0].password:", "pbx.address:")
}

func TestDefaults(t *testing.T) {
	c, err := parseDefaultValidate(base)
	if err != nil {
		t.Fatal(err)
	}
	tr := c.Trunks[0]
	tests := []struct {
		name      string
		got, want any
	}{
		{"log.level", c.Log.Level, DefaultLogLevel},
		{"log.format", c.Log.Format, DefaultLogFormat},
		{"stun.interval", c.STUN.Interval, Duration(10 * time.Second)},
		{"stun server port", c.STUN.ServerAddrs, []HostPort{{"stun.example.net", 3478}}},
		{"registrar parsed", tr.RegistrarAddr, HostPort{"sip.example.net", 5060}},
		{"proxy", tr.Proxy, "sip.example.net:5060"},
		{"proxy parsed", tr.ProxyAddr, HostPort{"sip.example.net", 5060}},
		{"domain", tr.Domain, "sip.example.net"},
		{"auth_username", tr.AuthUsername, "4930123456"},
		{"expires", tr.Expires, Duration(300 * time.Second)},
		{"refresh_max", tr.RefreshMax, Duration(120 * time.Second)},
		{"register", *tr.Register, true},
		{"keepalive", tr.Keepalive, "auto"},
		{"number_format", tr.NumberFormat, "as-is"},
		{"caller_id.from_user", tr.CallerID.FromUser, "account"},
		{"caller_id.asserted", tr.CallerID.Asserted, "none"},
		{"caller_id.number_format", tr.CallerID.NumberFormat, "as-is"},
		{"did_from", tr.DIDFrom, "auto"},
		{"sip listen parsed", c.SIP.ListenAddr, netip.MustParseAddrPort("0.0.0.0:65002")},
		{"pbx listen parsed", c.PBX.ListenAddr, netip.MustParseAddrPort("192.168.100.2:5060")},
		{"pbx address parsed", c.PBX.Addr, netip.MustParseAddrPort("192.168.100.20:5060")},
		{"pbx allow", c.PBX.Allow, []string{"192.168.100.20/32"}},
		{"pbx allow parsed", c.PBX.AllowPrefixes, []netip.Prefix{netip.MustParsePrefix("192.168.100.20/32")}},
		{"rtp.port_min", c.RTP.PortMin, 55000},
		{"rtp.port_max", c.RTP.PortMax, 56000},
		{"rtp.lan_port_min", c.RTP.LANPortMin, 40000},
		{"rtp.lan_port_max", c.RTP.LANPortMax, 41000},
		{"rtp.media_timeout", c.RTP.MediaTimeout, Duration(time.Minute)},
		{"rtp.hold_timeout", c.RTP.HoldTimeout, Duration(time.Hour)},
		{"rtp.dscp", *c.RTP.DSCP, 46},
		{"rtp.latching", c.RTP.Latching, "ip"},
		{"rtp.lan_latching", c.RTP.LANLatching, "strict"},
		{"rtp.relatch_after", c.RTP.RelatchAfter, Duration(time.Second)},
		{"rtp.io", c.RTP.IO, DefaultIO()},
		{"trunks[0].rtp_latching", tr.RTPLatching, "ip"},
		{"trunks[0].allow", tr.Allow, []string(nil)},
		{"trunks[0].allow parsed", tr.AllowPrefixes, []netip.Prefix(nil)},
		{"admin.listen", *c.Admin.Listen, "127.0.0.1:9065"},
		{"admin parsed", c.Admin.ListenAddr, netip.MustParseAddrPort("127.0.0.1:9065")},
		{"shutdown.grace", c.Shutdown.Grace, Duration(30 * time.Second)},
		{"nat.portmap", c.NAT.Portmap, PortmapAuto},
		{"nat.port_forward", c.NAT.PortForward, false},
		{"pbx.ring_timeout", c.PBX.RingTimeout, Duration(120 * time.Second)},
		{"pbx.emergency_numbers", c.PBX.EmergencyNumbers, []string{"112", "110", "911", "999"}},
		{"pbx.max_call_rate", *c.PBX.MaxCallRate, 10.0},
		{"max_calls", tr.MaxCalls, 0},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestDefaultPortsAndForms(t *testing.T) {
	tests := []struct {
		name, old, new string
		got            func(*Config) any
		want           any
	}{
		{"sip bare IPv4", "0.0.0.0:65002", "192.168.100.2",
			func(c *Config) any { return c.SIP.ListenAddr }, netip.MustParseAddrPort("192.168.100.2:65002")},
		{"sip bare IPv6", "0.0.0.0:65002", `"2001:db8::2"`,
			func(c *Config) any { return c.SIP.ListenAddr }, netip.MustParseAddrPort("[2001:db8::2]:65002")},
		{"sip bracketed IPv6 with port", "0.0.0.0:65002", `"[2001:db8::2]:5080"`,
			func(c *Config) any { return c.SIP.ListenAddr }, netip.MustParseAddrPort("[2001:db8::2]:5080")},
		{"pbx address without port", "192.168.100.20:5060", "192.168.100.20",
			func(c *Config) any { return c.PBX.Addr }, netip.MustParseAddrPort("192.168.100.20:5060")},
		{"registrar without port keeps 0 for SRV", "sip.example.net:5060", "sip.example.net",
			func(c *Config) any { return c.Trunks[0].RegistrarAddr }, HostPort{"sip.example.net", 0}},
		{"registrar IPv6 with port", "sip.example.net:5060", `"[2001:db8::5]:5062"`,
			func(c *Config) any { return []any{c.Trunks[0].RegistrarAddr, c.Trunks[0].Domain} },
			[]any{HostPort{"2001:db8::5", 5062}, "2001:db8::5"}},
		{"registrar bare IPv6", "sip.example.net:5060", `"2001:db8::5"`,
			func(c *Config) any { return c.Trunks[0].RegistrarAddr }, HostPort{"2001:db8::5", 0}},
		{"registrar IPv4", "sip.example.net:5060", "203.0.113.7",
			func(c *Config) any { return c.Trunks[0].RegistrarAddr }, HostPort{"203.0.113.7", 0}},
		{"allow bare IP and masked CIDR", "  address: 192.168.100.20:5060\n", "  address: 192.168.100.20:5060\n  allow: [10.0.0.1, 192.168.100.20/24]\n",
			func(c *Config) any { return c.PBX.AllowPrefixes },
			[]netip.Prefix{netip.MustParsePrefix("10.0.0.1/32"), netip.MustParsePrefix("192.168.100.0/24")}},
		{"trunk allow bare IP, masked CIDR and IPv6", "    dids:", "    allow: [\"198.51.100.7\", \"198.51.100.3/28\", \"2001:db8:5::/48\"]\n    dids:",
			func(c *Config) any { return c.Trunks[0].AllowPrefixes },
			[]netip.Prefix{netip.MustParsePrefix("198.51.100.7/32"), netip.MustParsePrefix("198.51.100.0/28"),
				netip.MustParsePrefix("2001:db8:5::/48")}},
		{"admin off", "pbx:\n", "admin: {listen: \"off\"}\npbx:\n",
			func(c *Config) any { return c.Admin.ListenAddr.IsValid() }, false},
		{"admin empty", "pbx:\n", "admin: {listen: \"\"}\npbx:\n",
			func(c *Config) any { return c.Admin.ListenAddr.IsValid() }, false},
		{"admin bare IP", "pbx:\n", "admin: {listen: 0.0.0.0}\npbx:\n",
			func(c *Config) any { return c.Admin.ListenAddr }, netip.MustParseAddrPort("0.0.0.0:9065")},
		{"stun empty is fine", `["stun.example.net"]`, "[]",
			func(c *Config) any { return len(c.STUN.ServerAddrs) }, 0},
		{"explicit proxy and domain", "    username:", "    proxy: 192.0.2.1:5070\n    domain: example.net\n    username:",
			func(c *Config) any { return []any{c.Trunks[0].ProxyAddr, c.Trunks[0].Domain} },
			[]any{HostPort{"192.0.2.1", 5070}, "example.net"}},
		{"did prefix", `["+4930123456"]`, `["+4930123456*", "0301234"]`,
			func(c *Config) any { return c.Trunks[0].DIDs }, []string{"+4930123456*", "0301234"}},
		{"trunk inherits rtp.latching", "pbx:\n", "rtp: {latching: any}\npbx:\n",
			func(c *Config) any { return c.Trunks[0].RTPLatching }, "any"},
		{"trunk overrides rtp.latching", "    password: secret\n", "    password: secret\n    rtp_latching: strict\n",
			func(c *Config) any { return []string{c.RTP.Latching, c.Trunks[0].RTPLatching} }, []string{"ip", "strict"}},
		{"caller_id inherits number_format", "    password: secret\n", "    password: secret\n    number_format: national\n    country_code: \"49\"\n",
			func(c *Config) any { return c.Trunks[0].CallerID }, CallerID{FromUser: "account", Asserted: "none", NumberFormat: "national"}},
		{"caller_id set", "    password: secret\n",
			"    password: secret\n    country_code: \"49\"\n    caller_id: {from_user: number, asserted: ppi, number_format: e164-no-plus}\n",
			func(c *Config) any { return []any{c.Trunks[0].NumberFormat, c.Trunks[0].CallerID} },
			[]any{"as-is", CallerID{FromUser: "number", Asserted: "ppi", NumberFormat: "e164-no-plus"}}},
		{"did_from header", "    password: secret\n", "    password: secret\n    did_from: header:P-Called-Party-ID\n",
			func(c *Config) any { return c.Trunks[0].DIDFrom }, "header:P-Called-Party-ID"},
		{"a declared port forward turns portmap off", "pbx:\n", "nat: {port_forward: true}\npbx:\n",
			func(c *Config) any { return []any{c.NAT.PortForward, c.NAT.Portmap} }, []any{true, PortmapOff}},
		{"port forward with portmap asked for", "pbx:\n", "nat: {port_forward: true, portmap: auto}\npbx:\n",
			func(c *Config) any { return c.NAT.Portmap }, PortmapAuto},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseDefaultValidate(edit(t, base, tt.old, tt.new))
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.got(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

const full = `log: {level: debug, format: json}
sip:
  listen: "[2001:db8::2]:65002"
stun:
  servers: ["stun.example.net", "stun.sipgate.net:10000"]
  interval: 15s
trunks:
  - name: provider
    registrar: sip.example.net
    proxy: "[2001:db8::9]:5070"
    domain: example.net
    username: "4930123456"
    auth_username: "auth4930123456"
    password: "s3cr$t"
    expires: 600s
    register: false
    keepalive: options
    dids: ["+4930123456", "+4930987650*"]
    outbound_prefixes: ["0049", "+49"]
    number_format: national
    country_code: "49"
    rtp_latching: any
    caller_id: {from_user: number, asserted: pai, number_format: e164}
    did_from: to
  - name: backup_2
    registrar: 203.0.113.5:5080
    username: backup
    password_file: ""
    password: other
pbx:
  listen: 192.168.100.2:5060
  address: 192.168.100.20
  allow: [192.168.100.0/24, "2001:db8::20"]
  username: pbx
  password: pbxpass
rtp:
  port_min: 30000
  port_max: 30999
  lan_port_min: 31000
  lan_port_max: 31999
  media_timeout: 2m
  hold_timeout: 2h
  dscp: 0
  latching: strict
  lan_latching: ip
  relatch_after: 2s
  io: epoll
admin: {listen: "off"}
shutdown: {grace: 1m30s}
`

func TestRoundTrip(t *testing.T) {
	c1, err := parseDefaultValidate(full)
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(c1)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := parseDefaultValidate(string(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Compare as text: a nil list marshals as [] and comes back empty,
	// which DeepEqual would count as a change.
	out2, err := yaml.Marshal(c2)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(out2) {
		t.Errorf("round trip changed the config:\n%s\n---\n%s", out, out2)
	}
	for _, s := range []string{"interval: 15s", "expires: 10m0s", "register: false", "dscp: 0", `listen: "off"`, "grace: 1m30s", `password: s3cr$t`} {
		if !strings.Contains(string(out), s) {
			t.Errorf("marshalled config lacks %q:\n%s", s, out)
		}
	}
	if !reflect.DeepEqual(c1.PBX.AllowPrefixes, c2.PBX.AllowPrefixes) || c1.SIP.ListenAddr != c2.SIP.ListenAddr {
		t.Error("parsed fields differ after round trip")
	}
	if got := c1.Trunks[0].ProxyAddr; got != (HostPort{"2001:db8::9", 5070}) {
		t.Errorf("proxy = %v", got)
	}
	if got := c1.Trunks[0].ProxyAddr.String(); got != "[2001:db8::9]:5070" {
		t.Errorf("proxy string = %q", got)
	}
	if *c1.RTP.DSCP != 0 || *c1.Trunks[0].Register || c1.Admin.ListenAddr.IsValid() {
		t.Error("explicit zero values lost")
	}
}

func TestValidateIsRepeatable(t *testing.T) {
	c, err := parseDefaultValidate(full)
	if err != nil {
		t.Fatal(err)
	}
	before := *c
	before.STUN.ServerAddrs = append([]HostPort(nil), c.STUN.ServerAddrs...)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before.STUN.ServerAddrs, c.STUN.ServerAddrs) {
		t.Errorf("second Validate changed parsed fields: %v vs %v", before.STUN.ServerAddrs, c.STUN.ServerAddrs)
	}
}

func TestZeroConfigDoesNotPanic(t *testing.T) {
	var c Config
	if err := c.Validate(); err == nil {
		t.Error("zero config validated")
	}
	c.SetDefaults()
	c.Trunks = []Trunk{{}}
	c.SetDefaults()
	err := c.Validate()
	// No lines without a file: the renderer must leave the part out.
	for _, p := range Problems(err) {
		if strings.HasPrefix(p, "line ") {
			t.Errorf("problem has a line without a file: %q", p)
		}
	}
}

func TestFieldErrorRendering(t *testing.T) {
	tests := []struct {
		e    FieldError
		want string
	}{
		{FieldError{File: "lm.yaml", Line: 7, Field: "trunks[0].registrar", Problem: "missing", Fix: "set it"}, "lm.yaml: line 7: trunks[0].registrar: missing: set it"},
		{FieldError{Field: "log.level", Problem: `"x" is not allowed`, Fix: "use info"}, `log.level: "x" is not allowed: use info`},
		{FieldError{File: "lm.yaml", Problem: "the file is empty"}, "lm.yaml: the file is empty"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}
