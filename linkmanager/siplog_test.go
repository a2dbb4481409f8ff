package linkmanager

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/linkmanager/linkmanager/linkmanager/sharedconn"
)

// A flood of unparsable "SIP/2.0 ..." datagrams through a real sipgo
// server: sipgo logs each one whole at error level. The bridge must keep
// that to a few short lines without stack traces.
func TestSIPGoLoggerBoundsAFlood(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	slogger := SIPGoLogger(zap.New(core))
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slogger)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slogger)))
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(slogger))
	if err != nil {
		t.Fatal(err)
	}
	sock := listenLoopback(t)
	c := sharedconn.New(sock, nil, nil)
	// Allowed source: the filter is not what this test is about.
	c.SetRequestFilter(func(netip.AddrPort) bool { return true })
	served := make(chan error, 1)
	go func() { served <- srv.ServeUDP(c) }()
	<-c.Ready()

	// Batches small enough for the socket buffer, each awaited, so the
	// kernel drops nothing and every datagram reaches sipgo.
	const flood, batch = 500, 20
	junk := []byte("SIP/2.0 " + strings.Repeat("x", 4000) + "\r\n\r\n")
	peer := listenLoopback(t)
	for sent := 0; sent < flood; {
		for range batch {
			if _, err := peer.WriteTo(junk, sock.LocalAddr()); err != nil {
				t.Fatal(err)
			}
		}
		sent += batch
		for deadline := time.Now().Add(10 * time.Second); c.Stats().SIPIn < uint64(sent); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("sipgo took in %d of %d datagrams", c.Stats().SIPIn, sent)
			}
		}
	}
	in := c.Stats().SIPIn
	c.Close()
	if err := <-served; err != nil && !isClosed(err) {
		t.Fatal(err)
	}
	parse := logs.FilterMessage("failed to parse").All()
	if len(parse) == 0 {
		t.Fatal("sipgo logged no parse failure: the test proves nothing")
	}
	if len(parse) > sipgoBurst {
		t.Errorf("%d \"failed to parse\" lines for %d datagrams; want at most %d per %v", len(parse), in, sipgoBurst, sipgoTick)
	}
	total := 0
	for _, e := range logs.All() {
		if e.Stack != "" {
			t.Errorf("%q logged with a stack trace", e.Message)
		}
		for _, f := range e.Context {
			total += len(f.String)
			if len(f.String) > sipgoMaxField+len("…(truncated)") {
				t.Errorf("%q field %s is %d bytes", e.Message, f.Key, len(f.String))
			}
		}
	}
	t.Logf("%d datagrams reached sipgo; %d log lines, %d bytes of fields", in, logs.Len(), total)
}

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func isClosed(err error) bool {
	return err != nil && strings.Contains(err.Error(), net.ErrClosed.Error())
}
