//go:build linux

package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Capture is a tcpdump running inside a lab namespace (for RTP counts in the
// calls tests). Needs the tcpdump package.
type Capture struct {
	proc *Proc
	Path string // pcap file
}

// StartCapture captures packets matching bpf on iface inside ns into a pcap
// file in the lab dir, and waits (bounded) until tcpdump is listening.
func (l *Lab) StartCapture(ns, iface, bpf string) *Capture {
	l.t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		l.t.Fatal("tcpdump missing (apt-get install tcpdump)")
	}
	n := l.nextSeq()
	path := filepath.Join(l.Dir, fmt.Sprintf("capture-%02d-%s-%s.pcap", n, ns, iface))
	// -B: a 64 MiB ring instead of libpcap's 2 MiB. Immediate mode (kept,
	// so SIGINT loses no half-filled block) uses fixed MTU-sized frames: 2 MiB
	// hold about 1,000 packets, a 0.2 s stall of tcpdump at the 50-call
	// test's 5,000 packets/s, which a busy 2-core CI machine does produce.
	// 64 MiB hold several seconds.
	args := []string{"tcpdump", "-nn", "-U", "--immediate-mode", "-B", "65536", "-Z", "root", "-i", iface, "-w", path}
	if bpf != "" {
		args = append(args, bpf)
	}
	p := l.Start(ns, fmt.Sprintf("capture-%02d.out", n), args...)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.Log(), "listening on") {
		if p.Exited() || time.Now().After(deadline) {
			l.t.Fatalf("tcpdump in %s did not start:\n%s", ns, p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Capture{proc: p, Path: path}
}

// Stop ends the capture (SIGINT flushes the file).
func (c *Capture) Stop() string {
	_ = c.proc.Signal(syscall.SIGINT)
	if _, err := c.proc.Wait(5 * time.Second); err != nil {
		c.proc.Stop(time.Second)
	}
	return c.Path
}

// CountPackets counts packets in a pcap file that match bpf.
func CountPackets(pcap, bpf string) (int, error) {
	args := []string{"-nn", "-r", pcap}
	if bpf != "" {
		args = append(args, bpf)
	}
	out, err := exec.Command("tcpdump", args...).Output()
	if err != nil {
		return 0, fmt.Errorf("tcpdump -r %s: %w", pcap, err)
	}
	s := strings.TrimSpace(string(out))
	if s == "" {
		return 0, nil
	}
	return len(strings.Split(s, "\n")), nil
}
