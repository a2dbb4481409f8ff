package stunkeeper

import "errors"

var (
	// ErrNoServers is returned by Refresh when Config.Servers is empty.
	ErrNoServers = errors.New("stunkeeper: no stun servers configured")
	// ErrTimeout means a Binding transaction got no answer after all
	// retransmits.
	ErrTimeout = errors.New("stunkeeper: stun transaction timed out")
	// ErrClosed is returned once Run has returned: nothing feeds the
	// keeper any more, so no answer could ever be matched.
	ErrClosed = errors.New("stunkeeper: keeper closed")
	// ErrRunning is returned by a second concurrent call to Run.
	ErrRunning = errors.New("stunkeeper: already running")
	// ErrErrorResponse means the destination answered with a STUN error
	// response (for example a registrar that speaks STUN but refuses it).
	ErrErrorResponse = errors.New("stunkeeper: stun error response")
	// ErrNoSend is returned by New when Config.Send is nil.
	ErrNoSend = errors.New("stunkeeper: Config.Send is required")
	// ErrBadServer is returned by New for a server that is not host:port.
	ErrBadServer = errors.New("stunkeeper: bad stun server address")
)

var (
	// ErrNATTestSockets is returned by NATTest without two distinct
	// sockets.
	ErrNATTestSockets = errors.New("stunkeeper: nat test needs two sockets of its own")
	// ErrNoAnswer is returned by NATTest when no STUN server answered.
	ErrNoAnswer = errors.New("stunkeeper: no stun server answered")
)

// ErrNATWatchConfig is returned by NewNATWatch without a Keeper or a
// Listen func.
var ErrNATWatchConfig = errors.New("stunkeeper: NATWatchConfig needs Keeper and Listen")

var (
	// ErrLifetimeConfig is returned by MeasureLifetime without a server
	// or a Listen func.
	ErrLifetimeConfig = errors.New("stunkeeper: LifetimeConfig needs Server and Listen")
	// ErrNoResponsePort means the STUN server answered the trigger socket
	// instead of the port RESPONSE-PORT named: it cannot measure the
	// binding lifetime.
	ErrNoResponsePort = errors.New("stunkeeper: the stun server ignores RESPONSE-PORT")
)
