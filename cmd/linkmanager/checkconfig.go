package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

const checkHelp = `NAME
    linkmanager check-config - validate a configuration file

SYNOPSIS
    linkmanager check-config [--config FILE]

DESCRIPTION
    Reads FILE as linkmanager would at start-up: unknown keys are errors,
    defaults are applied, passwords from password_file or "${ENV}" are
    resolved, and every rule is checked. It opens no sockets.

    Prints "FILE: ok", or one line per problem naming the file, the line,
    the field and the fix, e.g.
        lm.yaml: line 7: trunks[0]: unknown key "registar": did you mean "registrar"?

EXIT STATUS
    0 when the file is valid, 1 when it is not, 2 on a usage error.

OPTIONS
`

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/linkmanager/linkmanager.yaml", "config file")
	fs.Usage = func() { fmt.Fprint(stderr, checkHelp); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if _, err := config.Load(*path); err != nil {
		for _, p := range config.Problems(err) {
			fmt.Fprintln(stderr, p)
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return 0
}
