package portmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// listen5351 binds port 5351 on a loopback address of its own
// (127.x.y.z), so parallel tests do not collide.
func listen5351(t *testing.T) (*net.UDPConn, netip.Addr) {
	t.Helper()
	for range 20 {
		addr := netip.AddrFrom4([4]byte{127, byte(1 + rand.IntN(250)), byte(rand.IntN(256)), byte(1 + rand.IntN(250))})
		if c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 5351))); err == nil {
			return c, addr
		}
	}
	t.Skip("no free loopback address for port 5351")
	return nil, netip.Addr{}
}

// pcpReq is a request as the fake gateway read it.
type pcpReq struct {
	op                 byte
	lifetime           uint32
	client, from       netip.Addr
	nonce              [12]byte
	internal, suggest  uint16
	proto              byte
	suggestedExtIsZero bool
}

// fakePCP is a PCP gateway (RFC 6887) on 127.x.y.z:5351, optionally
// speaking NAT-PMP too (as miniupnpd does); without it, it answers a
// NAT-PMP request UNSUPP_VERSION (§9). Before each answer it sends what
// junk makes of the request (hostile or stray datagrams).
type fakePCP struct {
	addr     netip.Addr
	conn     *net.UDPConn
	requests chan pcpReq
	natpmp   bool

	mu      sync.Mutex
	epoch   uint32
	result  byte   // the MAP answer's result code
	shift   uint16 // granted = suggested + shift
	maxLife uint32
	junk    func(req []byte) [][]byte
}

func startFakePCP(t *testing.T, natpmp bool) *fakePCP {
	t.Helper()
	conn, addr := listen5351(t)
	g := &fakePCP{addr: addr, conn: conn, requests: make(chan pcpReq, 20), natpmp: natpmp, epoch: 1000, maxLife: 86400}
	done := make(chan struct{})
	go g.serve(done)
	t.Cleanup(func() { conn.Close(); <-done })
	return g
}

func (g *fakePCP) set(fn func(*fakePCP)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fn(g)
}

func (g *fakePCP) serve(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 1200)
	for {
		n, from, err := g.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		g.mu.Lock()
		epoch, result, shift, maxLife, junk := g.epoch, g.result, g.shift, g.maxLife, g.junk
		g.mu.Unlock()
		if n >= 2 && b[0] == 0 { // NAT-PMP
			out := []byte{0, 128 + b[1], 0, 1, 0, 0, 0, 0} // UNSUPP_VERSION
			if g.natpmp && b[1] == 0 {
				out = []byte{0, 128, 0, 0, 0, 0, 0, 42, 203, 0, 113, 9}
			}
			g.conn.WriteToUDPAddrPort(out, from)
			continue
		}
		if n < 24 || b[0] != 2 {
			continue
		}
		r := pcpReq{op: b[1], lifetime: binary.BigEndian.Uint32(b[4:]), client: netip.AddrFrom16([16]byte(b[8:24])), from: from.Addr()}
		out := make([]byte, 24, 60)
		out[0], out[1] = 2, b[1]|0x80
		binary.BigEndian.PutUint32(out[8:], epoch)
		if r.op == 1 && n >= 60 {
			m := b[24:60]
			r.nonce, r.proto = [12]byte(m[:12]), m[12]
			r.internal, r.suggest = binary.BigEndian.Uint16(m[16:]), binary.BigEndian.Uint16(m[18:])
			r.suggestedExtIsZero = netip.AddrFrom16([16]byte(m[20:36])) == netip.MustParseAddr("::ffff:0.0.0.0")
			out[3] = result
			life := min(r.lifetime, maxLife)
			ext := r.suggest + shift
			if r.suggest == 0 {
				ext = r.internal
			}
			binary.BigEndian.PutUint32(out[4:], life)
			out = append(out, m[:20]...)
			binary.BigEndian.PutUint16(out[42:], ext)
			a := netip.MustParseAddr("::ffff:203.0.113.9").As16()
			out = append(out, a[:]...)
		}
		g.requests <- r
		if junk != nil {
			for _, j := range junk(b) {
				g.conn.WriteToUDPAddrPort(j, from)
			}
		}
		g.conn.WriteToUDPAddrPort(out, from)
	}
}

func (g *fakePCP) next(t *testing.T) pcpReq {
	t.Helper()
	select {
	case r := <-g.requests:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no request at the fake PCP gateway")
		return pcpReq{}
	}
}

// TestPCP: a MAP for UDP from our own address (IPv4-mapped) with a nonce,
// granted on another port with the gateway's external address and its
// clamped lifetime; the renewal keeps the nonce; the delete is lifetime 0
// with that nonce.
func TestPCP(t *testing.T) {
	t.Parallel()
	g := startFakePCP(t, false)
	g.set(func(g *fakePCP) { g.shift, g.maxLife = 7, 3600 })
	p := NewPCP(g.addr, netip.Addr{}, 2*time.Second)
	ctx := context.Background()
	if err := p.Announce(ctx); err != nil {
		t.Fatalf("Announce = %v", err)
	}
	if r := g.next(t); r.op != 0 || r.client != netip.AddrFrom16(r.from.As16()) {
		t.Fatalf("ANNOUNCE %+v, want opcode 0 naming its source address", r)
	}
	if _, err := p.ExternalAddr(ctx); err == nil {
		t.Fatal("ExternalAddr before any mapping succeeded; PCP learns it from a MAP answer")
	}
	got, life, err := p.MapAddr(ctx, 55000, 55000, 2*time.Hour)
	if err != nil || got != netip.MustParseAddrPort("203.0.113.9:55007") || life != time.Hour {
		t.Fatalf("MapAddr = %s %s %v, want 203.0.113.9:55007 1h (the gateway's cap)", got, life, err)
	}
	first := g.next(t)
	if first.op != 1 || first.proto != 17 || first.internal != 55000 || first.suggest != 55000 || first.lifetime != 7200 ||
		first.client != netip.AddrFrom16(first.from.As16()) || !first.suggestedExtIsZero || first.nonce == [12]byte{} {
		t.Fatalf("MAP request %+v", first)
	}
	if ext, err := p.ExternalAddr(ctx); err != nil || ext != netip.MustParseAddr("203.0.113.9") {
		t.Fatalf("ExternalAddr after a grant = %s, %v", ext, err)
	}
	if port, _, err := p.Map(ctx, 55000, 55007, 2*time.Hour); err != nil || port != 55014 {
		t.Fatalf("renewal Map = %d, %v", port, err)
	}
	if r := g.next(t); r.nonce != first.nonce || r.suggest != 55007 {
		t.Fatalf("renewal %+v: want the first nonce and the granted port suggested", r)
	}
	if _, _, err := p.MapAddr(ctx, 55002, 55002, time.Hour); err != nil {
		t.Fatal(err)
	}
	if r := g.next(t); r.nonce == first.nonce {
		t.Fatal("a second mapping reuses the first one's nonce")
	}
	if err := p.Unmap(ctx, 55000, 55014); err != nil {
		t.Fatal(err)
	}
	if r := g.next(t); r.op != 1 || r.lifetime != 0 || r.internal != 55000 || r.nonce != first.nonce {
		t.Fatalf("delete %+v, want MAP lifetime 0 of 55000 with its nonce (RFC 6887 §15)", r)
	}
	if err := p.Unmap(ctx, 55000, 55014); !errors.Is(err, ErrNotMapped) {
		t.Fatalf("a second delete = %v, want ErrNotMapped (nothing sent)", err)
	}
	if p.Dropped() != 0 {
		t.Fatalf("Dropped = %d on clean answers", p.Dropped())
	}
}

// TestPCPResultCodes: error answers are errors of their kind, at once.
func TestPCPResultCodes(t *testing.T) {
	t.Parallel()
	g := startFakePCP(t, false)
	p := NewPCP(g.addr, netip.Addr{}, 2*time.Second)
	for _, tc := range []struct {
		code byte
		want error
	}{
		{2, ErrNotAuthorized},
		{8, ErrNoResources},
		{10, ErrNoResources},
		{3, ErrPCPRefused},
		{12, ErrPCPRefused},
		{200, ErrPCPRefused},
	} {
		g.set(func(g *fakePCP) { g.result = tc.code })
		start := time.Now()
		_, _, err := p.Map(context.Background(), 55000, 55000, time.Hour)
		if !errors.Is(err, tc.want) || time.Since(start) > time.Second {
			t.Errorf("result %d: Map = %v after %s, want %v at once", tc.code, err, time.Since(start), tc.want)
		}
		g.next(t)
	}
}

// TestPCPHostileAnswers: datagrams that are not the answer (short, odd
// length, another version, no reply bit, another opcode, another nonce,
// another port) are dropped and counted, and the real answer after them is
// taken.
func TestPCPHostileAnswers(t *testing.T) {
	t.Parallel()
	g := startFakePCP(t, false)
	mangle := func(req []byte, f func(b []byte) []byte) []byte {
		b := make([]byte, 60)
		b[0], b[1] = 2, req[1]|0x80
		copy(b[24:], req[24:44]) // nonce, protocol, internal port
		return f(b)
	}
	junk := func(req []byte) [][]byte {
		return [][]byte{
			{2},
			mangle(req, func(b []byte) []byte { return b[:30] }),                           // not a multiple of 4
			mangle(req, func(b []byte) []byte { return b[:24] }),                           // MAP answer without its body
			mangle(req, func(b []byte) []byte { b[0] = 3; return b }),                      // another version
			mangle(req, func(b []byte) []byte { b[1] &^= 0x80; return b }),                 // a request, not an answer
			mangle(req, func(b []byte) []byte { b[1] = 0x82; return b }),                   // PEER
			mangle(req, func(b []byte) []byte { b[24] ^= 1; return b }),                    // another nonce
			mangle(req, func(b []byte) []byte { b[36] = 6; return b }),                     // TCP
			mangle(req, func(b []byte) []byte { b[41]++; return b }),                       // another internal port
			mangle(req, func(b []byte) []byte { return append(b, make([]byte, 1100)...) }), // too long
		}
	}
	g.set(func(g *fakePCP) { g.junk = junk })
	p := NewPCP(g.addr, netip.Addr{}, 2*time.Second)
	got, _, err := p.MapAddr(context.Background(), 55000, 55000, time.Hour)
	if err != nil || got != netip.MustParseAddrPort("203.0.113.9:55000") {
		t.Fatalf("MapAddr after junk = %s, %v", got, err)
	}
	if d := p.Dropped(); d != 10 {
		t.Fatalf("Dropped = %d, want 10", d)
	}
}

// TestPCPUnsupportedVersion: a NAT-PMP gateway answers a PCP request with
// a version-0 UNSUPP_VERSION (RFC 6887 §9): ErrUnsupportedVersion at once,
// so Discover falls back to NAT-PMP without waiting out a timeout.
func TestPCPUnsupportedVersion(t *testing.T) {
	t.Parallel()
	g := startFakeNATPMP(t, 0)
	start := time.Now()
	err := NewPCP(g.addr, netip.Addr{}, 2*time.Second).Announce(context.Background())
	if !errors.Is(err, ErrUnsupportedVersion) || time.Since(start) > time.Second {
		t.Fatalf("Announce to a NAT-PMP gateway = %v after %s, want ErrUnsupportedVersion at once", err, time.Since(start))
	}
	p, err := Discover(context.Background(), g.addr, netip.MustParseAddr("127.0.0.1"), 2*time.Second)
	if err != nil || p.Name() != "nat-pmp" || time.Since(start) > time.Second {
		t.Fatalf("Discover at a NAT-PMP gateway = %v, %v after %s", p, err, time.Since(start))
	}
}

// TestPCPNoAnswer: nothing answers within the timeout: an error, bounded
// in time, after a few resends.
func TestPCPNoAnswer(t *testing.T) {
	t.Parallel()
	conn, addr := listen5351(t) // bound, so no ICMP unreachable; never answers
	defer conn.Close()
	start := time.Now()
	err := NewPCP(addr, netip.Addr{}, 600*time.Millisecond).Announce(context.Background())
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("Announce with no answer = %v after %s", err, time.Since(start))
	}
	buf := make([]byte, 100)
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)) // what was sent is queued already
	sent := 0
	for {
		if _, _, err := conn.ReadFromUDPAddrPort(buf); err != nil {
			break
		}
		sent++
	}
	if sent < 2 || sent > 4 { // at 0, 250 ms (and 750 ms, past the deadline: not sent)
		t.Fatalf("%d requests sent in 600 ms, want 2 or 3 (resent after 250 ms, then 500 ms)", sent)
	}
}

// TestDiscoverPCP: a gateway that speaks PCP and NAT-PMP (miniupnpd) is
// used by PCP. (On the code before PCP, Discover returned nat-pmp here.)
func TestDiscoverPCP(t *testing.T) {
	t.Parallel()
	g := startFakePCP(t, true)
	p, err := Discover(context.Background(), g.addr, netip.MustParseAddr("127.0.0.1"), 2*time.Second)
	if err != nil || p.Name() != "pcp" {
		t.Fatalf("Discover = %v, %v; want pcp", p, err)
	}
}

// TestPCPEpochLost: an epoch that goes back (the gateway restarted) or
// falls behind our clock signals Lost; one that keeps pace does not.
func TestPCPEpochLost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		after  time.Duration
		server uint32 // the second epoch; the first is 1000
		lost   bool
	}{
		{"keeps pace", 100 * time.Second, 1100, false},
		{"within 2 s", 10 * time.Second, 1012, false},
		{"within 1/16", 1600 * time.Second, 1000 + 1600 - 90, false},
		{"went back", 10 * time.Second, 5, true},
		{"fell behind: restarted meanwhile", 1000 * time.Second, 1300, true},
		{"ran ahead", 10 * time.Second, 1100, true},
		{"same answer twice", 0, 1000, false},
		{"a second behind (answers reordered)", 500 * time.Millisecond, 999, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e pcpEpoch
			if e.observe(1000, t0) {
				t.Fatal("the first epoch is a loss")
			}
			if got := e.observe(tc.server, t0.Add(tc.after)); got != tc.lost {
				t.Errorf("epoch 1000 then %d after %s: lost %v, want %v", tc.server, tc.after, got, tc.lost)
			}
		})
	}
	// Through the wire: the gateway's epoch drops to 0.
	g := startFakePCP(t, false)
	p := NewPCP(g.addr, netip.Addr{}, 2*time.Second)
	if err := p.Announce(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Lost():
		t.Fatal("Lost after the first answer")
	default:
	}
	g.set(func(g *fakePCP) { g.epoch = 0 })
	if _, _, err := p.Map(context.Background(), 55000, 55000, time.Hour); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Lost():
	default:
		t.Fatal("no Lost after the gateway's epoch went from 1000 to 0")
	}
}

// FuzzParsePCPResponse: any datagram is an answer, an error or dropped;
// never a panic; an accepted MAP answer carries our nonce and port.
func FuzzParsePCPResponse(f *testing.F) {
	req := &pcpRequest{op: pcpOpMap, internal: 55000, nonce: [12]byte{1, 2, 3}}
	good := make([]byte, 60)
	good[0], good[1] = 2, 0x81
	copy(good[24:], req.nonce[:])
	good[36] = 17
	binary.BigEndian.PutUint16(good[40:], 55000)
	f.Add(good)
	f.Add(good[:24])
	f.Add([]byte{0, 0x81, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePCPResponse(b, req)
		if err != nil {
			return
		}
		if len(b) < pcpMapLen || len(b)%4 != 0 || !bytes.Equal(b[24:36], req.nonce[:]) ||
			binary.BigEndian.Uint16(b[40:42]) != 55000 || r.external.Port() != binary.BigEndian.Uint16(b[42:44]) {
			t.Fatalf("accepted %x as %+v", b, r)
		}
	})
}

// TestPCPRequestEncoding pins the wire format (RFC 6887 §7.1, §11.1).
func TestPCPRequestEncoding(t *testing.T) {
	r := pcpRequest{op: pcpOpMap, client: netip.MustParseAddr("192.168.100.2"), lifetime: 7200,
		nonce: [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, internal: 65002, external: 65002}
	got := r.appendTo(nil)
	want := []byte{
		2, 1, 0, 0, 0, 0, 0x1c, 0x20, // version, MAP, reserved, lifetime 7200
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 100, 2, // ::ffff:192.168.100.2
		1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // nonce
		17, 0, 0, 0, 0xfd, 0xea, 0xfd, 0xea, // UDP, reserved, ports 65002
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, // ::ffff:0.0.0.0: no preference
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("MAP request\n%x\nwant\n%x", got, want)
	}
	a := pcpRequest{op: pcpOpAnnounce, client: netip.MustParseAddr("192.168.100.2")}
	if got := a.appendTo(nil); len(got) != 24 || got[1] != 0 {
		t.Fatalf("ANNOUNCE %x", got)
	}
}

// TestMapperOverPCP: the Mapper over a real PCP client and the fake
// gateway takes the external address from the grants (PCP has no request
// for it alone), shows it and the dropped junk in Status, and deletes the
// mapping when Run stops.
func TestMapperOverPCP(t *testing.T) {
	t.Parallel()
	g := startFakePCP(t, false)
	g.set(func(g *fakePCP) {
		g.junk = func([]byte) [][]byte { return [][]byte{{2, 0x81, 0, 0}} } // short: dropped
	})
	m, err := New(Config{Gateway: g.addr, Ports: []uint16{65002},
		Probe: func(context.Context, netip.Addr, netip.Addr, time.Duration) (Protocol, error) {
			return NewPCP(g.addr, netip.Addr{}, 2*time.Second), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	if r := g.next(t); r.op != 1 || r.internal != 65002 || r.lifetime != 7200 {
		t.Fatalf("first request %+v, want MAP 65002 for 2 h", r)
	}
	var st Status
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st = m.Status(); len(st.Mappings) == 1 || time.Now().After(deadline) {
			break
		}
	}
	if st.Protocol != "pcp" || st.External != "203.0.113.9" || len(st.Mappings) != 1 ||
		st.Mappings[0].External != "203.0.113.9:65002" || st.Dropped != 1 {
		t.Fatalf("Status = %+v, want pcp, 203.0.113.9:65002, 1 dropped", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := g.next(t); r.op != 1 || r.lifetime != 0 || r.internal != 65002 {
		t.Fatalf("request at stop %+v, want the delete of 65002", r)
	}
}

// TestPCPFromLocal (review): the MAP leaves from the address our sockets
// are bound to and names it as the client, so the router forwards the
// port there. Before, the socket was the kernel's choice: a daemon on a
// second address of its interface got its ports forwarded to the first.
func TestPCPFromLocal(t *testing.T) {
	t.Parallel()
	g := startFakePCP(t, false)
	local := netip.MustParseAddr("127.0.0.77")
	if _, _, err := NewPCP(g.addr, local, 2*time.Second).MapAddr(context.Background(), 55000, 55000, time.Hour); err != nil {
		t.Fatal(err)
	}
	want := netip.AddrFrom16(local.As16())
	if r := g.next(t); r.from != local || r.client != want {
		t.Fatalf("MAP from %s naming client %s, want both %s", r.from, r.client, local)
	}
}
