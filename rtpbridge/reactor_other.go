//go:build !linux

package rtpbridge

import (
	"errors"
	"net/netip"

	"go.uber.org/zap"
)

// reactorSupported tells New whether IOEpoll can be used on this platform:
// elsewhere every socket has its reader goroutine (IOGoroutines).
const reactorSupported = false

var errNoReactor = errors.New("rtpbridge: epoll IO needs Linux")

// The types below only keep the shared code compiling; New never creates
// reactors off Linux.
type reactors struct{}

type rsock struct{}

func newReactors(int, *zap.Logger) (*reactors, error) { return nil, errNoReactor }

func (*reactors) close() {}

func (*reactors) listen(string, string, int, int) (*rsock, error) { return nil, errNoReactor }

func (*rsock) attach(any) error                     { return errNoReactor }
func (*rsock) pause()                               {}
func (*rsock) barrier()                             {}
func (*rsock) close() error                         { return nil }
func (*rsock) writeTo([]byte, netip.AddrPort) error { return errNoReactor }
