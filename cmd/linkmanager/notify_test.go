package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket listens where a test's NOTIFY_SOCKET points, as PID 1 does:
// a unixgram socket with SO_PASSCRED, so each datagram carries the sender's
// PID (NotifyAccess=main accepts only the main PID's messages).
type notifySocket struct {
	t    *testing.T
	conn *net.UnixConn
}

func listenNotify(t *testing.T, name string) *notifySocket {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	t.Setenv("NOTIFY_SOCKET", name)
	return &notifySocket{t: t, conn: conn}
}

// tempSocketPath is a socket path in a temp dir short enough for sun_path
// (108 bytes): t.TempDir() embeds the test name.
func tempSocketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lmnotify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "notify.sock")
}

// recv returns the next datagram and the sender's PID, failing the test
// after timeout.
func (s *notifySocket) recv(timeout time.Duration) (string, int32) {
	s.t.Helper()
	msg, pid, err := s.read(timeout)
	if err != nil {
		s.t.Fatalf("no datagram on NOTIFY_SOCKET within %v: %v", timeout, err)
	}
	return msg, pid
}

func (s *notifySocket) read(timeout time.Duration) (string, int32, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	if err := s.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", 0, err
	}
	n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", 0, err
	}
	var pid int32
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return "", 0, err
	}
	for _, m := range msgs {
		if cred, err := unix.ParseUnixCredentials(&m); err == nil {
			pid = cred.Pid
		}
	}
	return string(buf[:n]), pid, nil
}

// expectNone fails if a datagram arrives within d.
func (s *notifySocket) expectNone(d time.Duration) {
	s.t.Helper()
	if msg, _, err := s.read(d); err == nil {
		s.t.Fatalf("unexpected datagram %q", msg)
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		s.t.Fatal(err)
	}
}

// drain discards whatever is queued.
func (s *notifySocket) drain() {
	for {
		if _, _, err := s.read(10 * time.Millisecond); err != nil {
			return
		}
	}
}

func TestNotifyDatagrams(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr func(t *testing.T) string
	}{
		{"path", tempSocketPath},
		{"abstract", func(t *testing.T) string {
			return fmt.Sprintf("@linkmanager-test-%d-%d", os.Getpid(), time.Now().UnixNano())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := listenNotify(t, tc.addr(t))
			for _, step := range []struct {
				send func() error
				want string
			}{
				{notifyReady, "READY=1"},
				{func() error { return notifyStatus("2/2 trunks registered, 0 calls") }, "STATUS=2/2 trunks registered, 0 calls"},
				{func() error { return notifyStatus("line one\nREADY=1\r\nthree") }, "STATUS=line one READY=1 three"},
				{notifyStopping, "STOPPING=1"},
			} {
				if err := step.send(); err != nil {
					t.Fatal(err)
				}
				got, pid := s.recv(5 * time.Second)
				if got != step.want {
					t.Errorf("datagram = %q, want %q", got, step.want)
				}
				if pid != int32(os.Getpid()) {
					t.Errorf("sender pid = %d, want the main pid %d (NotifyAccess=main)", pid, os.Getpid())
				}
			}
		})
	}
}

func TestNotifyReloadingCarriesMonotonicTime(t *testing.T) {
	s := listenNotify(t, tempSocketPath(t))
	now := func() int64 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		return ts.Sec*1_000_000 + ts.Nsec/1_000
	}
	before := now()
	if err := notifyReloading(); err != nil {
		t.Fatal(err)
	}
	after := now()
	got, _ := s.recv(5 * time.Second)
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("datagram = %q, want \"RELOADING=1\\nMONOTONIC_USEC=<µs>\"", got)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	// systemd (Type=notify-reload) accepts it only if it is not older than
	// the moment it sent SIGHUP: it must be CLOCK_MONOTONIC taken now.
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC = %d, want CLOCK_MONOTONIC in [%d, %d]", usec, before, after)
	}
}

func TestNotifyUnsetIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	t.Setenv("WATCHDOG_USEC", "1000")
	for name, f := range map[string]func() error{
		"ready": notifyReady, "stopping": notifyStopping, "reloading": notifyReloading,
		"status": func() error { return notifyStatus("x") },
	} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v, want nil", name, err)
		}
	}
	// The watchdog returns at once, healthy never asked.
	done := make(chan error, 1)
	go func() {
		done <- watchdog(context.Background(), func() bool { t.Error("healthy called"); return true })
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watchdog without NOTIFY_SOCKET = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog without NOTIFY_SOCKET did not return")
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Run("no listener", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone.sock"))
		if err := notifyReady(); err == nil {
			t.Error("notifyReady to a missing socket = nil, want an error")
		}
	})
	t.Run("vsock", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
		if err := notifyReady(); err == nil || !strings.Contains(err.Error(), "only a socket path") {
			t.Errorf("notifyReady with vsock: %v, want the unsupported-address error", err)
		}
	})
}

func TestWatchdogPingsWhileHealthy(t *testing.T) {
	s := listenNotify(t, tempSocketPath(t))
	t.Setenv("WATCHDOG_USEC", "200000") // 200 ms: a ping every 100 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	var healthy atomic.Bool
	healthy.Store(true)
	unhealthyCalls := make(chan struct{}, 100)
	check := func() bool {
		if healthy.Load() {
			return true
		}
		unhealthyCalls <- struct{}{}
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- watchdog(ctx, check) }()

	// The first ping at once, then one per half period.
	for i := range 3 {
		got, pid := s.recv(5 * time.Second)
		if got != "WATCHDOG=1" {
			t.Fatalf("ping %d = %q, want WATCHDOG=1", i, got)
		}
		if pid != int32(os.Getpid()) {
			t.Errorf("ping %d from pid %d, want %d", i, pid, os.Getpid())
		}
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("3 pings after %v, want them 100 ms apart (the first at once)", el)
	}

	// A stuck main loop: no ping goes out. After the first unhealthy
	// check, any ping sent before it is already queued, so drain it, and
	// then two more checks must pass silently.
	healthy.Store(false)
	<-unhealthyCalls
	s.drain()
	<-unhealthyCalls
	<-unhealthyCalls
	s.expectNone(10 * time.Millisecond)

	// Recovered: pings resume.
	healthy.Store(true)
	if got, _ := s.recv(5 * time.Second); got != "WATCHDOG=1" {
		t.Fatalf("after recovery: %q, want WATCHDOG=1", got)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watchdog after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog did not return after ctx ended")
	}
}

func TestWatchdogNotForUs(t *testing.T) {
	for _, tc := range []struct {
		name, usec, pid string
		wantErr         bool
	}{
		{"unset", "", "", false},
		{"other pid", "200000", strconv.Itoa(os.Getpid() + 1), false},
		{"bad usec", "soon", "", true},
		{"zero usec", "0", "", true},
		{"overflow", "9223372036854775807", "", true},
		{"bad pid", "200000", "me", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := listenNotify(t, tempSocketPath(t))
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			done := make(chan error, 1)
			go func() {
				done <- watchdog(context.Background(), func() bool { return true })
			}()
			select {
			case err := <-done:
				if (err != nil) != tc.wantErr {
					t.Errorf("watchdog = %v, want error %v", err, tc.wantErr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("watchdog did not return at once")
			}
			s.expectNone(50 * time.Millisecond)
		})
	}
}

func TestWatchdogGivesUpAfterAPeriodOfFailedSends(t *testing.T) {
	// The socket goes away under a running watchdog: it keeps trying for
	// one watchdog period, then returns the reason.
	path := tempSocketPath(t)
	s := listenNotify(t, path)
	t.Setenv("WATCHDOG_USEC", "100000") // ping every 50 ms, give up after 100 ms of failures
	done := make(chan error, 1)
	go func() { done <- watchdog(context.Background(), func() bool { return true }) }()
	if got, _ := s.recv(5 * time.Second); got != "WATCHDOG=1" {
		t.Fatalf("first ping %q", got)
	}
	s.conn.Close()
	os.Remove(path)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "no ping could be sent") {
			t.Errorf("watchdog = %v, want the give-up error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watchdog kept going without a socket")
	}
}
