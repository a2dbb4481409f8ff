package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// natTestConfig writes a config whose SIP socket and STUN servers are on
// loopback.
func natTestConfig(t *testing.T, servers ...string) string {
	t.Helper()
	q := make([]string, len(servers))
	for i, s := range servers {
		q[i] = fmt.Sprintf("%q", s)
	}
	yaml := fmt.Sprintf(`sip: {listen: 127.0.0.1:65002}
stun: {servers: [%s]}
trunks:
  - {name: provider, registrar: 127.0.0.1, username: "49301", password: x, dids: ["49301"]}
pbx: {listen: 127.0.0.1:5060, address: 127.0.0.1:5070}
rtp: {port_min: 50000, port_max: 50100}
`, strings.Join(q, ", "))
	path := filepath.Join(t.TempDir(), "lm.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// stunOnLoopback answers Binding requests like a plain RFC 5389 server
// (no OTHER-ADDRESS) until the test ends.
func stunOnLoopback(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, addr, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			req := new(stun.Message)
			if stun.Decode(buf[:n], req) != nil {
				continue
			}
			ua := addr.(*net.UDPAddr)
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, stun.Fingerprint)
			_, _ = c.WriteTo(resp.Raw, addr)
		}
	}()
	return c.LocalAddr().String()
}

// On loopback there is no NAT; the server offers no RFC 5780, and the
// command says both. The sockets it tests on are ephemeral, never 65002.
func TestNATTestCommand(t *testing.T) {
	srv := stunOnLoopback(t)
	var out, errOut bytes.Buffer
	code := run([]string{"nat-test", "--config", natTestConfig(t, srv)}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errOut.String())
	}
	text := out.String()
	for _, want := range []string{
		"RFC 5780 server: none",
		srv + " sees 127.0.0.1:",
		"\nNAT: no NAT (public address 127.0.0.1): works; no port forward needed\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, ":65002") {
		t.Errorf("the test used the SIP port:\n%s", text)
	}
	out.Reset()
	if code := run([]string{"nat-test", "--config", natTestConfig(t, srv), "--lifetime"}, &out, &errOut); code != 0 ||
		!strings.Contains(out.String(), "\nbinding lifetime: not measured (it needs an RFC 5780 server)\n") {
		t.Errorf("--lifetime without RFC 5780: exit %d\n%s", code, out.String())
	}
}

func TestNATTestCommandFailures(t *testing.T) {
	// A server that never answers: exit 1 within the timeout, and say so.
	dead, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	var out, errOut bytes.Buffer
	start := time.Now()
	code := run([]string{"nat-test", "--config", natTestConfig(t, dead.LocalAddr().String()), "--timeout", "1s"}, &out, &errOut)
	if code != 1 || !strings.Contains(out.String(), "NAT: NAT type unknown: no STUN server answered") {
		t.Errorf("dead server: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v with --timeout 1s", d)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"nat-test", "--config", natTestConfig(t)}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "no stun.servers") {
		t.Errorf("no servers: exit %d, %q", code, errOut.String())
	}
	if code := run([]string{"nat-test", "--config", "/nonexistent.yaml"}, &out, &errOut); code != 2 {
		t.Errorf("missing config: exit %d", code)
	}
}
