//go:build linux

package e2e

// Issue 4 lifecycle through the real lab: the SIGTERM drain with a call
// up, and a SIGHUP reload with a call up.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startEchoPBX answers every call on the PBX and echoes its RTP.
func startEchoPBX(t *testing.T, l *Lab) {
	t.Helper()
	l.Start(NSPBX, "pbx-echo.out", "sipp", "-sn", "uas", "-i", PBXIP, "-p", "5060", "-mi", PBXIP,
		"-rtp_echo", "-nostdin", "-timeout", "120s")
	if _, err := l.Exec(NSPBX, "sh", "-c", "for i in $(seq 50); do ss -Hlun sport = :5060 | grep -q . && exit 0; sleep 0.1; done; exit 1"); err != nil {
		t.Fatalf("the PBX did not come up: %v", err)
	}
}

// startLongCall has the phone call number and play audio, holding the
// call for hold before hanging up.
func startLongCall(t *testing.T, l *Lab, number string, hold time.Duration) *Proc {
	t.Helper()
	port := 5100 + l.nextSeq()
	return l.Start(NSPhone, fmt.Sprintf("long-call-%d.out", port), "sipp", "-sf", filepath.Join(l.sippDir, "uac-pcap.xml"),
		"-i", PhoneIP, "-p", strconv.Itoa(port), "-mi", PhoneIP, "-mp", strconv.Itoa(20000+2*port),
		"-m", "1", "-d", strconv.FormatInt(hold.Milliseconds(), 10), "-s", number, "-nostdin",
		"-timeout", fmt.Sprintf("%ds", int(hold.Seconds())+30), ProviderAddr)
}

// startWithPBX runs the daemon against the PBX the test started itself
// (startRegistered would start a busy one on the same port).
func startWithPBX(t *testing.T, l *Lab, cfg DaemonConfig) *Daemon {
	t.Helper()
	d := l.StartDaemon(cfg.YAML())
	d.WaitLog(t, regTimeout, Msg("registered", "trunk", "provider"))
	return d
}

func msgField(msg, key, want string) func(map[string]any) bool {
	return func(e map[string]any) bool { return e["msg"] == msg && Field(e, key) == want }
}

// SIGTERM with a call up: readiness fails and new calls get 503 at once,
// the call goes on for the grace period, then both legs get BYE, the trunk
// unregisters and the daemon exits 0.
func TestLifecycleDrainWithLiveCall(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	startEchoPBX(t, l)
	d := startWithPBX(t, l, DaemonConfig{Extra: "shutdown: {grace: 6s}\n"})
	startLongCall(t, l, DID, 60*time.Second)
	d.WaitLog(t, 15*time.Second, Msg("call answered"))

	stopAt := time.Now()
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.WaitLog(t, 3*time.Second, Msg("draining: new calls get 503"))
	out, err := l.Exec(NSLM, daemonBinary(t), "status", "--admin", "127.0.0.1:9065")
	if err == nil || !strings.Contains(out, "shutting down") {
		t.Errorf("status while draining: err=%v\n%s\nwant a non-zero exit saying it is shutting down", err, out)
	}
	// The daemon answers 503; Kamailio, as a proxy must (RFC 3261
	// §16.7), passes it on to the phone as 500.
	if code, err := l.CallDID(DID, 15*time.Second); err != nil || (code != 503 && code != 500) {
		t.Errorf("a new call while draining got %d (%v), want 503 (or 500 from the proxy)", code, err)
	}
	d.WaitLog(t, 5*time.Second, Msg("call refused: shutting down"))
	e := d.WaitLog(t, 15*time.Second, msgField("call ended", "reason", "shutdown"))
	if held := time.Since(stopAt); held < 5*time.Second {
		t.Errorf("the call was hung up %v after SIGTERM, before the 6 s grace period", held)
	}
	t.Logf("call ended by the drain: %v", e["media"])
	code, err := d.Wait(20 * time.Second)
	if err != nil || code != 0 {
		t.Errorf("exit %d (%v) after the drain, want 0", code, err)
	}
	if _, err := d.AwaitLog(time.Second, Msg("unregistered", "trunk", "provider")); err != nil {
		t.Error(err)
	}
	if cs, err := l.KamailioContacts(TrunkUser); err != ErrNotRegistered {
		t.Errorf("the provider still has %+v (%v) after the drain", cs, err)
	}
}

// A second SIGTERM cuts the grace period short.
func TestLifecycleSecondSignalStopsAtOnce(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	startEchoPBX(t, l)
	d := startWithPBX(t, l, DaemonConfig{Extra: "shutdown: {grace: 60s}\n"})
	startLongCall(t, l, DID, 60*time.Second)
	d.WaitLog(t, 15*time.Second, Msg("call answered"))
	d.Signal(syscall.SIGTERM)
	d.WaitLog(t, 3*time.Second, Msg("draining: new calls get 503"))
	start := time.Now()
	d.Signal(syscall.SIGTERM)
	d.WaitLog(t, 15*time.Second, msgField("call ended", "reason", "shutdown"))
	code, err := d.Wait(20 * time.Second)
	if took := time.Since(start); err != nil || code != 0 || took > 15*time.Second {
		t.Errorf("after the second SIGTERM: exit %d (%v) after %v; want 0, well inside the 60 s grace", code, err, took)
	}
}

// SIGHUP with a call up: a new DID works at once, a broken file is
// rejected with the reason, and the call carries on with audio.
func TestLifecycleReloadWithCallUp(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	startEchoPBX(t, l)
	d := startWithPBX(t, l, DaemonConfig{})
	call := startLongCall(t, l, DID, 20*time.Second)
	d.WaitLog(t, 15*time.Second, Msg("call answered"))

	// Extension digits after the DID are not ours yet.
	ext := DID + "7"
	if code, err := l.CallDID(ext, 15*time.Second); err != nil || code != 404 {
		t.Fatalf("call to %s before the reload got %d (%v), want 404", ext, code, err)
	}
	orig, err := os.ReadFile(d.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	dids := fmt.Sprintf(`dids: ["%s", "+%s"]`, DID, DID)
	if !strings.Contains(string(orig), dids) {
		t.Fatalf("config has no %s", dids)
	}
	withExt := strings.Replace(string(orig), dids, fmt.Sprintf(`dids: ["%s", "+%s", "%s*"]`, DID, DID, DID), 1)
	if err := os.WriteFile(d.ConfigPath, []byte(withExt), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Signal(syscall.SIGHUP)
	e := d.WaitLog(t, 10*time.Second, Msg("configuration reloaded"))
	t.Logf("reloaded: %v", e["changes"])
	d.WaitLog(t, 15*time.Second, Msg("registered", "trunk", "provider"))
	if code, err := l.CallDID(ext, 15*time.Second); err != nil || code != 200 {
		t.Errorf("call to %s after the reload got %d (%v), want 200 from the PBX", ext, code, err)
	}

	// A broken file changes nothing.
	os.WriteFile(d.ConfigPath, []byte("trunks: [\n"), 0o600)
	d.Signal(syscall.SIGHUP)
	if e := d.WaitLog(t, 10*time.Second, Msg("reload rejected; the running configuration stays in force")); !strings.Contains(Field(e, "error"), "line") {
		t.Errorf("rejection does not say what is wrong: %v", e)
	}

	// The first call lived through both reloads, with audio both ways.
	if code, err := call.Wait(40 * time.Second); err != nil || code != 0 {
		t.Errorf("the call up during the reloads: sipp exit %d (%v)\n%s", code, err, tail(call.Log(), 10))
	}
	e = d.WaitLog(t, 10*time.Second, func(e map[string]any) bool {
		return e["msg"] == "call ended" && Field(e, "call_id") != "" && strings.HasPrefix(Field(e, "reason"), "bye from")
	})
	media, _ := e["media"].(map[string]any)
	for _, dir := range []string{"a_to_b", "b_to_a"} {
		m, _ := media[dir].(map[string]any)
		if p, _ := m["packets"].(float64); p < 230 {
			t.Errorf("%s carried %v packets over the call, want about 236 (the pcap)", dir, m["packets"])
		}
	}
	if code := d.Stop(); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// The systemd protocol as the daemon speaks it: READY=1 only after the
// trunk has tried to register, WATCHDOG=1 pings, STOPPING=1 on SIGTERM.
func TestLifecycleSystemdNotify(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	sockPath := filepath.Join(l.Dir, "notify.sock")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := sock.ReadFromUnix(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	cfg := filepath.Join(l.Dir, "notify.yaml")
	if err := os.WriteFile(cfg, []byte(DaemonConfig{}.YAML()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := l.Start(NSLM, "linkmanager-notify.log", "env", "NOTIFY_SOCKET="+sockPath, "WATCHDOG_USEC=2000000",
		daemonBinary(t), "run", "--config", cfg)
	d := &Daemon{Proc: p, ConfigPath: cfg}

	seen := map[string]bool{}
	// await reads messages until want arrives, within one overall
	// deadline: watchdog pings must not keep a missing READY waiting.
	await := func(want string, onSeen func()) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for !seen[want] {
			select {
			case m := <-msgs:
				seen[m] = true
				if m == want && onSeen != nil {
					onSeen()
				}
			case <-deadline:
				t.Fatalf("no %s from the daemon within 15 s; got %v", want, seen)
			}
		}
	}
	await("READY=1", func() {
		if _, err := d.AwaitLog(time.Second, Msg("registered", "trunk", "provider")); err != nil {
			t.Errorf("READY=1 came before the trunk tried to register: %v", err)
		}
	})
	await("WATCHDOG=1", nil)
	d.Signal(syscall.SIGTERM)
	await("STOPPING=1", nil)
	if code, err := d.Wait(20 * time.Second); err != nil || code != 0 {
		t.Errorf("exit %d (%v)", code, err)
	}
}
