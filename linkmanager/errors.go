package linkmanager

import "errors"

// ErrServerClosed is what Reload returns once Run is stopping.
var ErrServerClosed = errors.New("linkmanager: server closed")
