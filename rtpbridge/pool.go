package rtpbridge

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Pool defaults.
const (
	DefaultMaxRetries = 10
	DefaultQuarantine = 30 * time.Second
	// DefaultMaxQuarantine caps the quarantine of a pair whose old peer
	// never stops sending.
	DefaultMaxQuarantine = 10 * time.Minute
	DefaultDSCP          = 46 // EF, the class the site firewalls prioritise
)

// drainBufSize is what a drain reader reads of each datagram: only its
// arrival matters, and the kernel discards the rest.
const drainBufSize = 64

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
//
// A released pair is quarantined and drained, as livekit/sip's draining
// ports are: both of its sockets stay bound, and a reader on each discards
// what arrives (counted by NoSessionDrops) until the pair has received
// nothing for Quarantine, or MaxQuarantine has passed since the release.
// Late media of a finished call is therefore absorbed rather than answered
// with ICMP port unreachable. Close ends every quarantine.
//
// Quarantine does not limit the call setup rate: when no pair is free,
// Allocate takes over the quarantined pair that has been quiet longest,
// sockets and all (so no ICMP window opens either). That is safe because a
// Session refuses every source its latching rule does not allow, which an
// old call's remote normally is not, and the pair carries the old call's
// last sources (its latched peers and what the drain last heard) as a taint
// that the new Session refuses even where the rule would allow them (the
// same provider media server on another port under LatchIP, say), unless
// the new SDP names that exact address.
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
	// Quarantine is how long a released pair must receive nothing before it
	// is closed and free again; every packet to it restarts the wait.
	// Allocate takes a quarantined pair over earlier when no pair is free.
	// Negative disables: a released pair is closed and free at once.
	Quarantine time.Duration
	// MaxQuarantine caps a quarantine that late packets keep extending,
	// counted from the release. Default DefaultMaxQuarantine, or Quarantine
	// if that is longer; it must not be below Quarantine.
	MaxQuarantine time.Duration
	// DSCP is set on every socket. Default DefaultDSCP; negative leaves the
	// kernel default.
	DSCP int
	// Rand picks the pair to try. Default: a PCG seeded from the runtime.
	Rand Rand
	// ListenPacket binds one socket. It must return a *net.UDPConn. Default:
	// net.ListenPacket. A Bridge with IOEpoll binds raw sockets itself and
	// does not use it.
	ListenPacket func(network, address string) (net.PacketConn, error)
	// Clock times quarantine. Default: the system clock.
	Clock Clock

	noSession atomic.Uint64
	wg        sync.WaitGroup // drain readers
	// rx serves the sockets in IOEpoll mode; nil: a reader goroutine per
	// socket. Set by New before the first Allocate.
	rx *reactors

	mu          sync.Mutex
	first       int         // the lowest even port; pair i is first+2i
	epoch       time.Time   // drain times are ns since it
	state       []pairState // nil until Validate
	drains      []*drain    // by pair; set while the pair is quarantined
	inUse       int
	quarantined int
	closed      bool
}

type pairState uint8

const (
	pairFree pairState = iota
	pairInUse
	pairQuarantined
)

// drain keeps a quarantined pair's sockets bound and read.
type drain struct {
	idx      int
	conns    [2]*net.UDPConn // RTP, RTCP; nil in IOEpoll mode
	rs       [2]*rsock       // RTP, RTCP in IOEpoll mode
	released int64           // ns since the pool's epoch
	last     atomic.Int64    // last packet, or the release; ns since the epoch
	timer    Timer           // guarded by the pool's mu
	done     sync.WaitGroup  // the two readers
	taken    atomic.Bool     // Allocate reuses the pair: the readers return
	// peers are the old call's latched sources; heard the last source each
	// reader saw, written by the reader and read after done.Wait.
	peers [2]netip.AddrPort
	heard [2]netip.AddrPort
	bufs  [2][drainBufSize]byte
}

// drainSock is a quarantined socket's handler in IOEpoll mode: like
// drainLoop, it only records that something arrived.
type drainSock struct {
	p    *Pool
	d    *drain
	kind int
}

// PoolCounts is a snapshot of a Pool, in pairs. Quarantined pairs are
// allocatable (Allocate takes them over when none is free), so what a new
// call can get is Free+Quarantined.
type PoolCounts struct {
	Pairs       int    `json:"pairs"`
	InUse       int    `json:"in_use"`
	Quarantined int    `json:"quarantined"`
	Free        int    `json:"free"`
	MinPort     uint16 `json:"min_port"`
	MaxPort     uint16 `json:"max_port"`
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
	quarantine, maxQuarantine := p.Quarantine, p.MaxQuarantine
	if quarantine == 0 {
		quarantine = DefaultQuarantine
	}
	switch {
	case maxQuarantine < 0:
		return fmt.Errorf("%w: MaxQuarantine %v", ErrInvalidPool, maxQuarantine)
	case maxQuarantine == 0:
		maxQuarantine = max(DefaultMaxQuarantine, quarantine)
	case maxQuarantine < quarantine:
		return fmt.Errorf("%w: MaxQuarantine %v below Quarantine %v", ErrInvalidPool, maxQuarantine, quarantine)
	}
	p.Quarantine, p.MaxQuarantine = quarantine, maxQuarantine
	if p.MaxRetries == 0 {
		p.MaxRetries = DefaultMaxRetries
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
	p.epoch = p.Clock.Now()
	p.state = make([]pairState, (int(p.MaxPort)-first+1)/2)
	p.drains = make([]*drain, len(p.state))
	return nil
}

// Counts reports how many pairs are in use, quarantined and free.
func (p *Pool) Counts() PoolCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolCounts{
		Pairs:       len(p.state),
		InUse:       p.inUse,
		Quarantined: p.quarantined,
		Free:        len(p.state) - p.inUse - p.quarantined,
		MinPort:     p.MinPort,
		MaxPort:     p.MaxPort,
	}
}

// NoSessionDrops is the number of packets that arrived on quarantined pairs
// and were discarded: late media of finished calls, or strays. The SIP layer
// exports it as dropped packets with reason "no_session".
func (p *Pool) NoSessionDrops() uint64 { return p.noSession.Load() }

// Allocate binds a random free pair; when none is free, it reuses the
// quarantined pair that has been quiet longest (see Pool). It fails with
// ErrPoolExhausted when every pair is in use or MaxRetries binds failed
// (another process holds the ports); in the latter case the last bind error
// is wrapped too. After Close it fails with ErrPoolClosed.
func (p *Pool) Allocate() (*PortPair, error) {
	pp, d, err := p.allocate()
	if d != nil {
		pp = p.takeOver(d)
	}
	return pp, err
}

func (p *Pool) allocate() (*PortPair, *drain, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return nil, nil, ErrNotValidated
	}
	if p.closed {
		return nil, nil, ErrPoolClosed
	}
	pp, err := p.bindLocked()
	if !errors.Is(err, ErrPoolExhausted) {
		return pp, nil, err
	}
	if d := p.quietestLocked(); d != nil {
		d.timer.Stop()
		p.drains[d.idx] = nil
		p.state[d.idx] = pairInUse
		p.quarantined--
		p.inUse++
		return nil, d, nil
	}
	return nil, nil, err
}

// quietestLocked is the quarantined pair whose last packet (or release) is
// oldest, nil if none.
func (p *Pool) quietestLocked() *drain {
	var best *drain
	for _, d := range p.drains {
		if d != nil && (best == nil || d.last.Load() < best.last.Load()) {
			best = d
		}
	}
	return best
}

// takeOver stops d's readers and hands its sockets, still bound, to a new
// PortPair tainted with the old call's sources. The pair is already in use,
// so nothing else touches d.
func (p *Pool) takeOver(d *drain) *PortPair {
	if d.rs[0] != nil {
		// Paused, the drain handlers have returned; what arrives waits
		// for the new session.
		pp := &PortPair{pool: p, idx: d.idx, port: uint16(p.first + 2*d.idx), rs: d.rs}
		for kind, rs := range d.rs {
			rs.pause()
			pp.taint[kind] = [2]netip.AddrPort{d.peers[kind], d.heard[kind]}
		}
		return pp
	}
	d.taken.Store(true)
	for _, c := range d.conns {
		if c.SetReadDeadline(aLongTimeAgo) != nil {
			_ = c.Close() // cannot happen on an open socket; ends the read all the same
		}
	}
	d.done.Wait()
	pp := &PortPair{pool: p, idx: d.idx, port: uint16(p.first + 2*d.idx), rtp: d.conns[0], rtcp: d.conns[1]}
	for kind, c := range d.conns {
		_ = c.SetReadDeadline(time.Time{})
		pp.taint[kind] = [2]netip.AddrPort{d.peers[kind], d.heard[kind]}
	}
	return pp
}

// bindLocked binds a random free pair.
func (p *Pool) bindLocked() (*PortPair, error) {
	var lastErr error
	for range p.MaxRetries {
		idx := p.pickLocked()
		if idx < 0 {
			break
		}
		port := p.first + 2*idx
		if p.rx != nil {
			pp, err := p.bindRawLocked(idx, port)
			if err != nil {
				if !retryable(err) {
					return nil, err
				}
				lastErr = err
				continue
			}
			return pp, nil
		}
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

// bindRawLocked binds pair idx as raw sockets for the reactors.
func (p *Pool) bindRawLocked(idx, port int) (*PortPair, error) {
	rtp, err := p.rx.listen(p.Network, p.Address, port, p.DSCP)
	if err != nil {
		return nil, err
	}
	rtcp, err := p.rx.listen(p.Network, p.Address, port+1, p.DSCP)
	if err != nil {
		_ = rtp.close()
		return nil, err
	}
	p.state[idx] = pairInUse
	p.inUse++
	return &PortPair{pool: p, idx: idx, port: uint16(port), rs: [2]*rsock{rtp, rtcp}}, nil
}

// useReactors makes the pool bind raw sockets served by rx. It must be
// called before the first Allocate.
func (p *Pool) useReactors(rx *reactors) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.rx == rx:
		return nil
	case p.rx != nil || p.inUse > 0 || p.quarantined > 0:
		return fmt.Errorf("%w: pool already in use by another bridge", ErrInvalidConfig)
	}
	p.rx = rx
	return nil
}

// dropReactors undoes useReactors(rx) for a Bridge that New refused.
func (p *Pool) dropReactors(rx *reactors) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rx == rx {
		p.rx = nil
	}
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

// Close ends every quarantine: it stops the drain readers, closes their
// sockets and waits for the readers to return. Pairs still in use are closed
// when released. Allocate fails with ErrPoolClosed afterwards. Close is
// idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var ending []*drain
	for idx, d := range p.drains {
		if d == nil {
			continue
		}
		d.timer.Stop()
		p.drains[idx] = nil
		p.state[idx] = pairFree
		p.quarantined--
		ending = append(ending, d)
	}
	p.mu.Unlock()
	var errs []error
	for _, d := range ending {
		errs = append(errs, d.close())
	}
	p.wg.Wait()
	return errors.Join(errs...)
}

func (p *Pool) nowNS() int64 { return int64(p.Clock.Now().Sub(p.epoch)) }

// release quarantines a pair by handing its sockets to a drain, or, without
// quarantine, closes them and frees the pair.
func (p *Pool) release(pp *PortPair, quarantine bool) error {
	p.mu.Lock()
	if quarantine && p.Quarantine >= 0 && !p.closed {
		defer p.mu.Unlock()
		now := p.nowNS()
		d := &drain{idx: pp.idx, conns: [2]*net.UDPConn{pp.rtp, pp.rtcp}, rs: pp.rs, released: now, peers: pp.peers}
		d.last.Store(now)
		p.inUse--
		p.state[pp.idx] = pairQuarantined
		p.quarantined++
		p.drains[pp.idx] = d
		d.timer = p.Clock.AfterFunc(p.Quarantine, func() { p.expire(d) })
		if pp.rs[0] != nil {
			var errs []error
			for kind, rs := range pp.rs {
				errs = append(errs, rs.attach(&drainSock{p: p, d: d, kind: kind}))
			}
			return errors.Join(errs...)
		}
		for kind, c := range d.conns {
			// The session's readers were ended by a read deadline; clear it.
			_ = c.SetReadDeadline(time.Time{})
			p.wg.Add(1)
			d.done.Add(1)
			go p.drainLoop(d, kind)
		}
		return nil
	}
	p.mu.Unlock()
	err := pp.closeSockets()
	p.mu.Lock()
	p.inUse--
	p.state[pp.idx] = pairFree
	p.mu.Unlock()
	return err
}

// drainLoop discards what arrives on one socket of a quarantined pair until
// the socket is closed. It does not allocate per packet.
func (p *Pool) drainLoop(d *drain, kind int) {
	defer p.wg.Done()
	defer d.done.Done()
	c, buf := d.conns[kind], d.bufs[kind][:]
	for {
		_, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
				return
			case errors.Is(err, os.ErrDeadlineExceeded):
				if d.taken.Load() {
					return
				}
				// Only if release could not clear the session's deadline;
				// retrying it beats spinning on the error.
				_ = c.SetReadDeadline(time.Time{})
			}
			// Otherwise transient, e.g. a queued ICMP error for the call's
			// last sends.
			continue
		}
		// Time first: a counted packet has its time recorded, which tests
		// on a fake clock rely on.
		d.last.Store(p.nowNS())
		d.heard[kind] = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		p.noSession.Add(1)
	}
}

// expire ends d's quarantine once the pair has been quiet for Quarantine or
// released for MaxQuarantine; otherwise it checks again at the earlier of the
// two. Like Session.armLocked, it wakes once per quiet period, not per packet.
func (p *Pool) expire(d *drain) {
	p.mu.Lock()
	if p.drains[d.idx] != d { // Close got there first
		p.mu.Unlock()
		return
	}
	now := p.nowNS()
	until := min(d.last.Load()+int64(p.Quarantine), d.released+int64(p.MaxQuarantine))
	if now < until {
		d.timer = p.Clock.AfterFunc(time.Duration(until-now), func() { p.expire(d) })
		p.mu.Unlock()
		return
	}
	p.drains[d.idx] = nil
	// Pool.Close waits for this too. The readers are still counted, so the
	// WaitGroup is not at zero.
	p.wg.Add(1)
	defer p.wg.Done()
	p.mu.Unlock()
	// Close returns once the descriptors are closed, so the ports are
	// unbound before the pair is free again.
	_ = d.close()
	d.done.Wait()
	p.mu.Lock()
	p.state[d.idx] = pairFree
	p.quarantined--
	p.mu.Unlock()
}

func (d *drain) close() error {
	if d.rs[0] != nil {
		return errors.Join(d.rs[0].close(), d.rs[1].close())
	}
	return errors.Join(ignoreClosed(d.conns[0].Close()), ignoreClosed(d.conns[1].Close()))
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
	rtp, rtcp *net.UDPConn // nil in IOEpoll mode
	rs        [2]*rsock    // RTP, RTCP in IOEpoll mode
	once      sync.Once
	// peers are the latched sources (RTP, RTCP) the session leaves for the
	// pool at release; taint is what the previous call on a reused pair
	// left (see Pool), per socket.
	peers [2]netip.AddrPort
	taint [2][2]netip.AddrPort
}

// Port is the RTP port; RTCP is on Port()+1.
func (pp *PortPair) Port() uint16 { return pp.port }

// RTP is the socket on the even port; nil when a Bridge with IOEpoll owns
// the pool, whose sockets only its reactors use.
func (pp *PortPair) RTP() *net.UDPConn { return pp.rtp }

// RTCP is the socket on the odd port; nil with IOEpoll, like RTP.
func (pp *PortPair) RTCP() *net.UDPConn { return pp.rtcp }

// Release hands the pair back to the pool, which quarantines it: the sockets
// stay bound and are drained until the quarantine ends, then closed (see
// Pool). Without quarantine (Quarantine < 0, or after Pool.Close) they are
// closed at once. The caller must have stopped reading the sockets: end
// blocked reads with a read deadline, not by closing them. Release is
// idempotent.
func (pp *PortPair) Release() error { return pp.close(true) }

// close releases the pair; quarantine false closes the sockets and frees the
// pair at once, for a pair that never carried media.
func (pp *PortPair) close(quarantine bool) error {
	var err error
	pp.once.Do(func() { err = pp.pool.release(pp, quarantine) })
	return err
}

// interrupt ends blocked reads on both sockets without closing them, so the
// pair can be drained after the readers have returned.
func (pp *PortPair) interrupt() {
	if pp.rs[0] != nil {
		// Paused, a socket's handler has returned and gets no more packets.
		pp.rs[0].pause()
		pp.rs[1].pause()
		return
	}
	for _, c := range []*net.UDPConn{pp.rtp, pp.rtcp} {
		if c.SetReadDeadline(aLongTimeAgo) != nil {
			// Cannot happen on an open socket; closing is the fallback
			// that still ends the read.
			_ = c.Close()
		}
	}
}

func (pp *PortPair) closeSockets() error {
	if pp.rs[0] != nil {
		return errors.Join(pp.rs[0].close(), pp.rs[1].close())
	}
	return errors.Join(ignoreClosed(pp.rtp.Close()), ignoreClosed(pp.rtcp.Close()))
}

// aLongTimeAgo is a read deadline that has passed, as in net/http.
var aLongTimeAgo = time.Unix(1, 0)

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
