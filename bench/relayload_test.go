package bench

// BenchmarkPacedRelay drives rtpbridge the way shared/notes/perf-anchors.md
// measured relays: S calls of G.711 at 20 ms (50 packets/s per direction per
// call, 172-byte packets) on loopback, with the relay in its own process so
// its CPU and context switches can be read from /proc without the
// generator's. The test binary re-executes itself as the relay.
//
//	go test -run '^$' -bench PacedRelay -benchtime 1x -count 5 ./bench/
//
// Environment: RELAY_CALLS (default "50,200"), RELAY_WINDOW (default 5s),
// RELAY_GOMAXPROCS (the relay process's GOMAXPROCS; default: the runtime's),
// RELAY_IO (rtpbridge.Config.IO: "goroutines", the default, or "epoll"),
// RELAY_REACTORS (rtpbridge.Config.Reactors with epoll).

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/bench/internal/relaychild"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

const (
	childEnv  = "RTPBRIDGE_RELAY_CHILD"
	pktSize   = 172
	slots     = 20 // 1 ms slots per 20 ms frame, so calls are spread in phase
	warmup    = time.Second
	drainWait = 300 * time.Millisecond
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := runRelay(); err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runRelay is the child: rtpbridge on loopback, driven over stdin.
func runRelay() error {
	reactors := 0
	if r := os.Getenv("RELAY_REACTORS"); r != "" {
		var err error
		if reactors, err = strconv.Atoi(r); err != nil {
			return fmt.Errorf("RELAY_REACTORS: %w", err)
		}
	}
	return relaychild.Serve(os.Stdin, os.Stdout, rtpbridge.Config{
		IO:       os.Getenv("RELAY_IO"),
		Reactors: reactors,
		LAN:      &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 45000, MaxPort: 46999},
		WAN:      &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 47000, MaxPort: 48999},
	})
}

// procStat sums CPU time (ns) and context switches over the threads of pid.
func procStat(b *testing.B, pid int) (cpuNS, ctxsw int64) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil || len(tasks) == 0 {
		b.Fatalf("no tasks for %d: %v", pid, err)
	}
	for _, t := range tasks {
		if sched, err := os.ReadFile(t + "/schedstat"); err == nil {
			if f := strings.Fields(string(sched)); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				cpuNS += n
			}
		}
		status, err := os.ReadFile(t + "/status")
		if err != nil {
			continue // thread exited
		}
		for _, line := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(line, "voluntary_ctxt_switches:") || strings.HasPrefix(line, "nonvoluntary_ctxt_switches:") {
				n, _ := strconv.ParseInt(strings.TrimSpace(line[strings.Index(line, ":")+1:]), 10, 64)
				ctxsw += n
			}
		}
	}
	return cpuNS, ctxsw
}

func BenchmarkPacedRelay(b *testing.B) {
	calls := os.Getenv("RELAY_CALLS")
	if calls == "" {
		calls = "50,200"
	}
	window := 5 * time.Second
	if w := os.Getenv("RELAY_WINDOW"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil {
			b.Fatal(err)
		}
		window = d
	}
	for _, c := range strings.Split(calls, ",") {
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 || n > 500 {
			b.Fatalf("RELAY_CALLS entry %q: want 1..500", c)
		}
		b.Run("calls="+c, func(b *testing.B) {
			var m metrics
			for range b.N {
				m.add(runPaced(b, n, window))
			}
			m.report(b, b.N)
		})
	}
}

type metrics struct{ usPerPkt, ctxPerPkt, lossPct, pps float64 }

func (m *metrics) add(o metrics) {
	m.usPerPkt += o.usPerPkt
	m.ctxPerPkt += o.ctxPerPkt
	m.lossPct += o.lossPct
	m.pps += o.pps
}

func (m *metrics) report(b *testing.B, n int) {
	f := float64(n)
	// ns/op would be the window length; the per-packet CPU is the result.
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(m.usPerPkt/f, "relay-cpu-µs/pkt")
	b.ReportMetric(m.ctxPerPkt/f, "ctxsw/pkt")
	b.ReportMetric(m.lossPct/f, "loss-%")
	b.ReportMetric(m.pps/f, "pkts/s")
}

func runPaced(b *testing.B, calls int, window time.Duration) metrics {
	b.StopTimer()
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadBuffer(1 << 20)
		return c
	}
	pbx, prov := make([]*net.UDPConn, calls), make([]*net.UDPConn, calls)
	for i := range calls {
		pbx[i], prov[i] = listen(), listen()
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	if p := os.Getenv("RELAY_GOMAXPROCS"); p != "" {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+p)
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	for i := range calls {
		fmt.Fprintln(stdin, addrPort(pbx[i]).Port(), addrPort(prov[i]).Port())
	}
	fmt.Fprintln(stdin, "go")
	lo := netip.MustParseAddr("127.0.0.1")
	toA, toB := make([]netip.AddrPort, calls), make([]netip.AddrPort, calls)
	sc := bufio.NewScanner(stdout)
	for i := range calls {
		var a, bb uint16
		if !sc.Scan() {
			b.Fatalf("relay ended early: %v", sc.Err())
		}
		if _, err := fmt.Sscan(sc.Text(), &a, &bb); err != nil {
			b.Fatal(err)
		}
		toA[i], toB[i] = netip.AddrPortFrom(lo, a), netip.AddrPortFrom(lo, bb)
	}
	if !sc.Scan() || sc.Text() != "ready" {
		b.Fatalf("relay not ready: %q", sc.Text())
	}

	var received atomic.Int64
	var wg sync.WaitGroup
	for _, c := range append(append([]*net.UDPConn{}, pbx...), prov...) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, _, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if n == pktSize { // not a pinhole or keepalive
					received.Add(1)
				}
			}
		}()
	}

	// The sender is bounded in time (stop) and in count (maxSends).
	stop := make(chan struct{})
	var sent atomic.Int64
	maxSends := int64(2*calls*50) * int64((warmup+window+time.Second)/time.Second)
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		pkt := make([]byte, pktSize)
		pkt[0], pkt[1] = 0x80, 8
		seq := make([]uint16, calls)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for slot := 0; sent.Load() < maxSends; slot = (slot + 1) % slots {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for i := slot; i < calls; i += slots {
				seq[i]++
				pkt[2], pkt[3] = byte(seq[i]>>8), byte(seq[i])
				for _, hop := range [2]struct {
					c  *net.UDPConn
					to netip.AddrPort
					id byte
				}{{pbx[i], toA[i], 'a'}, {prov[i], toB[i], 'b'}} {
					pkt[11] = hop.id
					if _, err := hop.c.WriteToUDPAddrPort(pkt, hop.to); err == nil {
						sent.Add(1)
					}
				}
			}
		}
	}()

	time.Sleep(warmup) // pacing, not synchronisation
	pid := cmd.Process.Pid
	cpu0, ctx0 := procStat(b, pid)
	r0, t0 := received.Load(), time.Now()
	time.Sleep(window)
	cpu1, ctx1 := procStat(b, pid)
	r1, elapsed := received.Load(), time.Since(t0)
	close(stop)
	<-senderDone
	time.Sleep(drainWait) // let in-flight packets land before counting loss
	total, got := sent.Load(), received.Load()
	for _, c := range append(pbx, prov...) {
		_ = c.Close()
	}
	wg.Wait()

	pkts := float64(r1 - r0)
	if pkts == 0 {
		b.Fatal("no packets relayed")
	}
	return metrics{
		usPerPkt:  float64(cpu1-cpu0) / 1e3 / pkts,
		ctxPerPkt: float64(ctx1-ctx0) / pkts,
		lossPct:   100 * float64(total-got) / float64(total),
		pps:       pkts / elapsed.Seconds(),
	}
}

func addrPort(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }
