package portmap

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Discover asks gateway for PCP and NAT-PMP at once (one datagram each to
// port 5351; a gateway that speaks one answers the other's version with
// UNSUPP_VERSION, RFC 6887 §9), prefers PCP, and only when neither answers
// looks for a UPnP IGD at it (an SSDP search and an HTTP fetch), as
// tailscale's portmapper does.
func Discover(ctx context.Context, gateway, local netip.Addr, timeout time.Duration) (Protocol, error) {
	pcp, pmp := NewPCP(gateway, local, timeout), NewNATPMP(gateway, timeout)
	var errPCP, errPMP error
	var wg sync.WaitGroup
	wg.Go(func() { errPCP = pcp.Announce(ctx) })
	wg.Go(func() {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, errPMP = pmp.ExternalAddr(pctx)
	})
	wg.Wait()
	if errPCP == nil {
		return pcp, nil
	}
	if errPMP == nil {
		return pmp, nil
	}
	u, errUPnP := discoverUPnP(ctx, gateway, local, timeout)
	if errUPnP == nil {
		return u, nil
	}
	return nil, fmt.Errorf("%w: pcp: %w; nat-pmp: %w; upnp: %w", ErrNoGateway, errPCP, errPMP, errUPnP)
}

// DefaultGateway is the IPv4 default route's gateway, from /proc/net/route.
func DefaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %w", ErrNoGateway, err)
	}
	defer f.Close()
	return parseRoutes(f)
}

// parseRoutes finds the default route (destination and mask 0) with the
// lowest metric in a /proc/net/route table. Its addresses are
// little-endian hex.
func parseRoutes(r io.Reader) (netip.Addr, error) {
	sc := bufio.NewScanner(r)
	var best netip.Addr
	bestMetric := -1
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 8 {
			continue // the header, or a short line
		}
		dst, gw, flags, metric, mask := f[1], f[2], f[3], f[6], f[7]
		if dst != "00000000" || mask != "00000000" {
			continue
		}
		fl, err1 := strconv.ParseUint(flags, 16, 32)
		g, err2 := strconv.ParseUint(gw, 16, 32)
		mt, err3 := strconv.Atoi(metric)
		if err1 != nil || err2 != nil || err3 != nil || fl&0x3 != 0x3 || g == 0 { // RTF_UP|RTF_GATEWAY
			continue
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(g))
		if bestMetric < 0 || mt < bestMetric {
			best, bestMetric = netip.AddrFrom4(b), mt
		}
	}
	if err := sc.Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %w", ErrNoGateway, err)
	}
	if bestMetric < 0 {
		return netip.Addr{}, fmt.Errorf("%w: no IPv4 default route", ErrNoGateway)
	}
	return best, nil
}
