//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildDir   string // set by TestMain
	buildOnce  sync.Once
	buildPath  string
	buildError error
)

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the e2e directory")
		}
		dir = parent
	}
}

// raceEnv set to "off" builds the lab's daemon without -race (bench/soak.sh
// does, so that its RSS means something); unset, every lab daemon has it.
const raceEnv = "LINKMANAGER_E2E_RACE"

// daemonBinary builds ./cmd/linkmanager once per test binary.
func daemonBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildError = err
			return
		}
		dir := buildDir
		if dir == "" {
			dir, err = os.MkdirTemp("", "lmbuild-")
			if err != nil {
				buildError = err
				return
			}
		}
		out := filepath.Join(dir, "linkmanager")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// -race: a data race under real traffic makes the daemon exit 66,
		// which every test that stops it checks. A soak that measures RSS
		// turns it off (raceEnv): the race detector multiplies memory.
		args := []string{"build", "-race", "-o", out, "./cmd/linkmanager"}
		if os.Getenv(raceEnv) == "off" {
			args = slices.Delete(args, 1, 2)
		}
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildError = fmt.Errorf("go build ./cmd/linkmanager: %v\n%s", err, b)
			return
		}
		buildPath = out
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return buildPath
}

// DaemonConfig renders the daemon's YAML for the lab. Zero values give the
// contract defaults.
type DaemonConfig struct {
	LogLevel    string   // debug
	STUNServers []string // default both coturns; set NoSTUN for none
	NoSTUN      bool
	Interval    string // 10s
	Password    string // lab-secret
	Registrar   string // host[:port]; default 198.51.100.50:5060 (a name without a port: SRV)
	Expires     string // 300s
	Keepalive   string // auto
	Listen      string // 192.168.100.2:65002
	RTP         string // the rtp: flow mapping; default {port_min: 55000, port_max: 56000}
	PBX         string // more keys inside the pbx: flow mapping, e.g. "ring_timeout: 5s"
	PBXAllow    string // pbx.allow's one entry; default the PBX's IP/32
	Trunk       string // more keys of the trunk, e.g. "refresh_max: 30s"
	Extra       string // appended verbatim (top-level YAML)
}

// YAML returns the config file text.
func (c DaemonConfig) YAML() string {
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	servers := c.STUNServers
	if servers == nil && !c.NoSTUN {
		servers = []string{STUN1Addr, STUN2Addr}
	}
	pbxExtra := ""
	if c.PBX != "" {
		pbxExtra = ", " + c.PBX
	}
	trunkExtra := ""
	if c.Trunk != "" {
		trunkExtra = "\n    " + c.Trunk
	}
	q := make([]string, len(servers))
	for i, s := range servers {
		q[i] = fmt.Sprintf("%q", s)
	}
	rtp := def(c.RTP, "{port_min: 55000, port_max: 56000}")
	if io := os.Getenv(rtpIOEnv); io != "" && strings.HasSuffix(rtp, "}") {
		rtp = strings.TrimSuffix(rtp, "}") + ", io: " + io + "}"
	}
	return fmt.Sprintf(`log: {level: %s, format: json}
sip: {listen: %s}
stun: {servers: [%s], interval: %s}
trunks:
  - name: provider
    registrar: %s
    domain: %s
    username: "%s"
    password: "%s"
    expires: %s
    keepalive: %s
    dids: ["%s", "+%s"]%s
pbx: {listen: %s:5060, address: %s:5060, allow: ["%s"]%s}
rtp: %s
admin: {listen: 127.0.0.1:9065}
%s`, def(c.LogLevel, "debug"), def(c.Listen, fmt.Sprintf("%s:%d", DaemonIP, DaemonSIPPort)),
		strings.Join(q, ", "), def(c.Interval, "10s"),
		def(c.Registrar, ProviderAddr), SIPDomain, TrunkUser, def(c.Password, TrunkPass), def(c.Expires, "300s"),
		def(c.Keepalive, "auto"), DID, DID, trunkExtra, DaemonIP, PBXIP, def(c.PBXAllow, PBXIP+"/32"), pbxExtra,
		rtp, c.Extra)
}

// rtpIOEnv, set to epoll, runs every lab daemon with rtp.io: epoll, for
// the relay's reactors; unset, the daemon's default.
const rtpIOEnv = "LINKMANAGER_E2E_RTP_IO"

// Daemon is a linkmanager process running in the "lm" namespace.
type Daemon struct {
	*Proc
	ConfigPath string

	mu      sync.Mutex
	offset  int64
	partial []byte
	entries []map[string]any
	cursor  int // WaitLog searches entries[cursor:]
}

// StartDaemon builds the daemon (once), writes cfgYAML to a file and runs
// `linkmanager run --config FILE` in the "lm" namespace; stdout+stderr go to
// a log file (JSON lines with log.format json).
func (l *Lab) StartDaemon(cfgYAML string) *Daemon {
	l.t.Helper()
	bin := daemonBinary(l.t)
	n := l.nextSeq()
	cfg := filepath.Join(l.Dir, fmt.Sprintf("linkmanager-%02d.yaml", n))
	if err := os.WriteFile(cfg, []byte(cfgYAML), 0o600); err != nil {
		l.t.Fatal(err)
	}
	p := l.Start(NSLM, fmt.Sprintf("linkmanager-%02d.log", n), bin, "run", "--config", cfg)
	return &Daemon{Proc: p, ConfigPath: cfg}
}

// poll reads new complete lines from the log file.
func (d *Daemon) poll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := os.Open(d.LogPath)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(d.offset, 0); err != nil {
		return
	}
	buf := make([]byte, 64*1024)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			d.offset += int64(n)
			d.partial = append(d.partial, buf[:n]...)
		}
		if err != nil {
			break
		}
	}
	for {
		i := bytes.IndexByte(d.partial, '\n')
		if i < 0 {
			break
		}
		line := bytes.TrimSpace(d.partial[:i])
		d.partial = d.partial[i+1:]
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e map[string]any
		if json.Unmarshal(line, &e) == nil {
			d.entries = append(d.entries, e)
		}
	}
}

// Entries returns every JSON log entry so far.
func (d *Daemon) Entries() []map[string]any {
	d.poll()
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]map[string]any(nil), d.entries...)
}

// WaitLog waits until a JSON log entry after the previous match satisfies
// pred and returns it (the next WaitLog continues after it). It fails the
// test on timeout or when the daemon exits first.
func (d *Daemon) WaitLog(t testing.TB, timeout time.Duration, pred func(entry map[string]any) bool) map[string]any {
	t.Helper()
	e, err := d.AwaitLog(timeout, pred)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// WaitSeen is WaitLog over the whole log (from the first line), without
// moving WaitLog's position: for events whose order relative to earlier
// matches does not matter.
func (d *Daemon) WaitSeen(t testing.TB, timeout time.Duration, pred func(entry map[string]any) bool) map[string]any {
	t.Helper()
	e, err := d.awaitLog(timeout, pred, false)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// AwaitLog is WaitLog returning an error instead of failing the test.
func (d *Daemon) AwaitLog(timeout time.Duration, pred func(entry map[string]any) bool) (map[string]any, error) {
	return d.awaitLog(timeout, pred, true)
}

func (d *Daemon) awaitLog(timeout time.Duration, pred func(entry map[string]any) bool, advance bool) (map[string]any, error) {
	deadline := time.Now().Add(timeout)
	for {
		exited := d.Exited() // read the file after learning it exited: nothing is lost
		d.poll()
		d.mu.Lock()
		from := d.cursor
		if !advance {
			from = 0
		}
		for i := from; i < len(d.entries); i++ {
			if pred(d.entries[i]) {
				if advance {
					d.cursor = i + 1
				}
				e := d.entries[i]
				d.mu.Unlock()
				return e, nil
			}
		}
		d.mu.Unlock()
		if exited {
			return nil, fmt.Errorf("daemon exited (code %d) before the awaited log entry:\n%s", d.ExitCode(), tail(d.Log(), 30))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("awaited daemon log entry not seen within %v; log tail:\n%s", timeout, tail(d.Log(), 30))
		}
		select {
		case <-d.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Msg matches entries whose "msg" equals msg and whose fields equal kv pairs
// (compared as fmt %v strings), e.g. Msg("registered", "trunk", "provider").
func Msg(msg string, kv ...string) func(map[string]any) bool {
	return func(e map[string]any) bool {
		if e["msg"] != msg {
			return false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(e[kv[i]]) != kv[i+1] {
				return false
			}
		}
		return true
	}
}

// Field returns entry[key] as a string ("" when missing).
func Field(e map[string]any, key string) string {
	v, ok := e[key]
	if !ok || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// Stop sends SIGTERM, waits (bounded) and returns the exit code.
func (d *Daemon) Stop() int {
	if d.Exited() {
		return d.ExitCode()
	}
	_ = d.Signal(syscall.SIGTERM)
	code, err := d.Wait(15 * time.Second)
	if err != nil {
		return d.Proc.Stop(time.Second)
	}
	return code
}
