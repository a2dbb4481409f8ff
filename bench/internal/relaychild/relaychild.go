// Package relaychild is rtpbridge as a bench relay process: the child that
// BenchmarkPacedRelay and bench/sidebyside start, driven over stdin and
// stdout with the same line protocol as the C floor relay (bench/floor/floor.c),
// so the generator treats every relay alike.
package relaychild

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"

	"github.com/linkmanager/linkmanager/rtpbridge"
)

// Serve reads "pbxPort providerPort" lines up to "go", creates a session
// per line whose remotes are those loopback ports, answers with
// "legAPort legBPort" lines and "ready", and relays until in ends.
func Serve(in io.Reader, out io.Writer, cfg rtpbridge.Config) error {
	br, err := rtpbridge.New(cfg)
	if err != nil {
		return err
	}
	defer br.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	sc := bufio.NewScanner(in)
	w := bufio.NewWriter(out)
	for sc.Scan() && sc.Text() != "go" {
		var pbx, prov uint16
		if _, err := fmt.Sscan(sc.Text(), &pbx, &prov); err != nil {
			return err
		}
		s, err := br.NewSession("load")
		if err != nil {
			return err
		}
		_ = s.SetRemote(rtpbridge.LegA, netip.AddrPortFrom(lo, pbx), netip.AddrPort{})
		_ = s.SetRemote(rtpbridge.LegB, netip.AddrPortFrom(lo, prov), netip.AddrPort{})
		s.Established()
		fmt.Fprintln(w, s.LocalPort(rtpbridge.LegA), s.LocalPort(rtpbridge.LegB))
	}
	fmt.Fprintln(w, "ready")
	if err := w.Flush(); err != nil {
		return err
	}
	for sc.Scan() {
	}
	return sc.Err()
}
