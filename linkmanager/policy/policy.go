// Package policy is the outbound number policy: which numbers the PBX may
// dial on a trunk, and which numbers are emergency calls that every rule,
// cap and drain lets through. It is pure: the trunks and the B2BUA apply
// what it decides.
package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrDenied is a number the trunk's rules do not let out.
var ErrDenied = errors.New("policy: number not allowed")

// DefaultEmergency are the numbers that always go out: Europe's 112 and
// Germany's 110, North America's 911, the UK's 999. Configurable, since
// each country has its own.
var DefaultEmergency = []string{"112", "110", "911", "999"}

// Rules are one trunk's outbound rules. A pattern is digits with an
// optional leading "+" and an optional trailing "*" (a prefix); it matches
// the number as the PBX dialled it or as the trunk sends it.
type Rules struct {
	Allow []string // empty: every number
	Deny  []string // checked first
}

// Check returns nil when some form of the number may go out, else an
// error naming the pattern that stopped it (wrapping ErrDenied).
func (r Rules) Check(forms ...string) error {
	for _, p := range r.Deny {
		for _, n := range forms {
			if Match(p, n) {
				return fmt.Errorf("%w: %s matches deny %q", ErrDenied, n, p)
			}
		}
	}
	if len(r.Allow) == 0 {
		return nil
	}
	for _, p := range r.Allow {
		for _, n := range forms {
			if Match(p, n) {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: %s matches no allow pattern", ErrDenied, strings.Join(forms, " / "))
}

// Match reports whether number matches pattern: the same digits (and
// "+"), or, for a pattern ending in "*", the same start.
func Match(pattern, number string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(number, p)
	}
	return number == pattern
}

// Emergency reports whether dialled is one of the emergency numbers:
// exactly, so that 112 is not 1123.
func Emergency(list []string, dialled string) bool {
	for _, e := range list {
		if dialled == e {
			return true
		}
	}
	return false
}
