package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// PCP (RFC 6887) is written here, not imported: no maintained Go module
// speaks it on its own. tailscale's portmapper does (net/portmapper/pcp.go),
// but only inside tailscale.com, whose client wants tailscale's netmon,
// event bus and health tracker; the wire format is two fixed structs.

// PCP's wire constants (RFC 6887 §7, §11, §19).
const (
	pcpPort        = 5351
	pcpVersion     = 2
	pcpOpAnnounce  = 0
	pcpOpMap       = 1
	pcpReplyBit    = 0x80
	pcpHeaderLen   = 24
	pcpMapLen      = pcpHeaderLen + 36
	pcpMaxLen      = 1100 // §7: a message is at most 1100 bytes, a multiple of 4
	pcpProtoUDP    = 17
	pcpFirstResend = 250 * time.Millisecond // §8.1.1 says IRT 3 s; our whole budget is one RequestTimeout (1 s) on the LAN
)

// PCP result codes (RFC 6887 §7.4).
const (
	pcpSuccess       = 0
	pcpUnsuppVersion = 1
	pcpNotAuthorized = 2
	pcpNoResources   = 8
	pcpUserExQuota   = 10
	pcpAddrMismatch  = 12
)

// Errors of PCP answers. ErrUnsupportedVersion is how a NAT-PMP gateway
// (or an old PCP one) answers a PCP request (RFC 6887 §9): the caller
// falls back to NAT-PMP.
var (
	ErrUnsupportedVersion = errors.New("portmap: pcp: the gateway does not speak PCP version 2")
	ErrNotAuthorized      = errors.New("portmap: pcp: not authorized")
	ErrNoResources        = errors.New("portmap: pcp: the gateway has no resources for the mapping")
	ErrPCPRefused         = errors.New("portmap: pcp: request refused")
	errPCPNoAddr          = errors.New("portmap: pcp: the external address is known after the first mapping")
)

// pcpResultErr maps a result code to an error (nil for SUCCESS).
func pcpResultErr(code byte) error {
	switch code {
	case pcpSuccess:
		return nil
	case pcpUnsuppVersion:
		return ErrUnsupportedVersion
	case pcpNotAuthorized:
		return ErrNotAuthorized
	case pcpNoResources, pcpUserExQuota:
		return fmt.Errorf("%w (result %d)", ErrNoResources, code)
	case pcpAddrMismatch:
		return fmt.Errorf("%w: ADDRESS_MISMATCH: the gateway sees another source address than ours (a second NAT on the way?)", ErrPCPRefused)
	default: // MALFORMED_REQUEST, UNSUPP_OPCODE, UNSUPP_PROTOCOL, CANNOT_PROVIDE_EXTERNAL, …
		return fmt.Errorf("%w (result %d)", ErrPCPRefused, code)
	}
}

// pcpRequest is one request: ANNOUNCE (the probe, §14.1) or MAP.
type pcpRequest struct {
	op       byte
	client   netip.Addr // our address as the gateway sees it (§8.1: it checks it against the source)
	lifetime uint32
	nonce    [12]byte // MAP only
	internal uint16
	external uint16 // suggested; 0: any
}

// appendTo encodes r (RFC 6887 §7.1, §11.1). IPv4 addresses go as
// IPv4-mapped IPv6 (§5); the suggested external address is the IPv4
// all-zeros one: no preference.
func (r *pcpRequest) appendTo(b []byte) []byte {
	b = append(b, pcpVersion, r.op, 0, 0)
	b = binary.BigEndian.AppendUint32(b, r.lifetime)
	c := netip.AddrFrom16(r.client.As16())
	if r.client.Is4() {
		c = netip.AddrFrom16(netip.AddrFrom4(r.client.As4()).As16()) // ::ffff:a.b.c.d
	}
	a := c.As16()
	b = append(b, a[:]...)
	if r.op != pcpOpMap {
		return b
	}
	b = append(b, r.nonce[:]...)
	b = append(b, pcpProtoUDP, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, r.internal)
	b = binary.BigEndian.AppendUint16(b, r.external)
	zero := netip.AddrFrom16(netip.AddrFrom4([4]byte{}).As16()).As16() // ::ffff:0.0.0.0
	return append(b, zero[:]...)
}

// pcpResponse is a parsed answer.
type pcpResponse struct {
	result   byte
	lifetime uint32
	epoch    uint32
	external netip.AddrPort // MAP only
}

// errDrop: the datagram is not an answer to our request; it is counted
// and the wait goes on.
var errDrop = errors.New("portmap: pcp: not an answer to our request")

// parsePCPResponse checks b against req: anything that is not its answer
// is errDrop. A NAT-PMP answer (version 0) saying "unsupported version" is
// ErrUnsupportedVersion (RFC 6887 §9, RFC 6886 §3.5).
func parsePCPResponse(b []byte, req *pcpRequest) (pcpResponse, error) {
	if len(b) >= 4 && b[0] == 0 && b[1] >= pcpReplyBit && binary.BigEndian.Uint16(b[2:4]) == pcpUnsuppVersion {
		return pcpResponse{}, ErrUnsupportedVersion
	}
	if len(b) < pcpHeaderLen || len(b) > pcpMaxLen || len(b)%4 != 0 {
		return pcpResponse{}, errDrop
	}
	if b[0] != pcpVersion {
		if b[3] == pcpUnsuppVersion && b[1] == req.op|pcpReplyBit {
			return pcpResponse{}, ErrUnsupportedVersion // a PCP server of another version (§9)
		}
		return pcpResponse{}, errDrop
	}
	if b[1] != req.op|pcpReplyBit {
		return pcpResponse{}, errDrop
	}
	r := pcpResponse{result: b[3], lifetime: binary.BigEndian.Uint32(b[4:8]), epoch: binary.BigEndian.Uint32(b[8:12])}
	if req.op != pcpOpMap {
		return r, nil
	}
	if len(b) < pcpMapLen {
		// An error answer may come without the opcode's body only when
		// the request was too short to hold one; ours never is.
		return pcpResponse{}, errDrop
	}
	m := b[pcpHeaderLen:]
	if [12]byte(m[:12]) != req.nonce || m[12] != pcpProtoUDP || binary.BigEndian.Uint16(m[16:18]) != req.internal {
		return pcpResponse{}, errDrop // §11.3: the nonce, protocol and internal port must match
	}
	ext := netip.AddrFrom16([16]byte(m[20:36])).Unmap()
	r.external = netip.AddrPortFrom(ext, binary.BigEndian.Uint16(m[18:20]))
	return r, nil
}

// PCP speaks PCP (RFC 6887) MAP to the gateway's port 5351: a mapping per
// internal port, each with its own nonce (kept across renewals and for the
// delete, §11.2), deleted by a MAP with lifetime 0. It watches the
// gateway's epoch (§8.5): a gateway that restarted and lost its mappings
// is reported on Lost, and the Mapper then renews every lease at once.
type PCP struct {
	gw      netip.AddrPort
	local   netip.Addr // the socket's source; zero: the kernel's choice
	timeout time.Duration
	dropped atomic.Uint64 // datagrams that were not an answer to the request in flight
	lost    chan struct{} // one pending notice

	mu     sync.Mutex
	nonces map[uint16][12]byte // by internal port
	ext    netip.Addr          // as the last MAP answer named it
	epoch  pcpEpoch
}

// NewPCP is a PCP client of gateway, sending from local; timeout bounds
// each request. A MAP maps the port for its sender's own address (RFC
// 6887 §8.1), so local is the address our sockets are bound to
// (sip.listen): with a zero one the kernel picks its primary address, and
// a daemon on a second address of that interface would get its ports
// forwarded to where nothing listens.
func NewPCP(gateway, local netip.Addr, timeout time.Duration) *PCP {
	return &PCP{gw: netip.AddrPortFrom(gateway, pcpPort), local: local, timeout: timeout,
		lost: make(chan struct{}, 1), nonces: map[uint16][12]byte{}}
}

// Name implements Protocol.
func (*PCP) Name() string { return "pcp" }

// Dropped is how many datagrams were dropped as not an answer (short,
// another version, another opcode or nonce).
func (p *PCP) Dropped() uint64 { return p.dropped.Load() }

// Lost signals when the gateway's epoch shows it lost its state.
func (p *PCP) Lost() <-chan struct{} { return p.lost }

// Announce sends an ANNOUNCE (RFC 6887 §14.1): the probe. A PCP gateway
// answers SUCCESS; a NAT-PMP one UNSUPP_VERSION.
func (p *PCP) Announce(ctx context.Context) error {
	_, err := p.do(ctx, &pcpRequest{op: pcpOpAnnounce})
	return err
}

// ExternalAddr implements Protocol: PCP has no request for it alone, so it
// is what the last MAP answer named.
func (p *PCP) ExternalAddr(context.Context) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ext.IsValid() {
		return netip.Addr{}, errPCPNoAddr
	}
	return p.ext, nil
}

// Map implements Protocol.
func (p *PCP) Map(ctx context.Context, internal, external uint16, lifetime time.Duration) (uint16, time.Duration, error) {
	a, life, err := p.MapAddr(ctx, internal, external, lifetime)
	return a.Port(), life, err
}

// MapAddr is Map with the external address the gateway granted.
func (p *PCP) MapAddr(ctx context.Context, internal, external uint16, lifetime time.Duration) (netip.AddrPort, time.Duration, error) {
	req := &pcpRequest{op: pcpOpMap, lifetime: uint32(lifetime / time.Second), internal: internal, external: external}
	// The nonce is kept from the first attempt on: a grant whose answer
	// was lost is renewed, not refused as another client's (§11.3).
	p.mu.Lock()
	n, ok := p.nonces[internal]
	if !ok {
		rand.Read(n[:]) // never fails (crypto/rand, Go 1.24+)
		p.nonces[internal] = n
	}
	p.mu.Unlock()
	req.nonce = n
	r, err := p.do(ctx, req)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	if !r.external.Addr().Is4() || r.external.Addr().IsUnspecified() || r.external.Port() == 0 {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: pcp granted %s", ErrBadResponse, r.external)
	}
	p.mu.Lock()
	p.ext = r.external.Addr()
	p.mu.Unlock()
	return r.external, time.Duration(r.lifetime) * time.Second, nil
}

// Unmap implements Protocol: MAP with lifetime 0 and the mapping's nonce
// (§15).
func (p *PCP) Unmap(ctx context.Context, internal, _ uint16) error {
	p.mu.Lock()
	n, ok := p.nonces[internal]
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: pcp: no mapping of port %d", ErrNotMapped, internal)
	}
	_, err := p.do(ctx, &pcpRequest{op: pcpOpMap, internal: internal, nonce: n})
	if err == nil {
		p.mu.Lock()
		delete(p.nonces, internal)
		p.mu.Unlock()
	}
	return err
}

// do sends req from a fresh socket connected to the gateway (the kernel
// then delivers only the gateway's datagrams), resends it after 250 ms,
// 500 ms, … until the context's deadline or the timeout, and returns the
// first real answer; anything else is dropped and counted.
func (p *PCP) do(ctx context.Context, req *pcpRequest) (pcpResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var from *net.UDPAddr
	if p.local.IsValid() && !p.local.IsUnspecified() {
		from = &net.UDPAddr{IP: p.local.AsSlice()}
	}
	conn, err := net.DialUDP("udp4", from, net.UDPAddrFromAddrPort(p.gw))
	if err != nil {
		return pcpResponse{}, err
	}
	defer conn.Close()
	req.client = conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	msg := req.appendTo(make([]byte, 0, pcpMapLen))
	buf := make([]byte, pcpMaxLen+4)
	resend := pcpFirstResend
	for next := time.Now(); ; {
		if ctx.Err() != nil {
			return pcpResponse{}, fmt.Errorf("portmap: pcp: no answer from %s: %w", p.gw, ctx.Err())
		}
		if !time.Now().Before(next) {
			if _, err := conn.Write(msg); err != nil {
				return pcpResponse{}, err
			}
			next = time.Now().Add(resend)
			resend *= 2
		}
		wait := next
		if deadline.Before(wait) {
			wait = deadline
		}
		conn.SetReadDeadline(wait) // a cancelled parent is seen within one resend interval
		n, err := conn.Read(buf)
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue
			}
			return pcpResponse{}, err // e.g. ICMP port unreachable: no PCP server there
		}
		r, err := parsePCPResponse(buf[:n], req)
		if errors.Is(err, errDrop) {
			p.dropped.Add(1)
			continue
		}
		if err != nil {
			return pcpResponse{}, err
		}
		p.checkEpoch(r.epoch, time.Now())
		if err := pcpResultErr(r.result); err != nil {
			return pcpResponse{}, err
		}
		return r, nil
	}
}

// checkEpoch notes the gateway's epoch and signals Lost when it shows a
// restart.
func (p *PCP) checkEpoch(epoch uint32, now time.Time) {
	p.mu.Lock()
	lost := p.epoch.observe(epoch, now)
	p.mu.Unlock()
	if lost {
		select {
		case p.lost <- struct{}{}:
		default:
		}
	}
}

// pcpEpoch is the client side of RFC 6887 §8.5: the gateway's epoch must
// advance with our clock (a 1/16 drift and 2 s allowed); when it does not,
// the gateway has restarted and lost its mappings.
type pcpEpoch struct {
	seen       bool
	prevServer uint32
	prevClient time.Time
}

func (e *pcpEpoch) observe(server uint32, now time.Time) (lost bool) {
	if e.seen {
		if server+1 < e.prevServer { // went back by more than a second
			lost = true
		} else {
			clientDelta := now.Sub(e.prevClient).Seconds()
			// Signed: an epoch up to a second behind the last one is not a
			// loss by itself (RFC 6887 §8.5), and unsigned it wrapped to
			// four billion seconds ahead.
			serverDelta := float64(int64(server) - int64(e.prevServer))
			lost = clientDelta+2 < serverDelta-serverDelta/16 || serverDelta+2 < clientDelta-clientDelta/16
		}
	}
	e.seen, e.prevServer, e.prevClient = true, server, now
	return lost
}
