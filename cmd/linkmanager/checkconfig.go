package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/linkmanager/linkmanager/linkmanager/config"
)

const checkHelp = `Usage: linkmanager check-config --config FILE

Reads FILE as linkmanager would at start-up (defaults applied, passwords
from password_file or ${ENV} resolved) and checks every rule. Prints "ok"
and exits 0, or prints one line per problem, naming the file, the field and
the fix, and exits 1.

Flags:
`

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/linkmanager/linkmanager.yaml", "config file")
	fs.Usage = func() { fmt.Fprint(stderr, checkHelp); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
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
