// Command linkmanager is the SIP trunk daemon: it registers a company's
// provider accounts from one UDP port behind the office NAT, keeps that
// NAT open with STUN, and (as the calls land) relays calls to the PBX.
//
// main stays thin: it parses flags, opens the sockets, wires the
// components and runs them until a signal arrives.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `linkmanager - SIP trunk daemon for a PBX behind NAT

Usage:
  linkmanager run --config FILE            run in the foreground, log to stderr
  linkmanager check-config --config FILE   validate FILE; one line per problem
  linkmanager firewall --config FILE --format nftables|iptables|text   print the router's firewall rules
  linkmanager status [--admin ADDR] [--json]   show trunks, public address, calls; exit 0 when ready
  linkmanager nat-test --config FILE       test the NAT in front of this host (RFC 5780) and say what it means
  linkmanager version                      print the version

Run 'linkmanager COMMAND --help' for a command's manual.
`

const versionHelp = `NAME
    linkmanager version - print the version

SYNOPSIS
    linkmanager version

DESCRIPTION
    Prints the version set at build time (-ldflags -X), or the module
    version for a go install build, or "dev".
`

// run is main without the process exit, so tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "check-config":
		return cmdCheckConfig(args[1:], stdout, stderr)
	case "firewall":
		return cmdFirewall(args[1:], stdout, stderr)
	case "nat-test":
		return cmdNATTest(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		if len(args) > 1 && (args[1] == "--help" || args[1] == "-h") {
			fmt.Fprint(stdout, versionHelp)
			return 0
		}
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "linkmanager: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
