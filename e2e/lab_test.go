//go:build linux

// Package e2e holds the end-to-end lab: real Kamailio, coturn, sipp and the
// daemon in Linux network namespaces behind an iptables NAT router.
//
// Topology (addresses are a contract):
//
//	LAN 192.168.100.0/24           router               Internet 198.51.100.0/24
//	  lm  .2   (daemon) --+      .1 lan | wan .1      +-- provider .50 (Kamailio :5060)
//	  pbx .20  (PBX)    --+- lan sw     NAT    inet sw -+-- stun .60/.61 (coturn :3478)
//	                                                    +-- phone .70 (sipp)
//
// See lab/README.md. Everything runs inside namespaces named PREFIX-NAME with a
// random PREFIX per lab, so labs run in parallel; nothing touches the root
// namespace.
package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"golang.org/x/sys/unix"
)

// Contract addresses of the lab.
const (
	RouterLANIP = "192.168.100.1"
	DaemonIP    = "192.168.100.2"
	PBXIP       = "192.168.100.20"
	WANIP1      = "198.51.100.1"
	WANIP2      = "198.51.100.2"
	ProviderIP  = "198.51.100.50"
	STUN1IP     = "198.51.100.60"
	STUN2IP     = "198.51.100.61"
	PhoneIP     = "198.51.100.70"

	ProviderAddr  = ProviderIP + ":5060"
	STUN1Addr     = STUN1IP + ":3478"
	STUN2Addr     = STUN2IP + ":3478"
	DaemonSIPPort = 65002

	SIPDomain     = "sip.provider.test"
	TrunkUser     = "4930123456"
	TrunkPass     = "lab-secret"
	PhoneUser     = "phone"
	PhonePass     = "phone-secret"
	DID           = "4930123456"
	NATUDPTimeout = 20 * time.Second // nf_conntrack_udp_timeout(_stream) in the router namespace
)

// Namespace short names (Lab.NS maps them to PREFIX-NAME).
const (
	NSLan      = "lan"
	NSInet     = "inet"
	NSRouter   = "router"
	NSLM       = "lm"
	NSPBX      = "pbx"
	NSProvider = "provider"
	NSSTUN     = "stun"
	NSPhone    = "phone"
)

var requiredTools = []string{"ip", "bash", "sysctl", "md5sum", "kamailio", "kamcmd", "turnserver", "sipp", "conntrack", "iptables"}

type labOptions struct {
	noSTUNServer   bool
	plainSTUN      bool
	kamailioNoSTUN bool
	kamailioPing   bool
	kamailioDelay  bool
}

// LabOption configures newLab.
type LabOption func(*labOptions)

// WithoutSTUNServer starts no coturn at all (.60/.61 do not answer).
func WithoutSTUNServer() LabOption { return func(o *labOptions) { o.noSTUNServer = true } }

// WithoutRFC5780 starts two plain coturns, one on .60 and one on .61, that
// send no OTHER-ADDRESS and ignore CHANGE-REQUEST: STUN as most public
// servers offer it.
func WithoutRFC5780() LabOption { return func(o *labOptions) { o.plainSTUN = true } }

// WithoutProviderSTUN starts Kamailio without its stun module: STUN to
// 198.51.100.50:5060 goes unanswered (the OPTIONS-fallback case).
func WithoutProviderSTUN() LabOption { return func(o *labOptions) { o.kamailioNoSTUN = true } }

// WithProviderNATPing makes Kamailio ping registered contacts with OPTIONS every 8 s.
func WithProviderNATPing() LabOption { return func(o *labOptions) { o.kamailioPing = true } }

// WithProviderSDPDelay makes Kamailio hold every reply that carries SDP
// for 5 ms before relaying it: a provider whose signalling lags the media
// that goes straight between the ends (issue 9b). The lab kernel may lack
// tc netem, so the delay is Kamailio's own.
func WithProviderSDPDelay() LabOption { return func(o *labOptions) { o.kamailioDelay = true } }

// Lab is one running instance of the lab.
type Lab struct {
	t      testing.TB
	Prefix string
	Dir    string // temp dir: configs, logs, Kamailio runtime dir
	opts   labOptions

	script   string
	sippDir  string
	ctlSock  string
	kamailio *Proc
	kargs    []string // how kamailio was started, for RestartKamailio

	mu       sync.Mutex
	procs    []*Proc
	coturn   []*Proc
	wanIP    string
	portNext int
	seq      int
}

// Proc is a process the lab started; the lab kills it (by PID) on cleanup.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	err     error
	logFile *os.File
}

// PID of the process.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit code once exited (-1 for a signal), or -2 while running.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -2
	}
	if p.Cmd.ProcessState == nil {
		return -1
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Wait waits up to timeout for the process to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
		return p.ExitCode(), nil
	case <-time.After(timeout):
		return -2, fmt.Errorf("%s (pid %d) still running after %v", p.Name, p.PID(), timeout)
	}
}

// Signal sends sig to the process (only this PID).
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return syscall.Kill(p.PID(), sig)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL; returns the exit code.
func (p *Proc) Stop(grace time.Duration) int {
	if !p.Exited() {
		_ = syscall.Kill(p.PID(), syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(p.PID(), syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	return p.ExitCode()
}

// Log returns the process's captured output so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

func isCI() bool { return os.Getenv("CI") == "true" }

// newLab builds a lab with its own namespace prefix and starts Kamailio and
// coturn. Without root it skips (fails under CI=true). A missing tool fails.
// Cleanup (registered with t.Cleanup) dumps log tails on failure, stops every
// process the lab started (by PID) and deletes the lab's namespaces.
func newLab(t testing.TB, opts ...LabOption) *Lab {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e lab skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		if isCI() {
			t.Fatal("e2e lab needs root (CI=true): run the tests as root")
		}
		t.Skip("e2e lab needs root (network namespaces, iptables); skipping outside CI")
	}
	var missing []string
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("e2e lab: missing tools %v (apt-get install iproute2 procps kamailio coturn sip-tester conntrack iptables)", missing)
	}
	var o labOptions
	for _, f := range opts {
		f(&o)
	}
	here, err := filepath.Abs("lab")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "lmlab-")
	if err != nil {
		t.Fatal(err)
	}
	var rb [3]byte
	_, _ = rand.Read(rb[:])
	l := &Lab{
		t:        t,
		Prefix:   "lml" + hex.EncodeToString(rb[:]),
		Dir:      dir,
		opts:     o,
		script:   filepath.Join(here, "lab.sh"),
		sippDir:  filepath.Join(here, "sipp"),
		ctlSock:  filepath.Join(dir, "run", "kamailio_ctl"),
		wanIP:    WANIP1,
		portNext: 16000,
	}
	t.Cleanup(l.cleanup)
	trackLab(l, true)
	start := time.Now()
	if out, err := l.script1(30*time.Second, "prepare", dir); err != nil {
		t.Fatalf("lab prepare: %v\n%s", err, out)
	}
	if out, err := l.script1(60*time.Second, "net-up", l.Prefix); err != nil {
		t.Fatalf("lab net-up: %v\n%s", err, out)
	}
	kargs := []string{l.script, "run-kamailio", l.Prefix, dir}
	if o.kamailioNoSTUN {
		kargs = append(kargs, "NOSTUN")
	}
	if o.kamailioPing {
		kargs = append(kargs, "NATPING")
	}
	if o.kamailioDelay {
		kargs = append(kargs, "SDPDELAY")
	}
	l.kargs = kargs
	l.kamailio = l.startRoot("kamailio", "kamailio.log", kargs...)
	if !o.noSTUNServer {
		l.startCoturn()
	}
	if err := l.waitReady(15 * time.Second); err != nil {
		t.Fatalf("lab did not come up: %v", err)
	}
	t.Logf("lab %s up in %v (dir %s)", l.Prefix, time.Since(start).Round(time.Millisecond), dir)
	return l
}

// startCoturn starts one coturn on both STUN addresses in RFC 5780 mode:
// it answers on .60 and .61, ports 3478 and 3479, names the other address
// in OTHER-ADDRESS and answers CHANGE-REQUEST (for the NAT self-test). To
// the daemon's keeper .60:3478 and .61:3478 are still two servers.
func (l *Lab) startCoturn() {
	runs := [][]string{{STUN1IP, STUN2IP}}
	if l.opts.plainSTUN {
		runs = [][]string{{STUN1IP}, {STUN2IP}}
	}
	for _, ips := range runs {
		args := append([]string{l.script, "run-coturn", l.Prefix, l.Dir}, ips...)
		p := l.startRoot("coturn-"+ips[0], "coturn-"+ips[0]+".out", args...)
		l.mu.Lock()
		l.coturn = append(l.coturn, p)
		l.mu.Unlock()
	}
}

// The SRV lab's provider: a second registrar and a DNS server, more
// addresses of the provider namespace (lab.sh run-kamailio SECOND,
// run-dnsmasq). The DNS answers _sip._udp.sip.provider.test with kam1
// (ProviderIP, priority 10) and kam2 (Provider2IP, priority 20).
const (
	Provider2IP   = "198.51.100.51"
	Provider2Addr = Provider2IP + ":5060"
	DNSIP         = "198.51.100.53"
)

// StartSecondRegistrar starts a second Kamailio on Provider2Addr, with a
// directory (location table, control socket) of its own, and waits until
// it answers OPTIONS.
func (l *Lab) StartSecondRegistrar() *Proc {
	l.t.Helper()
	p := l.startRoot("kamailio2", "kamailio2.log", l.script, "run-kamailio", l.Prefix, filepath.Join(l.Dir, "kam2"), "SECOND")
	for deadline := time.Now().Add(15 * time.Second); ; {
		if code, err := l.SIPOptions(NSPhone, PhoneIP+":0", Provider2Addr, 500*time.Millisecond); err == nil && code == 200 {
			return p
		}
		if p.Exited() || time.Now().After(deadline) {
			l.t.Fatalf("the second registrar did not answer OPTIONS:\n%s", tail(p.Log(), 20))
		}
	}
}

// StartDNS starts the provider's DNS server and points the daemon's
// namespace at it (/etc/netns/PREFIX-lm/resolv.conf, which ip netns exec
// mounts over /etc/resolv.conf: start the daemon after this). It waits
// until the server has bound DNSIP:53.
func (l *Lab) StartDNS() *Proc {
	l.t.Helper()
	p := l.startRoot("dnsmasq", "dnsmasq.log", l.script, "run-dnsmasq", l.Prefix, l.Dir)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err := l.Exec(NSProvider, "ss", "-Hlun", "sport", "= :53")
		if err == nil && strings.Contains(out, DNSIP+":53") {
			if _, err := os.Stat(filepath.Join("/etc/netns", l.NS(NSLM), "resolv.conf")); err == nil {
				return p
			}
		}
		if p.Exited() || time.Now().After(deadline) {
			l.t.Fatalf("dnsmasq did not bind %s:53:\n%s", DNSIP, tail(p.Log(), 20))
		}
	}
}

// NAT modes of the lab router (SetNATMode).
const (
	NATPreserve    = "preserve"     // port-preserving MASQUERADE, the default: port-restricted cone
	NATRandomFully = "random-fully" // MASQUERADE --random-fully: symmetric
)

// SetNATMode switches the router's MASQUERADE between port-preserving and
// --random-fully and flushes its conntrack table.
func (l *Lab) SetNATMode(mode string) error {
	if out, err := l.script1(30*time.Second, "nat-mode", l.Prefix, mode); err != nil {
		return fmt.Errorf("nat-mode %s: %v: %s", mode, err, out)
	}
	return nil
}

// SetSIPALG attaches Linux's SIP ALG (the sip conntrack helper, with
// nf_nat_sip on the NATed flow) to the router's flows to UDP 5060, or
// detaches it, and flushes the router's conntrack table.
func (l *Lab) SetSIPALG(on bool) error {
	mode := map[bool]string{true: "on", false: "off"}[on]
	if out, err := l.script1(30*time.Second, "sip-alg", l.Prefix, mode); err != nil {
		return fmt.Errorf("sip-alg %s: %v: %s", mode, err, out)
	}
	return nil
}

// RouterRule runs lab.sh port-forward PREFIX PORTS or lab.sh hairpin PREFIX
// (cmd "port-forward" or "hairpin").
func (l *Lab) RouterRule(cmd string, args ...string) error {
	if out, err := l.script1(30*time.Second, append([]string{cmd, l.Prefix}, args...)...); err != nil {
		return fmt.Errorf("%s: %v: %s", cmd, err, out)
	}
	return nil
}

// StopSTUN stops coturn (both STUN addresses go down).
func (l *Lab) StopSTUN() {
	l.mu.Lock()
	cs := l.coturn
	l.coturn = nil
	l.mu.Unlock()
	for _, p := range cs {
		p.Stop(5 * time.Second)
	}
}

// StartSTUN (re)starts coturn and waits until both addresses answer.
func (l *Lab) StartSTUN() error {
	l.mu.Lock()
	running := len(l.coturn) > 0
	l.mu.Unlock()
	if !running {
		l.startCoturn()
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range []string{STUN1Addr, STUN2Addr} {
		if err := l.waitSTUN(s, deadline); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) waitSTUN(server string, deadline time.Time) error {
	for {
		_, err := l.STUNBinding(NSPhone, PhoneIP+":0", server, 500*time.Millisecond)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("STUN %s: %w", server, err)
		}
		l.mu.Lock()
		var dead []string
		for _, p := range l.coturn {
			if p.Exited() {
				dead = append(dead, p.Name+": "+tail(p.Log(), 10))
			}
		}
		l.mu.Unlock()
		if len(dead) > 0 {
			return fmt.Errorf("coturn exited: %s", strings.Join(dead, "\n"))
		}
	}
}

func (l *Lab) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		code, err := l.SIPOptions(NSPhone, PhoneIP+":0", ProviderAddr, 500*time.Millisecond)
		if err == nil && code == 200 {
			break
		}
		if l.kamailio.Exited() {
			return fmt.Errorf("kamailio exited (code %d):\n%s", l.kamailio.ExitCode(), tail(l.kamailio.Log(), 30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kamailio does not answer OPTIONS: %v (code %d)\n%s", err, code, tail(l.kamailio.Log(), 30))
		}
	}
	// the control socket for kamcmd
	for {
		if _, err := os.Stat(l.ctlSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no kamailio control socket %s", l.ctlSock)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !l.opts.noSTUNServer {
		for _, s := range []string{STUN1Addr, STUN2Addr} {
			if err := l.waitSTUN(s, deadline); err != nil {
				return err
			}
		}
	}
	return nil
}

// NS maps a short name ("lm", "router", ...) to the lab's namespace name.
func (l *Lab) NS(name string) string { return l.Prefix + "-" + name }

// WANIP is the router's current public address.
func (l *Lab) WANIP() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.wanIP
}

func (l *Lab) script1(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{l.script}, args...)...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("LAB_PROTECT_PID=%d", os.Getpid()))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Exec runs args inside namespace ns (short name), bounded to 60 s, and
// returns the combined output.
func (l *Lab) Exec(ns string, args ...string) (string, error) {
	return l.ExecTimeout(60*time.Second, ns, args...)
}

// ExecTimeout is Exec with an explicit bound.
func (l *Lab) ExecTimeout(timeout time.Duration, ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append([]string{"netns", "exec", l.NS(ns)}, args...)
	out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns, err, strings.TrimSpace(tail(string(out), 10)))
	}
	return string(out), err
}

// Start runs args inside namespace ns in the background, output to logfile
// (relative names land in the lab dir). It is stopped by PID on cleanup.
func (l *Lab) Start(ns, logfile string, args ...string) *Proc {
	l.t.Helper()
	argv := append([]string{"ip", "netns", "exec", l.NS(ns)}, args...)
	return l.startRoot(filepath.Base(args[0])+"@"+ns, logfile, argv...)
}

// startRoot starts argv (which itself enters a namespace, e.g. through
// "ip netns exec", which execs: the PID stays the same).
func (l *Lab) startRoot(name, logfile string, argv ...string) *Proc {
	l.t.Helper()
	if !filepath.IsAbs(logfile) {
		logfile = filepath.Join(l.Dir, logfile)
	}
	f, err := os.OpenFile(logfile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatalf("log file: %v", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Stdin = nil
	p := &Proc{Name: name, Cmd: cmd, LogPath: logfile, done: make(chan struct{}), logFile: f}
	if err := cmd.Start(); err != nil {
		f.Close()
		l.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p
}

// Redial changes the router's WAN address (e.g. to WANIP2), flushes the
// router's conntrack table and the Internet hosts' ARP caches.
func (l *Lab) Redial(newIP string) error {
	if out, err := l.script1(30*time.Second, "redial", l.Prefix, newIP); err != nil {
		return fmt.Errorf("redial: %v: %s", err, out)
	}
	l.mu.Lock()
	l.wanIP = newIP
	l.mu.Unlock()
	return nil
}

// FlushConntrack empties the router's conntrack table.
func (l *Lab) FlushConntrack() error {
	_, err := l.Exec(NSRouter, "conntrack", "-F")
	return err
}

// ConntrackEntry is one UDP entry of the router's conntrack table.
type ConntrackEntry struct {
	Orig, Reply Tuple
	TTL         int // seconds left
	Unreplied   bool
	Assured     bool
	Raw         string
}

// Tuple is one direction of a conntrack entry.
type Tuple struct {
	Src, Dst     string
	Sport, Dport int
}

func (t Tuple) String() string { return fmt.Sprintf("%s:%d->%s:%d", t.Src, t.Sport, t.Dst, t.Dport) }

// ConntrackList returns the router's UDP conntrack entries.
func (l *Lab) ConntrackList() ([]ConntrackEntry, error) {
	out, err := l.Exec(NSRouter, "conntrack", "-L", "-p", "udp")
	if err != nil {
		return nil, err
	}
	return parseConntrack(out), nil
}

func parseConntrack(out string) []ConntrackEntry {
	var res []ConntrackEntry
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "udp" {
			continue
		}
		e := ConntrackEntry{Raw: line}
		e.TTL, _ = strconv.Atoi(f[2])
		tp := &e.Orig
		seen := map[string]bool{}
		for _, tok := range f[3:] {
			switch tok {
			case "[UNREPLIED]":
				e.Unreplied = true
				continue
			case "[ASSURED]":
				e.Assured = true
				continue
			}
			k, v, ok := strings.Cut(tok, "=")
			if !ok {
				continue
			}
			if seen[k] && tp == &e.Orig {
				tp = &e.Reply
				seen = map[string]bool{}
			}
			seen[k] = true
			switch k {
			case "src":
				tp.Src = v
			case "dst":
				tp.Dst = v
			case "sport":
				tp.Sport, _ = strconv.Atoi(v)
			case "dport":
				tp.Dport, _ = strconv.Atoi(v)
			}
		}
		res = append(res, e)
	}
	return res
}

// ErrNotRegistered is returned by KamailioContact when the AOR has no contact.
var ErrNotRegistered = errors.New("not registered at the provider")

// ULContact is one registered contact in Kamailio's location table.
type ULContact struct {
	Address  string // Contact URI as registered
	Received string // host:port the REGISTER came from ("" if none)
	Expires  int
	CallID   string
	UA       string
}

// KamailioContacts returns all contacts Kamailio has for user.
func (l *Lab) KamailioContacts(user string) ([]ULContact, error) {
	out, err := l.Kamcmd("ul.lookup", "location", "s:"+user)
	if err != nil {
		if strings.Contains(out, "404") || strings.Contains(err.Error(), "404") {
			return nil, ErrNotRegistered
		}
		return nil, err
	}
	var res []ULContact
	var cur *ULContact
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "Contact:") && strings.HasSuffix(line, "{") {
			res = append(res, ULContact{})
			cur = &res[len(res)-1]
			continue
		}
		if cur == nil {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Address":
			cur.Address = v
		case "Received":
			if v != "[not set]" {
				v = strings.TrimPrefix(v, "sip:")
				v, _, _ = strings.Cut(v, ";")
				cur.Received = v
			}
		case "Expires":
			cur.Expires, _ = strconv.Atoi(v)
		case "Call-ID":
			cur.CallID = v
		case "User-Agent":
			cur.UA = v
		}
	}
	if len(res) == 0 {
		return nil, ErrNotRegistered
	}
	return res, nil
}

// KamailioContact returns the received address (host:port), contact URI and
// remaining expiry of the most recently registered contact of user.
func (l *Lab) KamailioContact(user string) (received, contact string, expires int, err error) {
	cs, err := l.KamailioContacts(user)
	if err != nil {
		return "", "", 0, err
	}
	c := cs[len(cs)-1]
	return c.Received, c.Address, c.Expires, nil
}

// WaitKamailioContact polls the location table until pred holds for some contact.
func (l *Lab) WaitKamailioContact(user string, timeout time.Duration, pred func(ULContact) bool) (ULContact, error) {
	deadline := time.Now().Add(timeout)
	var last []ULContact
	var lastErr error
	for {
		cs, err := l.KamailioContacts(user)
		last, lastErr = cs, err
		for _, c := range cs {
			if pred(c) {
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			return ULContact{}, fmt.Errorf("no matching contact for %s within %v (have %+v, err %v)", user, timeout, last, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kamcmd runs kamcmd against the lab's Kamailio.
func (l *Lab) Kamcmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "kamcmd", append([]string{"-s", "unix:" + l.ctlSock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kamcmd %v: %w: %s", args, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// KamailioLog returns Kamailio's log so far.
func (l *Lab) KamailioLog() string { return l.kamailio.Log() }

// StopKamailio stops the provider (by PID); StartKamailio starts it
// again, with an empty location table (usrloc db_mode 0): a provider
// restart. Only the test goroutine may call them.
func (l *Lab) StopKamailio() { l.kamailio.Stop(5 * time.Second) }

func (l *Lab) StartKamailio() error {
	l.kamailio = l.startRoot("kamailio", "kamailio.log", l.kargs...)
	return l.waitReady(15 * time.Second)
}

// ListenUDP opens a UDP socket inside namespace ns (short name) bound to
// addr. The socket stays in that namespace; use it from the test process.
func (l *Lab) ListenUDP(ns, addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	var conn *net.UDPConn
	err = l.inNetns(ns, func() error {
		var e error
		conn, e = net.ListenUDP("udp4", ua)
		return e
	})
	return conn, err
}

// inNetns runs f on a locked OS thread that has joined namespace ns. The
// thread is never unlocked, so Go discards it when the goroutine ends and
// no other goroutine ever runs in the lab namespace.
func (l *Lab) inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+l.NS(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", l.NS(ns), err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", l.NS(ns), err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// STUNBinding sends RFC 5389 Binding requests from laddr (inside ns) to
// server, retransmitting within timeout, and returns the mapped address.
func (l *Lab) STUNBinding(ns, laddr, server string, timeout time.Duration) (netip.AddrPort, error) {
	conn, err := l.ListenUDP(ns, laddr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer conn.Close()
	return stunOn(conn, server, timeout)
}

func stunOn(conn *net.UDPConn, server string, timeout time.Duration) (netip.AddrPort, error) {
	raddr, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		return netip.AddrPort{}, err
	}
	req := newBindingRequest()
	deadline := time.Now().Add(timeout)
	rto := 100 * time.Millisecond
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := conn.WriteToUDP(req.Raw, raddr); err != nil {
			return netip.AddrPort{}, err
		}
		wait := time.Now().Add(rto)
		if wait.After(deadline) {
			wait = deadline
		}
		_ = conn.SetReadDeadline(wait)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				break
			}
			if a, ok := mappedFrom(buf[:n], req); ok {
				return netip.ParseAddrPort(a)
			}
		}
		if rto < 800*time.Millisecond {
			rto *= 2
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no STUN answer from %s within %v", server, timeout)
}

func newBindingRequest() *stun.Message {
	return stun.MustBuild(stun.TransactionID, stun.BindingRequest)
}

// mappedFrom decodes a STUN answer to req and returns the mapped "ip:port"
// (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from RFC 3489 servers).
func mappedFrom(pkt []byte, req *stun.Message) (string, bool) {
	res := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if res.Decode() != nil || res.TransactionID != req.TransactionID {
		return "", false
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(res); err == nil {
		return fmt.Sprintf("%s:%d", xa.IP, xa.Port), true
	}
	var ma stun.MappedAddress
	if err := ma.GetFrom(res); err == nil {
		return fmt.Sprintf("%s:%d", ma.IP, ma.Port), true
	}
	return "", false
}

var statusRE = regexp.MustCompile(`^SIP/2\.0 (\d{3})`)

// SIPOptions sends one out-of-dialog OPTIONS from laddr (inside ns) to target
// (retransmitted within timeout) and returns the response code.
func (l *Lab) SIPOptions(ns, laddr, target string, timeout time.Duration) (int, error) {
	conn, err := l.ListenUDP(ns, laddr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raddr, err := net.ResolveUDPAddr("udp4", target)
	if err != nil {
		return 0, err
	}
	la := conn.LocalAddr().(*net.UDPAddr)
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	id := hex.EncodeToString(rb[:])
	msg := fmt.Sprintf("OPTIONS sip:%s SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP %s;branch=z9hG4bK-lab-%s;rport\r\n"+
		"From: <sip:probe@%s>;tag=%s\r\nTo: <sip:%s>\r\nCall-ID: %s@lab\r\nCSeq: 1 OPTIONS\r\n"+
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n", target, la, id, la.IP, id, target, id)
	deadline := time.Now().Add(timeout)
	rto := 100 * time.Millisecond
	buf := make([]byte, 65535)
	for time.Now().Before(deadline) {
		if _, err := conn.WriteToUDP([]byte(msg), raddr); err != nil {
			return 0, err
		}
		wait := time.Now().Add(rto)
		if wait.After(deadline) {
			wait = deadline
		}
		_ = conn.SetReadDeadline(wait)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				break
			}
			s := string(buf[:n])
			if !strings.Contains(s, id) {
				continue
			}
			if m := statusRE.FindStringSubmatch(s); m != nil {
				code, _ := strconv.Atoi(m[1])
				if code >= 200 {
					return code, nil
				}
			}
		}
		if rto < 500*time.Millisecond {
			rto *= 2
		}
	}
	return 0, fmt.Errorf("no answer to OPTIONS from %s within %v", target, timeout)
}

// allocPorts returns n consecutive free-by-construction ports for helper
// processes (sipp control/media ports) so parallel helpers do not collide.
func (l *Lab) allocPorts(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.portNext
	l.portNext += n
	return p
}

func (l *Lab) nextSeq() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	return l.seq
}

func (l *Lab) cleanup() {
	failed := l.t.Failed()
	if failed {
		// state at failure time, before anything is stopped
		if out, err := l.Exec(NSRouter, "conntrack", "-L"); err == nil {
			l.t.Logf("router conntrack at failure:\n%s", out)
		}
		if out, err := l.Kamcmd("ul.dump"); err == nil {
			l.t.Logf("kamailio ul.dump at failure:\n%s", tail(out, 40))
		}
	}
	l.mu.Lock()
	procs := append([]*Proc(nil), l.procs...)
	l.mu.Unlock()
	// stop in reverse start order, by PID
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(5 * time.Second)
	}
	if failed {
		for _, p := range procs {
			n := 25
			if strings.HasPrefix(p.Name, "kamailio") || strings.Contains(p.Name, "linkmanager") {
				n = 60
			}
			l.t.Logf("---- tail of %s (%s, exit %d):\n%s", p.Name, p.LogPath, p.ExitCode(), tail(p.Log(), n))
			// The daemon is built with -race: show the whole report, which
			// the tail usually misses.
			if log := p.Log(); strings.Contains(log, "WARNING: DATA RACE") {
				at := strings.Index(log, "==================\nWARNING: DATA RACE")
				l.t.Logf("---- data race in %s:\n%s", p.Name, log[max(at, 0):])
			}
		}
		for _, ip := range []string{STUN1IP, STUN2IP} {
			if b, err := os.ReadFile(filepath.Join(l.Dir, "coturn-"+ip+".log")); err == nil {
				l.t.Logf("---- tail of coturn %s log:\n%s", ip, tail(string(b), 10))
			}
		}
	}
	// namespace sweep: anything still running in our namespaces is ours
	if out, err := l.script1(60*time.Second, "net-down", l.Prefix); err != nil {
		l.t.Errorf("lab net-down %s: %v\n%s", l.Prefix, err, out)
	}
	trackLab(l, false)
	if failed && os.Getenv("LAB_KEEP_DIR") != "" {
		l.t.Logf("lab dir kept: %s", l.Dir)
		return
	}
	_ = os.RemoveAll(l.Dir)
}

// teardown is the signal-time cleanup: stop our processes, delete our namespaces.
func (l *Lab) teardown() {
	l.mu.Lock()
	procs := append([]*Proc(nil), l.procs...)
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(2 * time.Second)
	}
	_, _ = l.script1(30*time.Second, "net-down", l.Prefix)
	_ = os.RemoveAll(l.Dir)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// UDPInDatagrams returns the Udp InDatagrams counter of namespace ns (from
// /proc/net/snmp, which is per network namespace): in the "stun" or
// "provider" namespace it counts what reached the STUN servers or Kamailio.
func (l *Lab) UDPInDatagrams(ns string) (int64, error) {
	out, err := l.Exec(ns, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		for i, n := range names {
			if n == "InDatagrams" && i+1 < len(f) {
				return strconv.ParseInt(f[i+1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no Udp InDatagrams in /proc/net/snmp of %s", ns)
}
