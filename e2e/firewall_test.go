//go:build linux

package e2e

// `linkmanager firewall` (issue 4, item 4): the nftables rules it prints for
// the lab config replace the lab router's default FORWARD allow rules, and
// the daemon still registers through the NAT, takes inbound calls and
// relays media; with one rule removed, the traffic that rule is for stops.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Rule comments of the generated nftables forward chain (lab config).
const (
	fwSIPOut  = "1 SIP out to " + ProviderAddr
	fwSIPIn   = "2 SIP answers and requests from " + ProviderAddr
	fwRTPOut  = "3 RTP out to anywhere"
	fwRTPIn   = "4 RTP in from anywhere"
	fwSIPDrop = "SIP/STUN out to a host not listed above"
)

// runFirewall runs `linkmanager firewall ARGS` inside the lm namespace and
// returns stdout, stderr and the exit code.
func runFirewall(t *testing.T, l *Lab, args ...string) (string, string, int) {
	t.Helper()
	return runCommand(t, l, append([]string{"firewall"}, args...)...)
}

// runCommand runs `linkmanager ARGS` inside the lm namespace and returns
// stdout, stderr and the exit code.
func runCommand(t *testing.T, l *Lab, args ...string) (string, string, int) {
	t.Helper()
	argv := []string{"netns", "exec", l.NS(NSLM), daemonBinary(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append(argv, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			t.Fatalf("linkmanager %s: %v", args[0], err)
		}
	}
	return stdout.String(), stderr.String(), code
}

// fwRouter manages the nftables table in the lab router.
type fwRouter struct {
	t     *testing.T
	l     *Lab
	rules string // path of the generated nftables file
}

// replaceForward removes the router's default FORWARD allow rules (iptables:
// lan->wan, wan->lan ESTABLISHED,RELATED, policy DROP) and loads the
// generated table instead. The iptables FORWARD chain is left empty with
// policy ACCEPT: netfilter drops a packet that any base chain on the hook
// drops, so an iptables policy DROP would override the table's accepts. The
// table's own forward chain (policy drop) is now the router's whole forward
// filter. MASQUERADE (iptables nat POSTROUTING) stays.
func (r *fwRouter) replaceForward() {
	r.t.Helper()
	for _, argv := range [][]string{
		{"iptables", "-F", "FORWARD"},
		{"iptables", "-P", "FORWARD", "ACCEPT"},
	} {
		if out, err := r.l.Exec(NSRouter, argv...); err != nil {
			r.t.Fatalf("%v: %s", err, out)
		}
	}
	r.load(r.rules)
	fwd, _ := r.l.Exec(NSRouter, "iptables", "-S", "FORWARD")
	if strings.TrimSpace(fwd) != "-P FORWARD ACCEPT" {
		r.t.Fatalf("iptables FORWARD still has rules:\n%s", fwd)
	}
	nat, _ := r.l.Exec(NSRouter, "iptables", "-t", "nat", "-S", "POSTROUTING")
	if !strings.Contains(nat, "MASQUERADE") {
		r.t.Fatalf("MASQUERADE is gone:\n%s", nat)
	}
	tbl := r.list()
	if !strings.Contains(tbl, "policy drop;") {
		r.t.Fatalf("the loaded forward chain has no policy drop:\n%s", tbl)
	}
	ver, _ := r.l.Exec(NSRouter, "iptables", "-V")
	r.t.Logf("router: iptables FORWARD emptied (%s), nft table inet linkmanager loaded (policy drop), MASQUERADE kept", strings.TrimSpace(ver))
}

// load loads an nftables file in the router (it replaces the table).
func (r *fwRouter) load(path string) {
	r.t.Helper()
	if out, err := r.l.Exec(NSRouter, "nft", "-f", path); err != nil {
		r.t.Fatalf("nft -f %s: %v: %s", path, err, out)
	}
}

// restore reloads the full generated rules.
func (r *fwRouter) restore() {
	r.t.Helper()
	r.load(r.rules)
	r.t.Log("restored the full generated table")
}

// list is the forward chain with handles and counters.
func (r *fwRouter) list() string {
	r.t.Helper()
	out, err := r.l.Exec(NSRouter, "nft", "-a", "list", "chain", "inet", "linkmanager", "forward")
	if err != nil {
		r.t.Fatalf("nft list: %v: %s", err, out)
	}
	return out
}

// ruleLine is the listed rule with the given comment.
func (r *fwRouter) ruleLine(comment string) string {
	r.t.Helper()
	for _, line := range strings.Split(r.list(), "\n") {
		if strings.Contains(line, `comment "`+comment+`"`) {
			return line
		}
	}
	r.t.Fatalf("no rule with comment %q in:\n%s", comment, r.list())
	return ""
}

var (
	handleRE  = regexp.MustCompile(`# handle (\d+)`)
	counterRE = regexp.MustCompile(`counter packets (\d+)`)
)

// remove deletes the rule with the given comment from the loaded table.
func (r *fwRouter) remove(comment string) {
	r.t.Helper()
	m := handleRE.FindStringSubmatch(r.ruleLine(comment))
	if m == nil {
		r.t.Fatalf("no handle for %q", comment)
	}
	if out, err := r.l.Exec(NSRouter, "nft", "delete", "rule", "inet", "linkmanager", "forward", "handle", m[1]); err != nil {
		r.t.Fatalf("nft delete rule: %v: %s", err, out)
	}
	r.t.Logf("control: removed rule %q", comment)
}

// counter is the packet counter of the rule with the given comment.
func (r *fwRouter) counter(comment string) int {
	r.t.Helper()
	m := counterRE.FindStringSubmatch(r.ruleLine(comment))
	if m == nil {
		r.t.Fatalf("rule %q has no counter", comment)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// udpProbe sends a datagram from the daemon's address and port sport (lm
// namespace) to a socket of the phone, and the phone answers to where it
// came from: RTP out (rule 3) and its answer in (rule 4) through the
// router. Both sockets send unmarked (DSCP 0); it reports which legs
// arrived and the DSCP each arrived with (the router's qos chain).
func udpProbe(t *testing.T, l *Lab, sport int) (out, back bool, dscpOut, dscpBack int) {
	t.Helper()
	lm, err := l.ListenUDP(NSLM, fmt.Sprintf("%s:%d", DaemonIP, sport))
	if err != nil {
		t.Fatalf("bind %s:%d: %v", DaemonIP, sport, err)
	}
	defer lm.Close()
	phone, err := l.ListenUDP(NSPhone, PhoneIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer phone.Close()
	recvTOS(t, lm)
	recvTOS(t, phone)
	for range 3 { // bounded: three tries of 400 ms
		if _, err := lm.WriteTo([]byte("probe"), phone.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		from, dscp, err := readDSCP(phone, 400*time.Millisecond)
		if err != nil {
			continue
		}
		out, dscpOut = true, dscp
		if want := fmt.Sprintf("%s:%d", WANIP1, sport); from.String() != want {
			t.Errorf("the phone saw the probe from %s, want %s (MASQUERADE, port kept)", from, want)
		}
		for range 3 {
			if _, err := phone.WriteToUDP([]byte("answer"), from); err != nil {
				t.Fatal(err)
			}
			if _, dscp, err := readDSCP(lm, 400*time.Millisecond); err == nil {
				return true, true, dscpOut, dscp
			}
		}
		return true, false, dscpOut, -1
	}
	return false, false, -1, -1
}

// recvTOS makes the socket report each datagram's TOS byte.
func recvTOS(t *testing.T, c *net.UDPConn) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1)
	}); err != nil || serr != nil {
		t.Fatalf("IP_RECVTOS: %v %v", err, serr)
	}
}

// readDSCP reads one datagram and returns its source and DSCP (-1: unknown).
func readDSCP(c *net.UDPConn, timeout time.Duration) (*net.UDPAddr, int, error) {
	buf, oob := make([]byte, 64), make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, oobn, _, from, err := c.ReadMsgUDP(buf, oob)
	if err != nil {
		return nil, -1, err
	}
	dscp := -1
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0 {
			dscp = int(m.Data[0] >> 2)
		}
	}
	return from, dscp, nil
}

// expectProbe checks one probe against the expected legs; what arrives
// must carry wantDSCP (46, EF, from the router's qos chain).
func expectProbe(t *testing.T, l *Lab, sport int, wantOut, wantBack bool, wantDSCP int, what string) {
	t.Helper()
	out, back, dOut, dBack := udpProbe(t, l, sport)
	t.Logf("%s: %s:%d -> phone arrived %v (DSCP %d), answer back arrived %v (DSCP %d)", what, DaemonIP, sport, out, dOut, back, dBack)
	if out != wantOut || back != wantBack {
		t.Errorf("%s: out %v back %v, want out %v back %v", what, out, back, wantOut, wantBack)
	}
	if (out && dOut != wantDSCP) || (back && dBack != wantDSCP) {
		t.Errorf("%s: DSCP out %d back %d, want %d", what, dOut, dBack, wantDSCP)
	}
}

// waitUDPPort waits (bounded) until something listens on ip:port in ns.
func waitUDPPort(t *testing.T, l *Lab, ns, ip string, port int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := l.Exec(ns, "ss", "-Hlun", "sport", "= :"+strconv.Itoa(port))
		if err == nil && strings.Contains(out, ip+":"+strconv.Itoa(port)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s:%d in %s", ip, port, ns)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// answeredCall has the phone call the DID while a PBX sipp answers it
// (uas.xml: 200 with SDP), captures UDP at the phone and returns the final
// code and how many packets reached the phone from the router's public
// address on a relay pool port: the daemon's pinhole and keepalive RTP.
func answeredCall(t *testing.T, l *Lab) (code, relayed int) {
	t.Helper()
	uas := l.StartUAS(NSPBX, PBXIP, 5060, 30*time.Second)
	defer uas.Stop(2 * time.Second)
	waitUDPPort(t, l, NSPBX, PBXIP, 5060)
	bpf := fmt.Sprintf("udp and src host %s and src portrange %d-%d", WANIP1, PoolMin, PoolMax)
	c := l.StartCapture(NSPhone, "eth0", bpf)
	res, err := l.Call(CallSpec{Number: DID, Hold: 3 * time.Second, Timeout: 20 * time.Second})
	time.Sleep(300 * time.Millisecond) // the last packets in flight
	pcap := c.Stop()
	if err != nil {
		t.Logf("call: %v", err)
	}
	n, err := CountPackets(pcap, "")
	if err != nil {
		t.Fatal(err)
	}
	return res.Code, n
}

// The generated nftables rules in place of the lab router's default
// forwarding rules: registration through the NAT, an inbound call to the
// PBX, relayed RTP; and for each of SIP out, SIP in, RTP out and RTP in, a
// control with that rule removed in which the traffic stops.
func TestFirewallLabRouter(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	if _, err := exec.LookPath("nft"); err != nil {
		if isCI() {
			t.Fatal("nft missing (apt-get install nftables)")
		}
		t.Skip("nft missing (apt-get install nftables)")
	}
	cfg := DaemonConfig{}.YAML()
	cfgPath := filepath.Join(l.Dir, "firewall-lab.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rules, stderr, code := runFirewall(t, l, "--config", cfgPath, "--format", "nftables", "--policy", "drop")
	if code != 0 {
		t.Fatalf("linkmanager firewall exited %d: %s", code, stderr)
	}
	for _, want := range []string{
		`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.60 udp dport 3478 accept`,
		`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.61 udp dport 3478 accept`,
		`ip saddr 192.168.100.2 udp sport 65002 ip daddr 198.51.100.50 udp dport 5060 accept`,
		`ip saddr 198.51.100.50 ip daddr 192.168.100.2 udp dport 65002 accept`,
		`ip saddr 192.168.100.2 udp sport 55000-56000 accept`,
		`ip daddr 192.168.100.2 udp dport 55000-56000 accept`,
		`ip dscp set ef`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("generated rules lack %q", want)
		}
	}
	rulesPath := filepath.Join(l.Dir, "firewall-lab.nft")
	if err := os.WriteFile(rulesPath, []byte(rules), 0o644); err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		t.Fatalf("generated:\n%s", rules)
	}
	fw := &fwRouter{t: t, l: l, rules: rulesPath}
	fw.replaceForward()

	// RTP (rules 3 and 4), before the daemon runs, with probes from its
	// address: a pool port passes both ways, marked EF by the qos chain; a
	// port outside every rule does not pass; each direction stops when its
	// rule is removed.
	expectProbe(t, l, 55990, true, true, 46, "pool port")
	expectProbe(t, l, 54000, false, false, 46, "control: port outside the rules")
	fw.remove(fwRTPIn)
	expectProbe(t, l, 55992, true, false, 46, "control: without rule 4")
	fw.remove(fwRTPOut)
	expectProbe(t, l, 55994, false, false, 46, "control: without rules 3 and 4")
	fw.restore()
	expectProbe(t, l, 55996, true, true, 46, "pool port after restore")
	// The EF mark is the router's: without the qos chain the probes (sent
	// unmarked) arrive unmarked.
	if out, err := l.Exec(NSRouter, "nft", "delete", "chain", "inet", "linkmanager", "qos"); err != nil {
		t.Fatalf("nft delete chain qos: %v: %s", err, out)
	}
	expectProbe(t, l, 55998, true, true, 0, "control: without the qos chain")
	fw.restore()

	// SIP out (rule 1): without the rule to the provider the daemon does
	// not register, and the router's catch-all drop counts its REGISTERs.
	noSIPOut := strings.Replace(rules, `comment "`+fwSIPOut+`"`, `comment "removed"`, 1)
	var kept []string
	for _, line := range strings.Split(noSIPOut, "\n") {
		if !strings.Contains(line, `comment "removed"`) {
			kept = append(kept, line)
		}
	}
	noSIPOutPath := filepath.Join(l.Dir, "firewall-lab-no-sip-out.nft")
	if err := os.WriteFile(noSIPOutPath, []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	fw.load(noSIPOutPath)
	t.Logf("control: loaded the table without rule %q", fwSIPOut)
	// The PBX answers every INVITE with 480 (as in the trunk tests).
	busy, err := l.StartRegisteringUA(UASpec{NS: NSPBX, IP: PBXIP, Port: 5060, NoRegister: true})
	if err != nil {
		t.Fatalf("start the PBX: %v", err)
	}
	d := l.StartDaemon(cfg)
	if e, err := d.AwaitLog(8*time.Second, Msg("registered", "trunk", "provider")); err == nil {
		t.Errorf("control: registered without the SIP out rule: %v", e)
	}
	if n := fw.counter(fwSIPDrop); n == 0 {
		t.Errorf("control: the catch-all drop saw no packet from the daemon's 65002")
	} else {
		t.Logf("control: not registered after 8 s; the router dropped %d packets from 192.168.100.2:65002", n)
	}
	if cs, err := l.KamailioContacts(TrunkUser); err != ErrNotRegistered {
		t.Errorf("control: the provider has a contact without the SIP out rule: %+v (%v)", cs, err)
	}

	// The full rules: registration through the NAT.
	fw.restore()
	start := time.Now()
	e := d.WaitLog(t, 45*time.Second, Msg("registered", "trunk", "provider"))
	t.Logf("registered %v after the rule came back: public_addr %s", time.Since(start).Round(time.Millisecond), Field(e, "public_addr"))
	c, err := l.WaitKamailioContact(TrunkUser, 5*time.Second, func(c ULContact) bool { return c.Received == daemonPublic })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("provider location: received %s contact %s", c.Received, c.Address)

	// An inbound call reaches the PBX through the daemon: 480 from the PBX.
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || code != 480 {
		t.Errorf("call to the DID: code %d err %v; want 480 from the PBX through the daemon", code, err)
	} else {
		t.Log("call to the DID: 480 from the PBX through the daemon")
	}
	d.WaitLog(t, 5*time.Second, Msg("inbound call"))

	// SIP in (rule 2): without it the provider's INVITE dies at the router.
	fw.remove(fwSIPIn)
	code, err = l.CallDID(DID, 20*time.Second)
	t.Logf("control: call to the DID without rule 2: code %d (err %v)", code, err)
	if code == 480 || code == 0 {
		t.Errorf("control: call to the DID got %d without the SIP in rule; want a failure such as 408", code)
	}
	if _, err := d.AwaitLog(time.Second, Msg("inbound call")); err == nil {
		t.Error("control: the INVITE reached the daemon without the SIP in rule")
	}
	fw.restore()
	if code, err := l.CallDID(DID, 20*time.Second); err != nil || code != 480 {
		t.Errorf("call to the DID after restore: code %d err %v; want 480", code, err)
	}
	d.WaitLog(t, 5*time.Second, Msg("inbound call"))

	// RTP out (rule 3) with a real answered call: the daemon's relay sends
	// its pinhole and keepalive RTP from a pool port to the phone's SDP
	// address; without rule 3 none of it leaves the router, while the call
	// itself (SIP) still completes.
	busy.Stop(2 * time.Second)
	code, relayed := answeredCall(t, l)
	t.Logf("answered call: code %d, %d relay packets from %s:%d-%d reached the phone", code, relayed, WANIP1, PoolMin, PoolMax)
	if code != 200 || relayed == 0 {
		t.Errorf("answered call: code %d, %d relay packets at the phone; want 200 and at least 1", code, relayed)
	}
	fw.remove(fwRTPOut)
	code, relayed = answeredCall(t, l)
	t.Logf("control: without rule 3: code %d, %d relay packets reached the phone", code, relayed)
	if code != 200 || relayed != 0 {
		t.Errorf("control: without rule 3: code %d, %d relay packets at the phone; want 200 and 0", code, relayed)
	}
	fw.restore()
	stopDaemonClean(t, d)
}

// stopDaemonClean stops the daemon and fails on a non-zero exit (66: a data
// race; the e2e daemon is built with -race).
func stopDaemonClean(t *testing.T, d *Daemon) {
	t.Helper()
	if code := d.Stop(); code != 0 {
		t.Errorf("daemon exit code %d after SIGTERM, want 0:\n%s", code, tail(d.Log(), 30))
	}
}

// The subcommand itself: its man-page help and exit codes.
func TestFirewallCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon; skipped in -short mode")
	}
	t.Parallel()
	bin := daemonBinary(t)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"firewall"}, args...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "LINKMANAGER_TRUNK_PASSWORD=") // passwords are not needed
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return o.String(), e.String(), code
	}

	help, _, code := run("--help")
	if code != 0 {
		t.Errorf("--help exited %d", code)
	}
	for _, s := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "--format", "--address", "--policy", "--no-resolve"} {
		if !strings.Contains(help, s) {
			t.Errorf("--help lacks %q", s)
		}
	}

	lab := filepath.Join("e2e", "lab", "linkmanager-lab.yaml")
	for _, f := range []string{"nftables", "iptables", "text"} {
		out, stderr, code := run("--config", lab, "--format", f)
		if code != 0 || !strings.Contains(out, "198.51.100.50") {
			t.Errorf("--format %s on the lab config: exit %d, stderr %q", f, code, stderr)
		}
	}
	// The example config: sip.listen 0.0.0.0 and names that do not resolve
	// offline. nftables: printed, but incomplete: exit 1 with the reasons.
	out, stderr, code := run("--config", "configs/linkmanager.yaml", "--format", "nftables", "--no-resolve")
	if code != 1 || !strings.Contains(stderr, "--address") || !strings.Contains(stderr, "stun.provider.example") || !strings.Contains(out, "$LAN_IP") {
		t.Errorf("example config, nftables: exit %d, stderr %q", code, stderr)
	}
	// text needs no addresses: complete.
	out, stderr, code = run("--config", "configs/linkmanager.yaml", "--format", "text", "--no-resolve", "--address", "192.168.100.2")
	if code != 0 || !strings.Contains(out, "stun.provider.example:3478") || !strings.Contains(out, "192.168.100.2:55000-56000") {
		t.Errorf("example config, text: exit %d, stderr %q\n%s", code, stderr, out)
	}
	for _, args := range [][]string{
		{"--config", lab, "--format", "pf"},
		{"--config", lab, "--address", "not-an-ip"},
		{"--config", lab, "--policy", "reject"},
		{"--config", "/nonexistent.yaml"},
		{"--config", lab, "extra"},
	} {
		if _, stderr, code := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
	}
}
