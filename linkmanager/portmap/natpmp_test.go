package portmap

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// fakeNATPMP is a NAT-PMP gateway (RFC 6886) on 127.x.y.z:5351, a loopback
// address of its own so parallel tests do not collide. It grants every
// UDP request, shifted by shift when asked to, and records the requests.
type fakeNATPMP struct {
	addr     netip.Addr
	conn     *net.UDPConn
	requests chan [3]uint32 // internal, external, lifetime
	shift    uint16
}

func startFakeNATPMP(t *testing.T, shift uint16) *fakeNATPMP {
	t.Helper()
	conn, addr := listen5351(t)
	g := &fakeNATPMP{addr: addr, conn: conn, requests: make(chan [3]uint32, 10), shift: shift}
	done := make(chan struct{})
	go g.serve(done)
	t.Cleanup(func() { conn.Close(); <-done })
	return g
}

func (g *fakeNATPMP) serve(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 64)
	for {
		n, from, err := g.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if n < 2 {
			continue
		}
		if buf[0] != 0 { // PCP, say: UNSUPP_VERSION (RFC 6886 §3.5)
			g.conn.WriteToUDPAddrPort([]byte{0, 128 + buf[1], 0, 1, 0, 0, 0, 42}, from)
			continue
		}
		var out []byte
		switch op := buf[1]; {
		case op == 0 && n == 2: // external address
			out = []byte{0, 128, 0, 0, 0, 0, 0, 42, 203, 0, 113, 9}
		case op == 1 && n == 12: // map UDP
			in, ext, life := binary.BigEndian.Uint16(buf[4:]), binary.BigEndian.Uint16(buf[6:]), binary.BigEndian.Uint32(buf[8:])
			g.requests <- [3]uint32{uint32(in), uint32(ext), life}
			if life != 0 {
				ext += g.shift
			}
			out = make([]byte, 16)
			out[1] = 128 + 1
			binary.BigEndian.PutUint32(out[4:], 42)
			binary.BigEndian.PutUint16(out[8:], in)
			binary.BigEndian.PutUint16(out[10:], ext)
			binary.BigEndian.PutUint32(out[12:], life)
		default:
			continue
		}
		g.conn.WriteToUDPAddrPort(out, from)
	}
}

// TestNATPMP runs the adapter (go-nat-pmp) against the fake gateway: the
// external address, a mapping granted on another port, and its deletion.
func TestNATPMP(t *testing.T) {
	t.Parallel()
	g := startFakeNATPMP(t, 7)
	p := NewNATPMP(g.addr, 2*time.Second)
	ctx := context.Background()
	ext, err := p.ExternalAddr(ctx)
	if err != nil || ext != netip.MustParseAddr("203.0.113.9") {
		t.Fatalf("ExternalAddr = %s, %v", ext, err)
	}
	got, life, err := p.Map(ctx, 55000, 55000, 2*time.Hour)
	if err != nil || got != 55007 || life != 2*time.Hour {
		t.Fatalf("Map = %d %s %v, want 55007 2h", got, life, err)
	}
	if r := <-g.requests; r != [3]uint32{55000, 55000, 7200} {
		t.Fatalf("request %v", r)
	}
	if err := p.Unmap(ctx, 55000, 55007); err != nil {
		t.Fatal(err)
	}
	if r := <-g.requests; r != [3]uint32{55000, 0, 0} {
		t.Fatalf("delete request %v, want internal 55000, external 0, lifetime 0 (RFC 6886 §3.4)", r)
	}
}

// TestDiscoverNATPMP: Discover takes NAT-PMP when the gateway answers it
// (without an SSDP search: a unit test sends nothing beyond loopback).
func TestDiscoverNATPMP(t *testing.T) {
	t.Parallel()
	g := startFakeNATPMP(t, 0)
	p, err := Discover(context.Background(), g.addr, netip.MustParseAddr("127.0.0.1"), time.Second)
	if err != nil || p.Name() != "nat-pmp" {
		t.Fatalf("Discover = %v, %v", p, err)
	}
}
