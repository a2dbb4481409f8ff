package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings, each expected in some problem line
		n    int      // number of problems; 0 means 1
	}{
		{
			name: "unknown top-level key",
			yaml: "sipp:\n  listen: 0.0.0.0\n",
			want: []string{`line 1: unknown key "sipp": did you mean "sip"?`},
		},
		{
			name: "unknown key in section",
			yaml: "stun:\n  servers: []\n  intervall: 10s\n",
			want: []string{`line 3: stun: unknown key "intervall": did you mean "interval"?`},
		},
		{
			name: "unknown key in trunk",
			yaml: "log:\n  level: info\ntrunks:\n  - name: a\n    username: u\n    password: p\n    registar: sip.example.net\n",
			want: []string{`line 7: trunks[0]: unknown key "registar": did you mean "registrar"?`},
		},
		{
			name: "unknown key in second trunk, flow style",
			yaml: "trunks:\n  - {name: a}\n  - {name: b, pasword: x}\n",
			want: []string{`line 3: trunks[1]: unknown key "pasword": did you mean "password"?`},
		},
		{
			name: "unknown key in inline mapping",
			yaml: "log: {levle: debug}\n",
			want: []string{`line 1: log: unknown key "levle": did you mean "level"?`},
		},
		{
			name: "dash instead of underscore",
			yaml: "rtp:\n  port-min: 55000\n",
			want: []string{`rtp: unknown key "port-min": did you mean "port_min"?`},
		},
		{
			name: "unknown key without close match lists known keys",
			yaml: "admin:\n  metrics: true\n",
			want: []string{`line 2: admin: unknown key "metrics": remove it; known keys here: listen`},
		},
		{
			name: "key at the wrong level",
			yaml: "sip:\n  username: x\n",
			want: []string{`sip: unknown key "username"`, "known keys here: listen"},
		},
		{
			name: "several unknown keys reported together",
			yaml: "sipp: {}\nstun:\n  intervall: 10s\nrtp:\n  dscpp: 1\n",
			want: []string{`unknown key "sipp"`, `unknown key "intervall"`, `unknown key "dscpp"`},
			n:    3,
		},
		{
			name: "duplicate key",
			yaml: "log:\n  level: info\n  level: debug\n",
			want: []string{"line 3: log.level: duplicate key, first set on line 2: keep only one of them"},
		},
		{
			name: "duration without unit",
			yaml: "stun:\n  interval: 10\n",
			want: []string{"line 2: stun.interval: 10 has no unit: write 10s"},
		},
		{
			name: "float duration",
			yaml: "shutdown:\n  grace: 1.5\n",
			want: []string{"shutdown.grace: 1.5 has no unit"},
		},
		{
			name: "quoted number duration",
			yaml: "trunks:\n  - expires: \"300\"\n",
			want: []string{`line 2: trunks[0].expires: "300" is not a duration: write a number with a unit`},
		},
		{
			name: "unknown duration unit",
			yaml: "rtp:\n  media_timeout: 10sec\n",
			want: []string{`rtp.media_timeout: "10sec" is not a duration`},
		},
		{
			name: "duration as list",
			yaml: "rtp:\n  hold_timeout: [1h]\n",
			want: []string{"line 2: rtp.hold_timeout: want a single value, got a list"},
		},
		{
			name: "int field with text",
			yaml: "rtp:\n  port_min: lots\n",
			want: []string{`line 2: rtp.port_min: "lots" is not a whole number: write digits only`},
		},
		{
			name: "int field with quotes",
			yaml: "rtp:\n  dscp: \"46\"\n",
			want: []string{`rtp.dscp: "46" is not a whole number: remove the quotes`},
		},
		{
			name: "bool field",
			yaml: "trunks:\n  - register: maybe\n",
			want: []string{`trunks[0].register: "maybe" is not true or false: write true or false`},
		},
		{
			name: "scalar where list expected",
			yaml: "stun:\n  servers: stun.example.net\n",
			want: []string{`line 2: stun.servers: want a list, got "stun.example.net": write it as a list: ["stun.example.net"]`},
		},
		{
			name: "section where list expected",
			yaml: "trunks:\n  name: a\n",
			want: []string{"trunks: want a list, got a section of keys"},
		},
		{
			name: "scalar where section expected",
			yaml: "sip: 0.0.0.0:65002\n",
			want: []string{`line 1: sip: want indented key: value lines, got "0.0.0.0:65002"`},
		},
		{
			name: "list where string expected",
			yaml: "trunks:\n  - registrar: [a, b]\n",
			want: []string{"trunks[0].registrar: want a single value, got a list: write one value after the key"},
		},
		{
			name: "tab indentation",
			yaml: "log:\n\tlevel: info\n",
			want: []string{"line 2:", "not tabs"},
		},
		{
			name: "broken syntax",
			yaml: "log:\n  level: info\n   format: json\n",
			want: []string{"line 3:", "check the indentation"},
		},
		{
			name: "unknown key via merge",
			yaml: "base: &b {foo: 1}\n",
			want: []string{`line 1: unknown key "base"`},
		},
		{
			name: "unknown key inside a merge",
			yaml: "<<: {foo: 1}\n",
			want: []string{`line 1: unknown key "foo": remove it from the merged section`},
		},
		{
			name: "empty file",
			yaml: "# nothing here\n",
			want: []string{"the file is empty: start from configs/linkmanager.yaml"},
		},
		{
			name: "top level is a list",
			yaml: "- a\n- b\n",
			want: []string{"want indented key: value lines, got a list"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", c)
			}
			if !errors.Is(err, ErrParse) {
				t.Errorf("errors.Is(err, ErrParse) = false for %v", err)
			}
			assertProblems(t, err, tt.n, tt.want...)
		})
	}
}

// assertProblems checks the number of problem lines (n 0 means 1) and that
// each want substring is in one of them.
func assertProblems(t *testing.T, err error, n int, want ...string) {
	t.Helper()
	lines := Problems(err)
	if n == 0 {
		n = 1
	}
	if len(lines) != n {
		t.Errorf("got %d problems, want %d:\n%s", len(lines), n, strings.Join(lines, "\n"))
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || strings.Contains(l, w)
		}
		if !found {
			t.Errorf("no problem contains %q; got:\n%s", w, strings.Join(lines, "\n"))
		}
	}
}

func TestParseAcceptsYAMLForms(t *testing.T) {
	c, err := Parse([]byte(`
log: {level: debug, format: json}
stun:
  servers:
  interval: 1m30s
trunks:
  - name: a
    username: 030123456   # unquoted: kept as written, leading zero intact
    dids: [+4930123456, 0301234*]
    register: false
rtp:
  dscp: 0
admin:
  listen: ""
`))
	if err != nil {
		t.Fatal(err)
	}
	tr := c.Trunks[0]
	if tr.Username != "030123456" {
		t.Errorf("username = %q, want leading zero kept", tr.Username)
	}
	if !reflect.DeepEqual(tr.DIDs, []string{"+4930123456", "0301234*"}) {
		t.Errorf("dids = %q", tr.DIDs)
	}
	if tr.Register == nil || *tr.Register {
		t.Errorf("register = %v, want explicit false", tr.Register)
	}
	if c.STUN.Interval != Duration(90*time.Second) {
		t.Errorf("interval = %v", c.STUN.Interval)
	}
	if c.RTP.DSCP == nil || *c.RTP.DSCP != 0 {
		t.Errorf("dscp = %v, want explicit 0", c.RTP.DSCP)
	}
	if c.Admin.Listen == nil || *c.Admin.Listen != "" {
		t.Errorf("admin.listen = %v, want explicit empty", c.Admin.Listen)
	}
	c.SetDefaults()
	if *c.RTP.DSCP != 0 || *c.Admin.Listen != "" || *tr.Register {
		t.Error("SetDefaults overwrote explicit zero values")
	}
}

func TestDurationMarshal(t *testing.T) {
	out, err := yaml.Marshal(struct{ D Duration }{Duration(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "d: 1m30s" {
		t.Errorf("got %q", got)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"name", "registrar", "proxy", "password", "password_file"}
	tests := map[string]string{
		"registar":      `did you mean "registrar"?`,
		"Registrar":     `did you mean "registrar"?`,
		"password-file": `did you mean "password_file"?`,
		"passwd":        `did you mean "password"?`,
		"xyz":           "remove it; known keys here: name, registrar, proxy, password, password_file",
		"n":             "remove it",
	}
	for key, want := range tests {
		if got := suggest(key, known); !strings.HasPrefix(got, want) {
			t.Errorf("suggest(%q) = %q, want %q", key, got, want)
		}
	}
}
