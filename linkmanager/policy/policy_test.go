package policy

import (
	"errors"
	"testing"
)

func TestRules(t *testing.T) {
	intl := Rules{Deny: []string{"00*", "+*", "0900*", "0137*"}}
	domestic := Rules{Allow: []string{"0*", "+49*"}, Deny: []string{"0900*", "+49900*"}}
	for _, tc := range []struct {
		name  string
		r     Rules
		forms []string
		ok    bool
	}{
		{"no rules", Rules{}, []string{"00901234"}, true},
		{"a deny of \"+*\" catches the E.164 form", intl, []string{"0301234567", "+49301234567"}, false},
		{"a national number", intl, []string{"0301234567", "0301234567"}, true},
		{"premium rate", intl, []string{"09001234567"}, false},
		{"international", intl, []string{"0090123456"}, false},
		{"allow list", domestic, []string{"0301234567", "+49301234567"}, true},
		{"deny beats allow", domestic, []string{"09001234567", "+499001234567"}, false},
		{"deny on the trunk's form", domestic, []string{"9001234567", "+499001234567"}, false},
		{"outside the allow list", domestic, []string{"+90123", "90123"}, false},
	} {
		err := tc.r.Check(tc.forms...)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrDenied) {
			t.Errorf("%s: Check(%v) = %v, want ok %v", tc.name, tc.forms, err, tc.ok)
		}
	}
}

func TestEmergency(t *testing.T) {
	for n, want := range map[string]bool{"112": true, "110": true, "911": true, "1123": false, "0112": false, "": false} {
		if got := Emergency(DefaultEmergency, n); got != want {
			t.Errorf("Emergency(%q) = %v, want %v", n, got, want)
		}
	}
}
