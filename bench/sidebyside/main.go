//go:build linux

// Command sidebyside measures three RTP relays in the same rounds, driven by
// one generator: the C floor relay (bench/floor/floor.c), rtpengine in
// userspace, and linkmanager's rtpbridge. For each relay and call count it
// starts the relay on loopback, sets up the calls (rtpengine over its ng
// protocol, the others over stdin), sends G.711 both ways (172-byte packets,
// 50 per second per direction per call) and reads, over a fixed window,
// the relay's CPU per forwarded packet from /proc/PID/stat, the loss, and
// the one-way latency through the relay. bench/run.sh builds and runs it.
//
// Every relay binds 127.0.0.1 only; every load is bounded in count and in
// time; every relay is a child stopped by its PID.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/linkmanager/linkmanager/bench/internal/relaychild"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

const childEnv = "SIDEBYSIDE_RTPBRIDGE"

func main() {
	if os.Getenv(childEnv) == "1" {
		err := relaychild.Serve(os.Stdin, os.Stdout, rtpbridge.Config{
			IO:  os.Getenv("SIDEBYSIDE_IO"),
			LAN: &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 20000, MaxPort: 24999},
			WAN: &rtpbridge.Pool{Address: "127.0.0.1", MinPort: 25000, MaxPort: 29999},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "rtpbridge child:", err)
			os.Exit(1)
		}
		return
	}
	var (
		floorBin  = flag.String("floor", "", "the built floor relay (bench/floor/floor.c)")
		rtpengine = flag.String("rtpengine", "/usr/bin/rtpengine", "rtpengine binary; empty to skip it")
		callsFlag = flag.String("calls", "50,200,500", "comma-separated concurrent call counts")
		ceiling   = flag.Int("ceiling", 1200, "calls for the ceiling row (0: none)")
		window    = flag.Duration("window", 10*time.Second, "measuring window")
		warmup    = flag.Duration("warmup", 2*time.Second, "load before the window")
		rounds    = flag.Int("rounds", 2, "rounds; each round measures every relay at every count")
		relays    = flag.String("relays", "floor,rtpengine,linkmanager", "relays to measure, in this order")
		lmIO      = flag.String("io", "epoll", "rtpbridge.Config.IO for linkmanager")
	)
	flag.Parse()
	if *window > 2*time.Minute || *warmup > time.Minute || *rounds > 10 {
		fatal(errors.New("window ≤ 2m, warmup ≤ 1m, rounds ≤ 10: loads are bounded"))
	}
	counts, err := parseCounts(*callsFlag)
	if err != nil {
		fatal(err)
	}
	if *ceiling > 0 {
		counts = append(counts, *ceiling)
	}
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	tmp, err := os.MkdirTemp("", "sidebyside-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)

	starters := map[string]func(calls int) (relay, error){
		"floor": func(int) (relay, error) {
			if *floorBin == "" {
				return nil, errors.New("-floor not given")
			}
			return startLineRelay(exec.Command(*floorBin))
		},
		"linkmanager": func(int) (relay, error) {
			cmd := exec.Command(self)
			cmd.Env = append(os.Environ(), childEnv+"=1", "SIDEBYSIDE_IO="+*lmIO)
			return startLineRelay(cmd)
		},
		"rtpengine": func(int) (relay, error) {
			if *rtpengine == "" {
				return nil, errors.New("-rtpengine empty")
			}
			return startRtpengine(*rtpengine, tmp)
		},
	}
	names := strings.Split(*relays, ",")
	for _, n := range names {
		if starters[n] == nil {
			fatal(fmt.Errorf("unknown relay %q", n))
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("# %s  GOMAXPROCS=%d  loadavg %s", time.Now().UTC().Format(time.RFC3339), runtime.GOMAXPROCS(0), load)
	fmt.Printf("# G.711, 172-byte packets, 50 pps per direction per call; window %s after %s warm-up\n", *window, *warmup)
	for r := 1; r <= *rounds; r++ {
		res := map[string]map[int]result{}
		for _, n := range counts {
			for _, name := range names {
				m, err := measure(starters[name], n, *warmup, *window)
				if err != nil {
					fmt.Fprintf(os.Stderr, "round %d %s calls=%d: %v\n", r, name, n, err)
					continue
				}
				if res[name] == nil {
					res[name] = map[int]result{}
				}
				res[name][n] = m
				fmt.Fprintf(os.Stderr, "round %d %-11s calls=%-4d %s\n", r, name, n, m)
			}
		}
		load, _ := os.ReadFile("/proc/loadavg")
		fmt.Printf("\n## round %d (loadavg after: %s)", r, strings.TrimSpace(string(load)))
		printTable(res, names, counts)
	}
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, c := range strings.Split(s, ",") {
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 || n > 2000 {
			return nil, fmt.Errorf("call count %q: want 1..2000", c)
		}
		out = append(out, n)
	}
	return out, nil
}

func printTable(res map[string]map[int]result, names []string, counts []int) {
	fmt.Println()
	// pkt/s below the nominal 100 per call means the generator fell
	// behind (a loaded machine): that row's loss and latency mean little.
	fmt.Println("| calls | relay | CPU µs/pkt | loss | p50 | p99 | pkt/s of nominal | generator CPU µs/pkt |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, n := range counts {
		for _, name := range names {
			m, ok := res[name][n]
			if !ok {
				fmt.Printf("| %d | %s | failed | | | | | |\n", n, name)
				continue
			}
			fmt.Printf("| %d | %s | %.2f | %.3f %% | %s | %s | %.0f %% | %.2f |\n", n, name, m.usPerPkt, m.lossPct,
				fmtDur(m.p50), fmtDur(m.p99), m.pps/float64(100*n)*100, m.genUsPerPkt)
		}
	}
	fmt.Println()
	fmt.Println("| calls | linkmanager / rtpengine | linkmanager / floor | rtpengine / floor | p99 linkmanager / rtpengine |")
	fmt.Println("|---|---|---|---|---|")
	ratio := func(a, b string, n int) string {
		x, ok1 := res[a][n]
		y, ok2 := res[b][n]
		if !ok1 || !ok2 || y.usPerPkt == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f×", x.usPerPkt/y.usPerPkt)
	}
	for _, n := range counts {
		p99 := "–"
		if x, ok := res["linkmanager"][n]; ok {
			if y, ok := res["rtpengine"][n]; ok && y.p99 > 0 {
				p99 = fmt.Sprintf("%.2f×", float64(x.p99)/float64(y.p99))
			}
		}
		fmt.Printf("| %d | %s | %s | %s | %s |\n", n, ratio("linkmanager", "rtpengine", n),
			ratio("linkmanager", "floor", n), ratio("rtpengine", "floor", n), p99)
	}
}

func fmtDur(d time.Duration) string {
	if d >= (maxLatUS-1)*time.Microsecond {
		return "≥200 ms"
	}
	return fmt.Sprintf("%d µs", d.Microseconds())
}

// relay is a started relay process with its calls to be set up.
type relay interface {
	pid() int
	// setup creates one call per element of pbx/prov (the generator's
	// ports) and returns the relay's ports the PBX and the provider
	// send to.
	setup(pbx, prov []int) (toA, toB []int, err error)
	stop()
}

func measure(start func(int) (relay, error), calls int, warmup, window time.Duration) (result, error) {
	g, err := newGen(calls)
	if err != nil {
		return result{}, err
	}
	defer g.close()
	r, err := start(calls)
	if err != nil {
		return result{}, err
	}
	defer r.stop()
	toA, toB, err := r.setup(g.pbxPorts(), g.provPorts())
	if err != nil {
		return result{}, err
	}
	g.target(toA, toB)
	return g.run(r.pid(), warmup, window)
}

// lineRelay is a relay driven over stdin/stdout: the floor and rtpbridge.
type lineRelay struct {
	cmd    *exec.Cmd
	stdin  interface{ Close() error }
	in     *bufio.Writer
	out    *bufio.Scanner
	exited chan error
}

func startLineRelay(cmd *exec.Cmd) (*lineRelay, error) {
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l := &lineRelay{cmd: cmd, stdin: stdin, in: bufio.NewWriter(stdin), out: bufio.NewScanner(stdout), exited: make(chan error, 1)}
	go func() { l.exited <- cmd.Wait() }()
	return l, nil
}

func (l *lineRelay) pid() int { return l.cmd.Process.Pid }

func (l *lineRelay) setup(pbx, prov []int) ([]int, []int, error) {
	for i := range pbx {
		fmt.Fprintln(l.in, pbx[i], prov[i])
	}
	fmt.Fprintln(l.in, "go")
	if err := l.in.Flush(); err != nil {
		return nil, nil, err
	}
	toA, toB := make([]int, len(pbx)), make([]int, len(pbx))
	for i := range pbx {
		if !l.out.Scan() {
			return nil, nil, fmt.Errorf("relay ended during setup: %v", l.out.Err())
		}
		if _, err := fmt.Sscan(l.out.Text(), &toA[i], &toB[i]); err != nil {
			return nil, nil, err
		}
	}
	if !l.out.Scan() || l.out.Text() != "ready" {
		return nil, nil, fmt.Errorf("relay not ready: %q", l.out.Text())
	}
	return toA, toB, nil
}

// stop closes stdin, which ends the relay, and kills it by PID if it has
// not ended in 5 s.
func (l *lineRelay) stop() {
	_ = l.stdin.Close()
	stopPID(l.cmd, l.exited, 0)
}

// stopPID waits for an exiting child, signalling it first if sig is not 0,
// and kills it by PID after 5 s.
func stopPID(cmd *exec.Cmd, exited chan error, sig syscall.Signal) {
	if sig != 0 {
		_ = cmd.Process.Signal(sig)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// cpuTicks is utime+stime of pid, all threads, in USER_HZ (100/s) ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, may hold spaces: count from the ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return ut + st, nil
}

const userHZ = 100 // /proc's clock ticks per second, fixed by the kernel ABI

// quantile returns the q-quantile of a histogram of 1 µs buckets.
func quantile(h []uint32, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	want := uint64(q * float64(total))
	var seen uint64
	for i, c := range h {
		seen += uint64(c)
		if seen > want {
			return time.Duration(i) * time.Microsecond
		}
	}
	return time.Duration(len(h)) * time.Microsecond
}

type result struct {
	usPerPkt    float64 // relay CPU per forwarded packet
	genUsPerPkt float64 // the generator's CPU per packet it received
	lossPct     float64
	p50, p99    time.Duration
	pps         float64
}

func (m result) String() string {
	return fmt.Sprintf("cpu %.2f µs/pkt  loss %.3f%%  p50 %s  p99 %s  %.0f pkt/s  gen %.2f µs/pkt",
		m.usPerPkt, m.lossPct, fmtDur(m.p50), fmtDur(m.p99), m.pps, m.genUsPerPkt)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "sidebyside:", err)
	os.Exit(1)
}
