package main

// A tiny sd_notify(3), instead of a dependency (the protocol is one
// datagram of KEY=VALUE lines; see systemd's sd_notify man page and
// "Notification protocol" in systemd.service). Everything here is a no-op
// when NOTIFY_SOCKET is unset: a plain `linkmanager run`, a container, a
// test.
//
// The integrator calls, from run.go:
//
//	notifyReady()      once sip.listen is bound and the first registration was attempted;
//	                   again after each reload (applied or rejected)
//	notifyReloading()  on SIGHUP, before re-reading the config
//	notifyStopping()   on the first SIGTERM/SIGINT, before the drain
//	notifyStatus(s)    one line for `systemctl status` ("2/2 trunks registered, 3 calls")
//	watchdog(ctx, h)   in the errgroup; h is the main loop's liveness check
//
// Errors are returned for the caller to log; none of them is a reason to
// stop the daemon, except the one watchdog returns (see there).

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// notifyTimeout bounds one send. PID 1 gives the socket a large receive
// buffer, so a send waits only when systemd is badly stuck; it must never
// hang the caller.
const notifyTimeout = 2 * time.Second

// sdNotify sends state (newline-separated KEY=VALUE assignments) to
// $NOTIFY_SOCKET. It returns nil without doing anything when the variable
// is unset or empty.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	// A path, or '@' for Linux's abstract namespace: Go's net package turns
	// a leading '@' into the NUL byte itself. Anything else (systemd ≥ 253
	// also offers vsock:CID:PORT for VMs) is not for a daemon on a host.
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("sd_notify: NOTIFY_SOCKET=%q: only a socket path or an @abstract name is supported", addr)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(notifyTimeout)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", firstLine(state), err)
	}
	return nil
}

// notifyReady tells systemd that start-up (or a reload) is complete. Until
// the first one, `systemctl start` waits and the unit is "activating".
func notifyReady() error { return sdNotify("READY=1") }

// notifyStopping tells systemd the daemon is shutting down on its own
// account (the drain), so a restart or `systemctl status` shows it.
func notifyStopping() error { return sdNotify("STOPPING=1") }

// notifyReloading tells systemd a reload has begun; call notifyReady when
// it is done, whether the new config was applied or rejected, or the unit
// stays "reloading". MONOTONIC_USEC is what Type=notify-reload (systemd
// ≥ 253) requires to match the reply to its SIGHUP; Type=notify (the unit
// we ship, for Debian 12's systemd 252) and older managers ignore it. With
// it, moving the unit to notify-reload later needs no code change.
func notifyReloading() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("sd_notify: CLOCK_MONOTONIC: %w", err)
	}
	usec := ts.Sec*1_000_000 + ts.Nsec/1_000
	return sdNotify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10))
}

// notifyStatus sets the one-line status `systemctl status` shows. A newline
// would start another assignment, so line breaks become spaces.
func notifyStatus(s string) error {
	s = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
	return sdNotify("STATUS=" + s)
}

// watchdog sends WATCHDOG=1 at half of $WATCHDOG_USEC, as sd_watchdog_enabled
// recommends, for as long as healthy reports true. healthy is the main loop's
// liveness check: while it reports false no ping goes out, and after
// WatchdogSec systemd kills the service (SIGABRT, a Go stack dump in the
// journal) and Restart= starts it again. The first ping goes out at once.
//
// It returns nil when ctx ends, and nil at once when the watchdog is not
// enabled for this process (WATCHDOG_USEC unset, or WATCHDOG_PID naming
// another process, or no NOTIFY_SOCKET). It returns an error for an
// unusable WATCHDOG_USEC, and when pings have failed to send for a whole
// watchdog period: systemd is about to kill the service anyway, and the
// error names the reason in the log.
func watchdog(ctx context.Context, healthy func() bool) error {
	interval, err := watchdogInterval()
	if err != nil || interval == 0 {
		return err
	}
	period := 2 * interval
	var failingSince time.Time // start of the current run of failed sends
	ping := func() error {
		if !healthy() {
			return nil
		}
		err := sdNotify("WATCHDOG=1")
		if err == nil {
			failingSince = time.Time{}
			return nil
		}
		if failingSince.IsZero() {
			failingSince = time.Now()
		}
		if time.Since(failingSince) >= period {
			return fmt.Errorf("watchdog: no ping could be sent for %v (WatchdogSec): %w", period, err)
		}
		return nil
	}
	if err := ping(); err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := ping(); err != nil {
				return err
			}
		}
	}
}

// watchdogInterval is half the watchdog timeout, or 0 when the watchdog is
// not enabled for this process.
func watchdogInterval() (time.Duration, error) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return 0, nil
	}
	v := os.Getenv("WATCHDOG_USEC")
	if v == "" {
		return 0, nil
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		pid, err := strconv.Atoi(p)
		if err != nil {
			return 0, fmt.Errorf("watchdog: WATCHDOG_PID=%q is not a number", p)
		}
		if pid != os.Getpid() {
			return 0, nil
		}
	}
	usec, err := strconv.ParseInt(v, 10, 64)
	if err != nil || usec <= 0 || usec > math.MaxInt64/int64(time.Microsecond) {
		return 0, fmt.Errorf("watchdog: WATCHDOG_USEC=%q is not a positive number of microseconds", v)
	}
	return time.Duration(usec) * time.Microsecond / 2, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
