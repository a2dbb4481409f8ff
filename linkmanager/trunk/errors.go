package trunk

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Callers test them with errors.Is; messages carry the
// detail.
var (
	ErrResolve    = errors.New("trunk: cannot resolve registrar")
	ErrNoAnswer   = errors.New("trunk: no answer from registrar")
	ErrAuth       = errors.New("trunk: authentication failed")
	ErrRejected   = errors.New("trunk: request rejected")
	ErrUnresolved = errors.New("trunk: registrar not resolved yet")
)

// StatusError is a SIP final response that ended a request we sent.
type StatusError struct {
	Code       int
	Reason     string
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%d %s", e.Code, e.Reason)
}

// Is makes every 4xx-6xx a rejection for errors.Is(err, ErrRejected),
// except those that say "try again later".
func (e *StatusError) Is(target error) bool {
	if target != ErrRejected {
		return false
	}
	switch e.Code {
	case 408, 480, 500, 503, 504:
		return false
	}
	return e.Code >= 400
}
