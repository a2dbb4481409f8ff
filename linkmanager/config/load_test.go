package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeFS serves files from a map, so Load tests touch no disk.
func fakeFS(files map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		s, ok := files[name]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return []byte(s), nil
	}
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestLoadPasswordFromEnv(t *testing.T) {
	l := Loader{
		Getenv: env(map[string]string{"TRUNK_PW": "from-env", "PBX_PW": "pbx-env"}),
		ReadFile: fakeFS(map[string]string{"/etc/lm.yaml": edit(t, base,
			"password: secret", `password: "${TRUNK_PW}"`,
			"  address: 192.168.100.20:5060\n", "  address: 192.168.100.20:5060\n  username: pbx\n  password: \"${PBX_PW}\"\n")}),
	}
	c, err := l.Load("/etc/lm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Trunks[0].Password; got != "from-env" {
		t.Errorf("trunk password = %q", got)
	}
	if got := c.PBX.Password; got != "pbx-env" {
		t.Errorf("pbx password = %q", got)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("loaded config no longer validates: %v", err)
	}
}

func TestLoadLiteralDollarIsKept(t *testing.T) {
	l := Loader{
		Getenv:   env(nil),
		ReadFile: fakeFS(map[string]string{"lm.yaml": edit(t, base, "password: secret", `password: "pa$${word}"`)}),
	}
	c, err := l.Load("lm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Trunks[0].Password; got != "pa$${word}" {
		t.Errorf("password = %q, want it untouched", got)
	}
}

func TestLoadPasswordEnvUnset(t *testing.T) {
	l := Loader{
		Getenv: env(nil),
		ReadFile: fakeFS(map[string]string{"configs/lm.yaml": edit(t, base,
			"password: secret", `password: "${TRUNK_PW}"`,
			"  address: 192.168.100.20:5060\n", "  address: 192.168.100.20:5060\n  username: pbx\n  password: \"${PBX_PW}\"\n")}),
	}
	_, err := l.Load("configs/lm.yaml")
	if !errors.Is(err, ErrSecret) {
		t.Errorf("errors.Is(err, ErrSecret) = false for %v", err)
	}
	assertProblems(t, err, 2,
		"configs/lm.yaml: line 9: trunks[0].password: environment variable TRUNK_PW is not set: set TRUNK_PW for linkmanager",
		"configs/lm.yaml: line 15: pbx.password: environment variable PBX_PW is not set")
}

func TestLoadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("trunk.pw", "  spaces kept  \n")
	write("crlf.pw", "windows\r\n")
	write("empty.pw", "\n")
	write("lm.yaml", edit(t, base, "    password: secret\n", "    password_file: trunk.pw\n"))
	write("crlf.yaml", edit(t, base, "    password: secret\n", "    password_file: "+filepath.Join(dir, "crlf.pw")+"\n"))
	write("empty.yaml", edit(t, base, "    password: secret\n", "    password_file: empty.pw\n"))
	write("missing.yaml", edit(t, base, "    password: secret\n", "    password_file: nope.pw\n"))

	tests := []struct {
		file, want, problem string
	}{
		{"lm.yaml", "  spaces kept  ", ""}, // relative to the config file, not the working directory
		{"crlf.yaml", "windows", ""},
		{"empty.yaml", "", `line 9: trunks[0].password_file: "` + filepath.Join(dir, "empty.pw") + `" is empty: write the password into it`},
		{"missing.yaml", "", `line 9: trunks[0].password_file: cannot read "` + filepath.Join(dir, "nope.pw") + `": no such file or directory: make it readable`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join(dir, tt.file)
			c, err := Loader{Getenv: env(nil)}.Load(path)
			if tt.problem != "" {
				assertProblems(t, err, 1, path+": "+tt.problem)
				if !errors.Is(err, ErrSecret) {
					t.Errorf("errors.Is(err, ErrSecret) = false")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tr := c.Trunks[0]
			if tr.Password != tt.want || tr.PasswordFile != "" {
				t.Errorf("password = %q, password_file = %q; want %q and empty", tr.Password, tr.PasswordFile, tt.want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Loader{ReadFile: fakeFS(nil)}.Load("/etc/linkmanager.yaml")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(err, fs.ErrNotExist) = false for %v", err)
	}
	assertProblems(t, err, 1, "/etc/linkmanager.yaml: cannot read the file: file does not exist: check the path")
}

func TestLoadProblemsOneLineEach(t *testing.T) {
	l := Loader{
		Getenv: env(nil),
		ReadFile: fakeFS(map[string]string{
			"bad.yaml": edit(t, base,
				"sip.example.net:5060", "sip.example.net:50x0",
				`["+4930123456"]`, `["+49 30"]`,
				"pbx:\n", "rtp: {dscp: 99}\npbx:\n"),
			"typo.yaml": edit(t, base, "registrar:", "registar:", "listen: 0.0.0.0:65002", "listn: 0.0.0.0:65002"),
		}),
	}
	_, err := l.Load("bad.yaml")
	want := []string{
		`bad.yaml: line 7: trunks[0].registrar: invalid port "50x0" in "sip.example.net:50x0": use host or host:port, e.g. sip.example.net:5060`,
		`bad.yaml: line 10: trunks[0].dids[0]: "+49 30" is not a DID: use digits with an optional leading + and optional trailing * for a block, e.g. "+4930123456" or "+4930123456*"`,
		`bad.yaml: line 11: rtp.dscp: 99 is outside 0..63: use 46 (EF, usual for voice) or 0 to leave packets unmarked`,
	}
	if got := Problems(err); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	_, err = l.Load("typo.yaml")
	if !errors.Is(err, ErrParse) {
		t.Errorf("errors.Is(err, ErrParse) = false for %v", err)
	}
	assertProblems(t, err, 2,
		`typo.yaml: line 2: sip: unknown key "listn": did you mean "listen"?`,
		`typo.yaml: line 7: trunks[0]: unknown key "registar": did you mean "registrar"?`)

	if Problems(nil) != nil {
		t.Error("Problems(nil) should be nil")
	}
}

// A bad trunks[].allow entry names the file, the line, the field and the
// fix; a single CIDR written without the list brackets is a parse error
// that says how to write it.
func TestLoadBadTrunkAllow(t *testing.T) {
	l := Loader{Getenv: env(nil), ReadFile: fakeFS(map[string]string{
		"lm.yaml":     edit(t, base, "    dids:", "    allow: [\"198.51.100.0/28\", \"198.51.100.x/28\"]\n    dids:"),
		"scalar.yaml": edit(t, base, "    dids:", "    allow: 198.51.100.0/28\n    dids:"),
	})}
	_, err := l.Load("lm.yaml")
	assertProblems(t, err, 1, `lm.yaml: line 10: trunks[0].allow[1]: "198.51.100.x/28" is not an IP or CIDR: use the provider's SBC addresses, e.g. "198.51.100.0/28" or "198.51.100.7"`)
	_, err = l.Load("scalar.yaml")
	if !errors.Is(err, ErrParse) {
		t.Errorf("errors.Is(err, ErrParse) = false for %v", err)
	}
	assertProblems(t, err, 1, `scalar.yaml: line 10: trunks[0].allow: want a list, got "198.51.100.0/28": write it as a list: ["198.51.100.0/28"]`)
}

// The shipped example must always load.
func TestExampleConfig(t *testing.T) {
	path := filepath.Join("..", "..", "configs", "linkmanager.yaml")
	c, err := Loader{Getenv: env(map[string]string{"LINKMANAGER_TRUNK_PASSWORD": "example-secret"})}.Load(path)
	if err != nil {
		t.Fatalf("%s does not load:\n%s", path, strings.Join(Problems(err), "\n"))
	}
	if got := c.Trunks[0].Password; got != "example-secret" {
		t.Errorf("password = %q, want it from the environment", got)
	}

	// Without the variable the example must fail, and say which one.
	_, err = Loader{Getenv: env(nil)}.Load(path)
	assertProblems(t, err, 1, "trunks[0].password: environment variable LINKMANAGER_TRUNK_PASSWORD is not set")
}
