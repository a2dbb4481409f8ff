package main

import (
	"bytes"
	"strings"
	"testing"
)

// Every command has a man-page style manual behind --help, and asking for
// it is not an error.
func TestHelpForEveryCommand(t *testing.T) {
	for _, cmd := range []string{"run", "check-config", "status", "firewall", "nat-test", "version"} {
		var out, errOut bytes.Buffer
		code := run([]string{cmd, "--help"}, &out, &errOut)
		text := out.String() + errOut.String()
		if code != 0 {
			t.Errorf("%s --help exited %d", cmd, code)
		}
		for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION"} {
			if !strings.Contains(text, section+"\n") {
				t.Errorf("%s --help has no %s section:\n%s", cmd, section, text)
			}
		}
		if !strings.Contains(text, "linkmanager "+cmd) {
			t.Errorf("%s --help does not name the command", cmd)
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "unknown command") {
		t.Errorf("unknown command: exit %d, %q", code, errOut.String())
	}
}
