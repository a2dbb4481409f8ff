package config

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinels let callers tell "fix the file" from "fix the environment"
// without matching message text.
var (
	// ErrParse marks a file that is not YAML or does not fit the schema:
	// unknown key, wrong type, duration without a unit.
	ErrParse = errors.New("config: cannot parse")
	// ErrInvalid marks a value that parsed but breaks a rule.
	ErrInvalid = errors.New("config: invalid value")
	// ErrSecret marks a password that Load could not resolve: the
	// environment variable is unset or password_file is unreadable. The file
	// itself may be fine; the machine it runs on is not set up yet.
	ErrSecret = errors.New("config: cannot resolve password")
)

// FieldError is one problem in a config file. check-config prints one per
// line, so every part is a single line.
type FieldError struct {
	File    string // config file name; set by Load
	Line    int    // line in the file, 0 if unknown (e.g. a default was wrong)
	Field   string // path such as trunks[0].registrar; empty for the whole file
	Problem string // what is wrong, quoting the offending value
	Fix     string // what to write instead
	Err     error  // ErrParse, ErrInvalid, ErrSecret, or an I/O error from Load
}

// Error renders "file: line N: field: problem: fix", leaving out empty parts.
func (e *FieldError) Error() string {
	parts := make([]string, 0, 5)
	if e.File != "" {
		parts = append(parts, e.File)
	}
	if e.Line > 0 {
		parts = append(parts, "line "+strconv.Itoa(e.Line))
	}
	if e.Field != "" {
		parts = append(parts, e.Field)
	}
	parts = append(parts, e.Problem)
	if e.Fix != "" {
		parts = append(parts, e.Fix)
	}
	return strings.Join(parts, ": ")
}

func (e *FieldError) Unwrap() error { return e.Err }

// Problems splits an error from Parse, Validate or Load into one line per
// problem, ready for check-config to print.
func Problems(err error) []string {
	if err == nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

func joinErrs(errs []*FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	all := make([]error, len(errs))
	for i, e := range errs {
		all[i] = e
	}
	return errors.Join(all...)
}
