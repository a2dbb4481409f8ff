//go:build linux

package e2e

// Hostile Internet (issue 9): attacks through the port forward many admins
// configure for 65002, against the daemon registered through the lab NAT.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ForwardSIP adds the router port forward of the daemon's SIP port (what
// an admin does so the provider can reach the PBX without keepalives):
// from then on anybody on the Internet reaches 65002.
func (l *Lab) ForwardSIP() error {
	port := strconv.Itoa(DaemonSIPPort)
	for _, rule := range [][]string{
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "udp", "--dport", port, "-j", "DNAT", "--to-destination", DaemonIP},
		{"iptables", "-I", "FORWARD", "1", "-i", "wan", "-o", "lan", "-p", "udp", "-d", DaemonIP, "--dport", port, "-j", "ACCEPT"},
	} {
		if _, err := l.Exec(NSRouter, rule...); err != nil {
			return err
		}
	}
	return nil
}

// AdminGet fetches path from the daemon's admin API (127.0.0.1:9065 in the
// lm namespace). The connection is dialled on a thread inside the
// namespace; net/http would dial from another thread, outside it.
func (l *Lab) AdminGet(path string) (string, error) {
	var body string
	err := l.inNetns(NSLM, func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:9065", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path); err != nil {
			return err
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		body = string(b)
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, res.Status)
		}
		return err
	})
	return body, err
}

// metricValue returns the value of the Prometheus sample whose name and
// labels are exactly series (e.g. `x_total{a="b"}`), 0 when absent.
func metricValue(metrics, series string) float64 {
	for _, line := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// Issue 9 item 5: SIP responses from strangers. sipgo kept state per
// source it heard from and logged every unparsable "SIP/2.0 ..." datagram
// whole, at error level with a stack trace: 40k such datagrams once made
// 180 MiB of log. A stranger's responses must be dropped and counted
// before sipgo sees them, and the log must not grow with the flood.
func TestHostileJunkResponseFlood(t *testing.T) {
	t.Parallel()
	const (
		sockets = 50  // stranger source ports
		each    = 200 // datagrams per socket: 10,000 in all
	)
	l, d := callLab(t, DaemonConfig{LogLevel: "info"})
	if err := l.ForwardSIP(); err != nil {
		t.Fatal(err)
	}
	series := `linkmanager_sip_dropped_total{reason="source_not_allowed",socket="internet"}`
	before, err := l.AdminGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	logBefore := len(d.Log())

	junk := []byte("SIP/2.0 " + strings.Repeat("x", 1000) + "\r\n\r\n")
	dst := &net.UDPAddr{IP: net.ParseIP(WANIP1), Port: DaemonSIPPort}
	var conns []*net.UDPConn
	for range sockets {
		c, err := l.ListenUDP(NSPhone, PhoneIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// Bounded: 10,000 datagrams, paced at about 20,000 per second.
	start := time.Now()
	for i := range each {
		for _, c := range conns {
			if _, err := c.WriteTo(junk, dst); err != nil {
				t.Fatal(err)
			}
		}
		if i%4 == 3 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	sent := sockets * each
	t.Logf("sent %d junk responses from %d ports of %s in %v", sent, sockets, PhoneIP, time.Since(start).Round(time.Millisecond))

	// Await the daemon's count of them (veth or a busy reader may lose
	// some; most must arrive for the test to mean anything).
	// Done when all are counted, or when the count has stood still for a
	// second (the rest were lost on the way).
	var dropped float64
	for deadline, still := time.Now().Add(20*time.Second), 0; time.Now().Before(deadline) && still < 5; time.Sleep(200 * time.Millisecond) {
		m, err := l.AdminGet("/metrics")
		if err != nil {
			t.Fatal(err)
		}
		now := metricValue(m, series) - metricValue(before, series)
		if now >= float64(sent) {
			dropped = now
			break
		}
		if now == dropped {
			still++
		} else {
			still = 0
		}
		dropped = now
	}
	grown := len(d.Log()) - logBefore
	t.Logf("dropped as source_not_allowed: %.0f of %d; log grew by %d bytes", dropped, sent, grown)
	if dropped < float64(sent)/2 {
		t.Errorf("the daemon counted %.0f of %d junk responses from a stranger as dropped (%s): they reached the SIP stack", dropped, sent, series)
	}
	if grown > 64<<10 {
		t.Errorf("the daemon's log grew by %d bytes during the flood; want < 64 KiB:\n%s", grown, tail(d.Log(), 5))
	}
	// Still serving: the registration is intact and the daemon stops cleanly.
	st, err := l.AdminGet("/readyz")
	if err != nil {
		t.Errorf("readyz after the flood: %v (%s)", err, st)
	}
	stopDaemon(t, d)
}
