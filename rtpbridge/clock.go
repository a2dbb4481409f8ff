package rtpbridge

import "time"

// Clock is the time source for port quarantine, media timeouts, keepalives
// and jitter. It is injected because the relay runs on real sockets, and a
// goroutine blocked in a socket read is never durably blocked, so
// testing/synctest cannot drive its time.
type Clock interface {
	Now() time.Time
	// AfterFunc runs f in its own goroutine once d has elapsed, like
	// time.AfterFunc.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the part of *time.Timer a Session uses.
type Timer interface {
	Stop() bool
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
