package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Loader runs Parse, SetDefaults and Validate on a file and resolves
// passwords. Its hooks exist so tests need neither real files nor a real
// environment.
type Loader struct {
	Getenv   func(string) string          // looks up "${VAR}" passwords; nil means os.Getenv
	ReadFile func(string) ([]byte, error) // reads the config and password files; nil means os.ReadFile
}

// Load reads the config file at path with the real environment and file
// system. See Loader.Load.
func Load(path string) (*Config, error) { return Loader{}.Load(path) }

// Load reads path and returns a Config with defaults applied, parsed fields
// filled and passwords resolved: Trunk.Password and PBX.Password hold the
// secret, and Trunk.PasswordFile is cleared. On failure it returns every
// problem found, each *FieldError prefixed with path.
func (l Loader) Load(path string) (*Config, error) {
	getenv, readFile := l.Getenv, l.ReadFile
	if getenv == nil {
		getenv = os.Getenv
	}
	if readFile == nil {
		readFile = os.ReadFile
	}
	data, err := readFile(path)
	if err != nil {
		return nil, &FieldError{File: path, Problem: "cannot read the file: " + reason(err), Fix: "check the path and that linkmanager may read it", Err: err}
	}
	c, errs := parse(data)
	if errs == nil {
		c.SetDefaults()
		errs = c.check()
		errs = append(errs, c.resolveSecrets(filepath.Dir(path), getenv, readFile)...)
	}
	for _, e := range errs {
		e.File = path
	}
	if len(errs) > 0 {
		return nil, joinErrs(errs)
	}
	return c, nil
}

// envRef matches a whole-value "${VAR}". Only the whole value: a literal
// password may well contain "$".
var envRef = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$`)

func (c *Config) resolveSecrets(dir string, getenv func(string) string, readFile func(string) ([]byte, error)) []*FieldError {
	k := &checker{lines: c.lines, kind: ErrSecret}
	for i := range c.Trunks {
		t := &c.Trunks[i]
		f := fmt.Sprintf("trunks[%d]", i)
		switch {
		case t.Password != "" && t.PasswordFile != "":
			// Validate already said to keep one; guessing which would hide that.
		case t.PasswordFile != "":
			p := t.PasswordFile
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			b, err := readFile(p)
			pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
			switch {
			case err != nil:
				k.add(f+".password_file", fmt.Sprintf("cannot read %q: %s", p, reason(err)), `make it readable by linkmanager, or use password: "${ENV_VAR}"`)
			case pw == "":
				k.add(f+".password_file", fmt.Sprintf("%q is empty", p), "write the password into it")
			default:
				t.Password, t.PasswordFile = pw, ""
			}
		default:
			t.Password = k.expand(f+".password", t.Password, getenv)
		}
	}
	c.PBX.Password = k.expand("pbx.password", c.PBX.Password, getenv)
	return k.errs
}

func (k *checker) expand(field, v string, getenv func(string) string) string {
	m := envRef.FindStringSubmatch(v)
	if m == nil {
		return v
	}
	if s := getenv(m[1]); s != "" {
		return s
	}
	k.add(field, fmt.Sprintf("environment variable %s is not set", m[1]),
		fmt.Sprintf("set %s for linkmanager (e.g. systemd EnvironmentFile=) or use password_file", m[1]))
	return v
}

// reason drops the path that fs errors repeat; our messages quote it already.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
