package rtpbridge

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Pool defaults.
const (
	DefaultMaxRetries = 10
	DefaultQuarantine = 30 * time.Second
	DefaultDSCP       = 46 // EF, the class the site firewalls prioritise
)

// Rand picks random numbers for a Pool; *math/rand/v2.Rand satisfies it.
type Rand interface {
	IntN(n int) int
}

// Pool hands out pairs of UDP sockets on an even RTP port and the odd port
// above it for RTCP (RFC 3550 §11), chosen at random from a range. The shape
// follows pion/turn's RelayAddressGeneratorPortRange: exported fields are the
// configuration, zero values mean defaults, and Validate must be called once
// before use. A Pool is safe for concurrent use.
//
// Counts are in pairs: a range of 1,000 ports is 500 pairs, and a call uses one
// pair from the LAN pool and one from the WAN pool.
type Pool struct {
	// Address is the local IP to bind. Default: the unspecified address.
	Address string
	// Network is "udp4" (default) or "udp6"; it decides how DSCP is set.
	Network string
	// MinPort and MaxPort bound the range, both inclusive. An odd MinPort is
	// rounded up; the last pair must fit below MaxPort.
	MinPort, MaxPort uint16
	// MaxRetries is how many pairs Allocate tries to bind before giving up.
	MaxRetries int
	// Quarantine is how long a released pair stays unused. Negative disables.
	Quarantine time.Duration
	// DSCP is set on every socket. Default DefaultDSCP; negative leaves the
	// kernel default.
	DSCP int
	// Rand picks the pair to try. Default: a PCG seeded from the runtime.
	Rand Rand
	// ListenPacket binds one socket. It must return a *net.UDPConn. Default:
	// net.ListenPacket.
	ListenPacket func(network, address string) (net.PacketConn, error)
	// Clock times quarantine. Default: the system clock.
	Clock Clock

	mu          sync.Mutex
	first       int         // the lowest even port; pair i is first+2i
	state       []pairState // nil until Validate
	queue       []quarantined
	inUse       int
	quarantined int
}

type pairState uint8

const (
	pairFree pairState = iota
	pairInUse
	pairQuarantined
)

// quarantined is a queue entry. The queue is FIFO by release time, and the
// quarantine is the same for every pair, so expiry only ever pops the front.
type quarantined struct {
	idx   int
	until time.Time
}

// PoolCounts is a snapshot of a Pool, in pairs.
type PoolCounts struct {
	InUse       int `json:"in_use"`
	Quarantined int `json:"quarantined"`
	Free        int `json:"free"`
}

// Validate fills in defaults and checks the range. Calling it again after the
// pool is in use is a no-op.
func (p *Pool) Validate() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != nil {
		return nil
	}
	switch p.Network {
	case "":
		p.Network = "udp4"
	case "udp4", "udp6":
	default:
		return fmt.Errorf("%w: network %q, want udp4 or udp6", ErrInvalidPool, p.Network)
	}
	if p.Address == "" {
		p.Address = "0.0.0.0"
		if p.Network == "udp6" {
			p.Address = "::"
		}
	}
	ip, err := netip.ParseAddr(p.Address)
	if err != nil {
		return fmt.Errorf("%w: address: %w", ErrInvalidPool, err)
	}
	if ip.Is4() != (p.Network == "udp4") {
		return fmt.Errorf("%w: address %s does not match network %s", ErrInvalidPool, ip, p.Network)
	}
	first := int(p.MinPort) + int(p.MinPort)%2
	switch {
	case p.MinPort == 0:
		return fmt.Errorf("%w: MinPort is 0", ErrInvalidPool)
	case int(p.MaxPort) < first+1:
		return fmt.Errorf("%w: range %d-%d holds no even/odd pair", ErrInvalidPool, p.MinPort, p.MaxPort)
	case p.MaxRetries < 0:
		return fmt.Errorf("%w: MaxRetries %d", ErrInvalidPool, p.MaxRetries)
	case p.DSCP > 63:
		return fmt.Errorf("%w: DSCP %d > 63", ErrInvalidPool, p.DSCP)
	}
	if p.MaxRetries == 0 {
		p.MaxRetries = DefaultMaxRetries
	}
	if p.Quarantine == 0 {
		p.Quarantine = DefaultQuarantine
	}
	if p.DSCP == 0 {
		p.DSCP = DefaultDSCP
	}
	if p.Rand == nil {
		p.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if p.ListenPacket == nil {
		p.ListenPacket = net.ListenPacket
	}
	if p.Clock == nil {
		p.Clock = systemClock{}
	}
	p.first = first
	p.state = make([]pairState, (int(p.MaxPort)-first+1)/2)
	return nil
}

// Counts reports how many pairs are in use, quarantined and free.
func (p *Pool) Counts() PoolCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != nil {
		p.expireLocked()
	}
	return PoolCounts{
		InUse:       p.inUse,
		Quarantined: p.quarantined,
		Free:        len(p.state) - p.inUse - p.quarantined,
	}
}

// Allocate binds a random free pair. It fails with ErrPoolExhausted when no
// pair is free or MaxRetries binds failed (another process holds the ports);
// in the latter case the last bind error is wrapped too.
func (p *Pool) Allocate() (*PortPair, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return nil, ErrNotValidated
	}
	p.expireLocked()
	var lastErr error
	for range p.MaxRetries {
		idx := p.pickLocked()
		if idx < 0 {
			break
		}
		port := p.first + 2*idx
		rtpConn, err := p.listen(port)
		if err != nil {
			if !retryable(err) {
				return nil, err
			}
			lastErr = err
			continue
		}
		rtcpConn, err := p.listen(port + 1)
		if err != nil {
			_ = rtpConn.Close()
			if !retryable(err) {
				return nil, err
			}
			lastErr = err
			continue
		}
		p.state[idx] = pairInUse
		p.inUse++
		return &PortPair{pool: p, idx: idx, port: uint16(port), rtp: rtpConn, rtcp: rtcpConn}, nil
	}
	if lastErr != nil {
		return nil, fmt.Errorf("%w: %d binds failed, last: %w", ErrPoolExhausted, p.MaxRetries, lastErr)
	}
	return nil, ErrPoolExhausted
}

// pickLocked probes linearly from a random pair, so exhaustion is detected
// exactly rather than by running out of random tries.
func (p *Pool) pickLocked() int {
	n := len(p.state)
	start := p.Rand.IntN(n)
	for i := range n {
		idx := (start + i) % n
		if p.state[idx] == pairFree {
			return idx
		}
	}
	return -1
}

func (p *Pool) expireLocked() {
	now := p.Clock.Now()
	for len(p.queue) > 0 && !now.Before(p.queue[0].until) {
		p.state[p.queue[0].idx] = pairFree
		p.quarantined--
		p.queue = p.queue[1:]
	}
}

func (p *Pool) release(idx int, quarantine bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inUse--
	if !quarantine || p.Quarantine < 0 {
		p.state[idx] = pairFree
		return
	}
	p.state[idx] = pairQuarantined
	p.quarantined++
	p.queue = append(p.queue, quarantined{idx: idx, until: p.Clock.Now().Add(p.Quarantine)})
}

// errSetup marks failures that another port would not fix.
type errSetup struct{ err error }

func (e errSetup) Error() string { return e.err.Error() }
func (e errSetup) Unwrap() error { return e.err }

func retryable(err error) bool {
	var s errSetup
	return !errors.As(err, &s)
}

func (p *Pool) listen(port int) (*net.UDPConn, error) {
	pc, err := p.ListenPacket(p.Network, net.JoinHostPort(p.Address, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	c, ok := pc.(*net.UDPConn)
	if !ok {
		_ = pc.Close()
		return nil, errSetup{ErrNotUDPConn}
	}
	if p.DSCP >= 0 {
		if err := setDSCP(c, p.Network, p.DSCP); err != nil {
			_ = c.Close()
			return nil, errSetup{fmt.Errorf("rtpbridge: set DSCP %d: %w", p.DSCP, err)}
		}
	}
	return c, nil
}

func setDSCP(c *net.UDPConn, network string, dscp int) error {
	// DSCP is the top six bits of the TOS / traffic class byte.
	if network == "udp6" {
		return ipv6.NewConn(c).SetTrafficClass(dscp << 2)
	}
	return ipv4.NewConn(c).SetTOS(dscp << 2)
}

// PortPair is an RTP socket on an even port and its RTCP socket on port+1.
type PortPair struct {
	pool      *Pool
	idx       int
	port      uint16
	rtp, rtcp *net.UDPConn
	once      sync.Once
}

// Port is the RTP port; RTCP is on Port()+1.
func (pp *PortPair) Port() uint16 { return pp.port }

// RTP is the socket on the even port.
func (pp *PortPair) RTP() *net.UDPConn { return pp.rtp }

// RTCP is the socket on the odd port.
func (pp *PortPair) RTCP() *net.UDPConn { return pp.rtcp }

// Release closes both sockets and quarantines the pair. It is idempotent.
func (pp *PortPair) Release() error { return pp.close(true) }

func (pp *PortPair) close(quarantine bool) error {
	var err error
	pp.once.Do(func() {
		err = errors.Join(ignoreClosed(pp.rtp.Close()), ignoreClosed(pp.rtcp.Close()))
		pp.pool.release(pp.idx, quarantine)
	})
	return err
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
