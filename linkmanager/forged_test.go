package linkmanager

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// forgedConn is the Internet socket with datagrams from forged sources
// queued in front of what the network brings.
type forgedConn struct {
	*net.UDPConn
	mu     sync.Mutex
	next   int
	n      int
	packet []byte
}

func (c *forgedConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	c.mu.Lock()
	if c.next < c.n {
		i := c.next
		c.next++
		c.mu.Unlock()
		// 198.18.0.0/15 (RFC 2544), a new address and port each time.
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18 + byte(i>>24&1), byte(i >> 16), byte(i >> 8)}), uint16(1024+i&0xff))
		return copy(b, c.packet), src, nil
	}
	c.mu.Unlock()
	return c.UDPConn.ReadFromUDPAddrPort(b)
}

func (c *forgedConn) queue(n int, packet []byte) {
	c.mu.Lock()
	c.next, c.n, c.packet = 0, n, packet
	c.mu.Unlock()
}

// TestForgedSourceFloodKeepsNoState (issue 9 item 5): 240,000 SIP
// responses, each from another forged Internet source, leave the heap
// where it was: they are dropped and counted before sipgo parses them,
// so it keeps nothing per source. The issue measured the daemon before
// that filter: 240k forged sources left 37 MiB after GC, growing
// linearly, because sipgo keeps an entry per remote address.
func TestForgedSourceFloodKeepsNoState(t *testing.T) {
	if testing.Short() {
		t.Skip("240,000 datagrams")
	}
	reg := startUDPRegistrar(t)
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	sock := &forgedConn{UDPConn: listenOn(t, wanIP)}
	conn := sharedconn.New(sock, log, nil)
	keeper, err := stunkeeper.New(stunkeeper.Config{Interval: time.Second, Send: conn.Send, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetSTUNHandler(keeper.HandlePacket)
	srv, err := New(Options{Conn: conn, Keeper: keeper, Interval: time.Second, Logger: log,
		Trunks: []trunk.Options{{Name: "provider", Host: "127.0.0.1", Port: int(reg.addr().Port()), Domain: "sip.provider.test",
			Username: "4930123456", Password: "secret", Expires: 300 * time.Second, Register: true,
			Keepalive: config.KeepaliveOptions, DIDs: []string{"4930123456"}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	await(t, "registration", func() bool { return srv.Status()[0].Registered })

	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before, dropped := heap(), conn.Stats().DroppedSource
	const n = 240_000
	sock.queue(n, []byte(fmt.Sprintf("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-forged\r\nFrom: <sip:a@b>;tag=1\r\n"+
		"To: <sip:c@d>;tag=2\r\nCall-ID: forged\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", wanIP)))
	// Bounded generously: 240k datagrams take seconds, many more with
	// -race on two busy cores; the wait is for the count, not a time.
	for deadline := time.Now().Add(2 * time.Minute); conn.Stats().DroppedSource < dropped+n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d forged responses counted as dropped in 2 minutes", conn.Stats().DroppedSource-dropped, n)
		}
	}
	after := heap()
	growth := int64(after) - int64(before)
	t.Logf("%d responses from %d forged sources: heap %d → %d KiB after GC (%+d KiB)", n, n, before>>10, after>>10, growth>>10)
	if growth > 2<<20 {
		t.Errorf("the heap grew %d KiB after %d forged sources; want under 2 MiB (no state per source)", growth>>10, n)
	}
	if !srv.Status()[0].Registered {
		t.Error("the trunk lost its registration during the flood")
	}
}
