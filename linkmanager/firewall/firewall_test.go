package firewall

import (
	"errors"
	"flag"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fullConfig has two STUN servers (a sipgate-style name on port 10000 and
// an IP literal on the default port), two trunks (one registrar without a
// port, so SRV; one with an outbound proxy) and a custom RTP range.
const fullConfig = `sip: {listen: 192.168.100.2:65002}
stun:
  servers: ["stun.sipgate.net:10000", "198.51.100.60"]
trunks:
  - name: sipgate
    registrar: sipconnect.sipgate.de
    username: "1234567e0"
    password: secret
    dids: ["+4930123456"]
  - name: office
    registrar: 198.51.100.50
    proxy: proxy.example.net:5062
    domain: office.example.net
    username: "4930999"
    password: secret
    dids: ["+4930999*"]
pbx: {listen: 192.168.100.2:5060, address: 192.168.100.20:5060}
rtp: {port_min: 30000, port_max: 30999}
`

// labConfig is the e2e lab's daemon (IP literals only).
const labConfig = `sip: {listen: 192.168.100.2:65002}
stun: {servers: ["198.51.100.60:3478", "198.51.100.61:3478"], interval: 10s}
trunks:
  - name: provider
    registrar: 198.51.100.50:5060
    domain: sip.provider.test
    username: "4930123456"
    password: "lab-secret"
    dids: ["4930123456", "+4930123456"]
pbx: {listen: 192.168.100.2:5060, address: 192.168.100.20:5060, allow: ["192.168.100.20/32"]}
rtp: {port_min: 55000, port_max: 56000}
`

// fakeDNS is what cmd would have looked up for fullConfig.
func fakeDNS() (map[string]Lookup, map[string]SRVLookup) {
	a := netip.MustParseAddr
	return map[string]Lookup{
			"stun.sipgate.net":      {Addrs: []netip.Addr{a("203.0.113.10")}},
			"sipconnect.sipgate.de": {Addrs: []netip.Addr{a("203.0.113.21"), a("203.0.113.20"), a("2001:db8::1")}},
			"sip1.example.de":       {Addrs: []netip.Addr{a("203.0.113.30")}},
			"proxy.example.net":     {Addrs: []netip.Addr{a("203.0.113.40")}},
		}, map[string]SRVLookup{
			"sipconnect.sipgate.de": {Targets: []SRVTarget{{Host: "sip1.example.de.", Port: 5070}, {Host: "sipconnect.sipgate.de", Port: 5060}}},
		}
}

// load runs the real loader (defaults, validation) on yaml.
func load(t *testing.T, yaml string) *config.Config {
	t.Helper()
	l := config.Loader{
		Getenv: func(string) string { return "" },
		ReadFile: func(name string) ([]byte, error) {
			if name == "/etc/linkmanager/linkmanager.yaml" {
				return []byte(yaml), nil
			}
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		},
	}
	c, err := l.Load("/etc/linkmanager/linkmanager.yaml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return c
}

func build(t *testing.T, yaml string, in Input) *Ruleset {
	t.Helper()
	if in.Source == "" {
		in.Source = "/etc/linkmanager/linkmanager.yaml"
	}
	rs, err := Build(load(t, yaml), in)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func fullInput() Input {
	h, s := fakeDNS()
	return Input{Hosts: h, SRV: s}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it); got:\n%s", name, got)
	}
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		in   Input
	}{
		{"full", fullConfig, fullInput()},
		{"lab", labConfig, Input{Policy: PolicyDrop}},
	} {
		rs := build(t, tc.yaml, tc.in)
		if ps := rs.Problems(); len(ps) > 0 {
			t.Errorf("%s: problems %q", tc.name, ps)
		}
		for _, f := range Formats {
			out, err := rs.Render(f)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+"."+f, out)
		}
	}
}

func TestNames(t *testing.T) {
	got := Names(load(t, fullConfig))
	want := []Name{{"stun.sipgate.net", false}, {"sipconnect.sipgate.de", true}, {"proxy.example.net", false}}
	if !slices.Equal(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	if got := Names(load(t, labConfig)); len(got) != 0 {
		t.Errorf("lab config (IP literals only): Names = %v, want none", got)
	}
}

// lines reports which of want are missing as whole lines (tabs trimmed).
func missingLines(out string, want ...string) []string {
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		have[strings.TrimSpace(l)] = true
	}
	var miss []string
	for _, w := range want {
		if !have[w] {
			miss = append(miss, w)
		}
	}
	return miss
}

func TestRules(t *testing.T) {
	withDSCP := func(v string) string {
		return strings.Replace(labConfig, "rtp: {port_min: 55000, port_max: 56000}", "rtp: {port_min: 55000, port_max: 56000, dscp: "+v+"}", 1)
	}
	wildcard := strings.Replace(labConfig, "sip: {listen: 192.168.100.2:65002}", "sip: {listen: 0.0.0.0:65002}", 1)
	sharedRegistrar := strings.Replace(fullConfig, "registrar: 198.51.100.50\n    proxy: proxy.example.net:5062", "registrar: sipconnect.sipgate.de\n    proxy: \"\"", 1)
	noSRV := fullInput()
	noSRV.SRV = map[string]SRVLookup{"sipconnect.sipgate.de": {}}
	srvFail := fullInput()
	srvFail.SRV = map[string]SRVLookup{"sipconnect.sipgate.de": {Err: "server misbehaving"}}

	cases := []struct {
		name     string
		yaml     string
		in       Input
		format   string
		want     []string // whole lines
		absent   []string // substrings
		problems int
	}{
		{
			name: "lab nftables", yaml: labConfig, format: "nftables",
			want: []string{
				"table inet linkmanager",
				"delete table inet linkmanager",
				"type filter hook forward priority filter; policy accept;",
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.60 udp dport 3478 accept comment "1 STUN out to 198.51.100.60:3478"`,
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.61 udp dport 3478 accept comment "1 STUN out to 198.51.100.61:3478"`,
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.50 udp dport 5060 accept comment "1 SIP out to 198.51.100.50:5060"`,
				`ip saddr 198.51.100.50 ip daddr 192.168.100.2 udp dport 65002 accept comment "2 SIP answers and requests from 198.51.100.50:5060"`,
				`ip saddr 198.51.100.60 ip daddr 192.168.100.2 udp dport 65002 accept comment "2 STUN answers from 198.51.100.60:3478"`,
				`ip saddr 192.168.100.2 udp sport 55000-56000 accept comment "3 RTP out to anywhere"`,
				`ip daddr 192.168.100.2 udp dport 55000-56000 accept comment "4 RTP in from anywhere"`,
				"type filter hook forward priority mangle; policy accept;",
				`ip saddr 192.168.100.2 udp sport 55000-56000 ip dscp set ef comment "RTP out: DSCP 46 (EF)"`,
				`ip daddr 192.168.100.2 udp dport 55000-56000 ip dscp set ef comment "RTP in: DSCP 46 (EF)"`,
			},
		},
		{
			name: "lab iptables", yaml: labConfig, format: "iptables",
			want: []string{
				"iptables -N LINKMANAGER 2>/dev/null || iptables -F LINKMANAGER",
				"iptables -C FORWARD -j LINKMANAGER 2>/dev/null || iptables -I FORWARD 1 -j LINKMANAGER",
				"iptables -A LINKMANAGER -p udp -s 192.168.100.2 --sport 65002 -d 198.51.100.60 --dport 3478 -m comment --comment '1 STUN out to 198.51.100.60:3478' -j ACCEPT",
				"iptables -A LINKMANAGER -p udp -s 198.51.100.50 -d 192.168.100.2 --dport 65002 -m comment --comment '2 SIP answers and requests from 198.51.100.50:5060' -j ACCEPT",
				"iptables -A LINKMANAGER -p udp -s 192.168.100.2 --sport 55000:56000 -m comment --comment '3 RTP out to anywhere' -j ACCEPT",
				"iptables -A LINKMANAGER -p udp -d 192.168.100.2 --dport 55000:56000 -m comment --comment '4 RTP in from anywhere' -j ACCEPT",
				"iptables -A LINKMANAGER -p udp -d 192.168.100.2 --dport 65002 -m comment --comment 'SIP/STUN in from a host not listed above' -j DROP",
				"iptables -t mangle -A LINKMANAGER_QOS -p udp -s 192.168.100.2 --sport 55000:56000 -m comment --comment 'RTP out: DSCP 46 (EF)' -j DSCP --set-dscp-class EF",
			},
			absent: []string{"policy drop: not allowed above"},
		},
		{
			name: "policy drop", yaml: labConfig, in: Input{Policy: PolicyDrop}, format: "iptables",
			want: []string{"iptables -A LINKMANAGER -m comment --comment 'policy drop: not allowed above' -j DROP"},
		},
		{
			name: "address override", yaml: wildcard, in: Input{Address: netip.MustParseAddr("10.1.2.3")}, format: "nftables",
			want:   []string{`ip saddr 10.1.2.3 udp sport 55000-56000 accept comment "3 RTP out to anywhere"`, "# Daemon: 10.1.2.3 (--address; sip.listen is 0.0.0.0:65002)."},
			absent: []string{"192.168.100.2", "LAN_IP"},
		},
		{
			name: "wildcard nftables placeholder", yaml: wildcard, format: "nftables", problems: 1,
			want: []string{"# define LAN_IP = 192.168.1.10", `ip saddr $LAN_IP udp sport 55000-56000 accept comment "3 RTP out to anywhere"`},
		},
		{
			name: "wildcard iptables placeholder", yaml: wildcard, format: "iptables", problems: 1,
			want: []string{`LAN_IP="${LAN_IP:-}"`, `: "${LAN_IP:?set LAN_IP to the daemon host's LAN IP}"`,
				`iptables -A LINKMANAGER -p udp -s "$LAN_IP" --sport 55000:56000 -m comment --comment '3 RTP out to anywhere' -j ACCEPT`},
		},
		{
			name: "wildcard text", yaml: wildcard, format: "text", problems: 1,
			want: []string{"Daemon (LinkManager) LAN address: <daemon LAN IP>"},
		},
		{
			name: "unresolved names", yaml: fullConfig, format: "nftables", problems: 3,
			want: []string{
				"# UNRESOLVED stun.sipgate.net:10000 (not looked up): no rule; add one with its address by hand",
				"# UNRESOLVED sipconnect.sipgate.de:5060 (not looked up): no rule; add one with its address by hand",
				"# UNRESOLVED stun.sipgate.net:10000: no rule for its answers",
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.60 udp dport 3478 accept comment "1 STUN out to 198.51.100.60:3478"`,
			},
		},
		{
			name: "srv with a port of its own", yaml: fullConfig, in: fullInput(), format: "nftables",
			want: []string{
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr { 203.0.113.20, 203.0.113.21 } udp dport 5060 accept comment "1 SIP out to sipconnect.sipgate.de:5060"`,
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 203.0.113.30 udp dport 5070 accept comment "1 SIP out to sip1.example.de:5070"`,
				`ip saddr { 203.0.113.20, 203.0.113.21, 203.0.113.30 } ip daddr 192.168.100.2 udp dport 65002 accept comment "2 SIP answers and requests from sipconnect.sipgate.de"`,
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 203.0.113.10 udp dport 10000 accept comment "1 STUN out to stun.sipgate.net:10000"`,
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 203.0.113.40 udp dport 5062 accept comment "1 SIP out to proxy.example.net:5062"`,
				`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.50 udp dport 5060 accept comment "1 SIP out to 198.51.100.50:5060"`,
				`ip saddr 192.168.100.2 udp sport 30000-30999 accept comment "3 RTP out to anywhere"`,
			},
			absent: []string{"2001:db8::1"},
		},
		{
			name: "no srv record", yaml: fullConfig, in: noSRV, format: "text",
			want:   []string{"- sipconnect.sipgate.de: no port in the config and no SRV"},
			absent: []string{"sip1.example.de", "5070"},
		},
		{
			name: "srv lookup failed", yaml: fullConfig, in: srvFail, format: "nftables",
			want:   []string{`ip saddr 192.168.100.2 udp sport 65002 ip daddr { 203.0.113.20, 203.0.113.21 } udp dport 5060 accept comment "1 SIP out to sipconnect.sipgate.de:5060"`},
			absent: []string{"sip1.example.de"},
		},
		{
			name: "shared registrar is one remote", yaml: sharedRegistrar, in: fullInput(), format: "nftables",
			want:   []string{"# SIP sipconnect.sipgate.de (trunk sipgate: registrar; trunk office: registrar) [no port: fallback when _sip._udp.sipconnect.sipgate.de has no SRV record]; sipconnect.sipgate.de resolved to 203.0.113.20, 203.0.113.21"},
			absent: []string{"proxy.example.net", "198.51.100.50"},
		},
		{
			name: "dscp af41", yaml: withDSCP("34"), format: "iptables",
			want: []string{"iptables -t mangle -A LINKMANAGER_QOS -p udp -d 192.168.100.2 --dport 55000:56000 -m comment --comment 'RTP in: DSCP 34 (AF41)' -j DSCP --set-dscp-class AF41"},
		},
		{
			name: "dscp without a class name", yaml: withDSCP("44"), format: "nftables",
			want: []string{`ip saddr 192.168.100.2 udp sport 55000-56000 ip dscp set 44 comment "RTP out: DSCP 44"`},
		},
		{
			name: "dscp 0 nftables", yaml: withDSCP("0"), format: "nftables",
			want: []string{"# rtp.dscp is 0: no DSCP marking."}, absent: []string{"chain qos", "dscp set"},
		},
		{
			name: "dscp 0 iptables", yaml: withDSCP("0"), format: "iptables",
			want: []string{"# rtp.dscp is 0: no DSCP marking."}, absent: []string{"mangle"},
		},
		{
			name: "text", yaml: fullConfig, in: fullInput(), format: "text",
			want: []string{
				"Daemon (LinkManager) LAN address: 192.168.100.2 (sip.listen 192.168.100.2:65002)",
				"1     out        192.168.100.2:65002        stun.sipgate.net:10000      STUN (stun.servers[0])",
				"3     out        192.168.100.2:30000-30999  any:any                     RTP (voice) out",
				"4     in         any:any                    192.168.100.2:30000-30999   RTP (voice) in",
				"UDP       30000-30999  192.168.100.2:30000-30999  any",
				"- stun.sipgate.net resolved to 203.0.113.10 when this was generated.",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := build(t, tc.yaml, tc.in)
			out, err := rs.Render(tc.format)
			if err != nil {
				t.Fatal(err)
			}
			bad := false
			for _, m := range missingLines(out, tc.want...) {
				// text lines are checked as prefixes: the purpose column may go on
				if tc.format == "text" && strings.Contains(out, m) {
					continue
				}
				t.Errorf("missing line:\n%s", m)
				bad = true
			}
			for _, a := range tc.absent {
				if strings.Contains(out, a) {
					t.Errorf("output contains %q", a)
					bad = true
				}
			}
			if got := len(rs.Problems()); got != tc.problems {
				t.Errorf("%d problems, want %d: %q", got, tc.problems, rs.Problems())
			}
			if bad {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	c := load(t, labConfig)
	for _, tc := range []struct {
		name string
		in   Input
		want string
	}{
		{"ipv6 address", Input{Address: netip.MustParseAddr("2001:db8::2")}, "only IPv4"},
		{"unspecified address", Input{Address: netip.MustParseAddr("0.0.0.0")}, "LAN IP"},
		{"bad policy", Input{Policy: "reject"}, "policy"},
	} {
		if _, err := Build(c, tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	rs, err := Build(c, Input{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Render("pf"); !errors.Is(err, ErrFormat) {
		t.Errorf("Render(pf): %v, want ErrFormat", err)
	}
	if out, err := rs.Render("nft"); err != nil || out != rs.NFTables() {
		t.Errorf("Render(nft) is not the nftables output: %v", err)
	}
}

func TestDSCPNames(t *testing.T) {
	for v, want := range map[int]string{46: "ef", 34: "af41", 10: "af11", 38: "af43", 26: "af31", 8: "cs1", 48: "cs6", 44: "", 63: "", 1: ""} {
		if got := dscpName(v); got != want {
			t.Errorf("dscpName(%d) = %q, want %q", v, got, want)
		}
	}
}

// Every rule comment fits nft's 128-byte limit and the header names the
// config file.
func TestCommentsShort(t *testing.T) {
	long := strings.Replace(fullConfig, "stun.sipgate.net:10000", strings.Repeat("a", 60)+"."+strings.Repeat("b", 60)+".example:10000", 1)
	rs := build(t, long, Input{})
	for _, l := range strings.Split(rs.NFTables(), "\n") {
		if i := strings.Index(l, `comment "`); i >= 0 && len(l)-i-len(`comment ""`) > 128 {
			t.Errorf("comment over 128 bytes: %s", l)
		}
	}
	if !strings.Contains(rs.IPTables(), "from /etc/linkmanager/linkmanager.yaml.") {
		t.Error("the header does not name the config file")
	}
}
