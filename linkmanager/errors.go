package linkmanager

import "errors"

// ErrServerClosed is what Reload returns once Run is stopping.
var ErrServerClosed = errors.New("linkmanager: server closed")

// ErrMediaAddress is a media address an SDP names that the relay will
// not send to (see mediaPolicy).
var ErrMediaAddress = errors.New("linkmanager: media address refused")
