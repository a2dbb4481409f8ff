package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
	"github.com/linkmanager/linkmanager/linkmanager/portmap"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
)

const statusHelp = `NAME
    linkmanager status - show what the running daemon is doing

SYNOPSIS
    linkmanager status [--admin ADDR] [--json]

DESCRIPTION
    Asks the daemon's admin endpoint (admin.listen) for its status and
    prints a short summary: readiness, the public address and how it was
    learned, the NAT behaviour, whether the router rewrites SIP (a SIP
    ALG, and what to switch off), each trunk's registration, the calls
    that are up, and how many calls the relay's port pools hold (with a
    warning from 90 % use, and which setting widens them).

    Exit status: 0 when the daemon is ready (every registering trunk is
    registered and it is not shutting down), 1 when it is not, 2 when it
    cannot be reached.

OPTIONS
`

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", "127.0.0.1:9065", "admin endpoint host:port (admin.listen)")
	asJSON := fs.Bool("json", false, "print the raw JSON status")
	fs.Usage = func() { fmt.Fprint(stderr, statusHelp); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	client := &http.Client{Timeout: 5 * time.Second}
	res, err := client.Get("http://" + *addr + "/status")
	if err != nil {
		fmt.Fprintf(stderr, "linkmanager status: cannot reach the daemon at %s: %v\n", *addr, err)
		return 2
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil || res.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "linkmanager status: %s: HTTP %d %v\n", *addr, res.StatusCode, err)
		return 2
	}
	var st admin.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "linkmanager status: bad answer from %s: %v\n", *addr, err)
		return 2
	}
	if *asJSON {
		stdout.Write(body)
	} else {
		printStatus(stdout, st)
	}
	if !st.Ready {
		return 1
	}
	return 0
}

func printStatus(w io.Writer, st admin.Status) {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + st.Reason
	}
	fmt.Fprintf(w, "linkmanager: %s\n", ready)
	pub := st.Public
	if pub == "" {
		pub = "unknown"
	} else {
		pub += " (from " + st.PublicSrc + ")"
	}
	fmt.Fprintf(w, "public address: %s   NAT: %s\n", pub, st.NAT)
	if n := st.NATTest; n != nil {
		fmt.Fprintf(w, "NAT test: %s\n", n.Advice)
	}
	fmt.Fprintln(w, sipALGLine(st.SIPALG))
	if n := st.SIPALG.Note; n != "" {
		fmt.Fprintf(w, "  %s\n", n)
	}
	if pm := st.PortMap; pm != nil {
		fmt.Fprintf(w, "port mapping: %s\n", portmapLine(pm))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUNK\tREGISTERED\tCONTACT\tKEEPALIVE\tLAST ERROR")
	for _, t := range st.Trunks {
		reg := "no"
		switch {
		case !t.Register:
			reg = "(not registering)"
		case t.Registered:
			reg = "yes, " + time.Since(t.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, reg, t.Contact, t.Keepalive, t.LastError)
	}
	tw.Flush()
	for _, t := range st.Trunks {
		if a := t.Addresses; a.Note != "" {
			fmt.Fprintf(w, "%s: registrar sees %s, STUN sees %s, Contact uses %s, SDP uses %s\n  %s\n",
				t.Name, orUnknown(a.Registrar), orUnknown(a.STUN), orUnknown(a.Contact), orUnknown(a.SDP), a.Note)
		}
	}
	fmt.Fprintf(w, "\n%d call(s)\n", len(st.Calls))
	if len(st.Calls) > 0 {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DIRECTION\tFROM\tTO\tTRUNK\tDURATION\tCODEC\tPBX>NET PKTS\tNET>PBX PKTS\tNOTE")
		for _, c := range st.Calls {
			note := ""
			switch {
			case !c.Answered:
				note = "ringing"
			case c.OneWay:
				note = "ONE-WAY AUDIO"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", c.Direction, c.From, c.To, c.Trunk,
				(time.Duration(c.Duration) * time.Second).Round(time.Second), c.Codec, c.PBXToNet.Packets, c.NetToPBX.Packets, note)
		}
		tw.Flush()
	}
	if p := st.Ports; p != nil {
		fmt.Fprintf(w, "\nrelay capacity: %d of %d calls (%.1f %%)\n", p.Capacity.Calls, p.Capacity.Max, p.Capacity.Percent)
		fmt.Fprintf(w, "relay ports (pairs): internet %d-%d: %d in use, %d quarantined (reusable), %d free; LAN %d-%d: %d in use, %d free\n",
			p.WAN.MinPort, p.WAN.MaxPort, p.WAN.InUse, p.WAN.Quarantined, p.WAN.Free,
			p.LAN.MinPort, p.LAN.MaxPort, p.LAN.InUse, p.LAN.Free+p.LAN.Quarantined)
		if p.Capacity.Warning != "" {
			fmt.Fprintf(w, "WARNING: %s\n", p.Capacity.Warning)
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

// sipALGLine is /status's sip_alg in one line; a detected ALG in the
// words the daemon logs.
func sipALGLine(a admin.SIPALG) string {
	switch a.Verdict {
	case trunk.ALGDetected:
		return fmt.Sprintf("%s (trunk %s: sent %s, came back %s)", a.Advice, strings.Join(a.Trunks, ", "), a.Sent, a.Seen)
	case trunk.ALGNone:
		return "SIP ALG: none (the registrar's answers come back as sent)"
	}
	return "SIP ALG: not known yet (no answer from a registrar to compare)"
}

// portmapLine is /status's portmap in one line: who grants what.
func portmapLine(pm *portmap.Status) string {
	if pm.Protocol == "" {
		if pm.Error != "" {
			return "none from " + pm.Gateway + " (" + pm.Error + ")"
		}
		return "asking " + pm.Gateway
	}
	return fmt.Sprintf("%s at %s, public %s, %d port(s) mapped", pm.Protocol, pm.Gateway, pm.External, len(pm.Mappings))
}
