package stunkeeper

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v3"
	"github.com/pion/transport/v4/vnet"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The lab is a pion vnet Internet built inside a synctest bubble: vnet's
// NAT expires mappings with time.Now, which is the bubble's fake clock,
// so minutes of NAT behaviour run in milliseconds and deterministically.
//
//	WAN 0.0.0.0/0 ── STUN responders (1.2.3.4, 1.2.3.5, ...)
//	 └─ LAN router(s) 192.168.0.0/24, NAT to 5.6.7.8 (5.6.7.9, ...)
//	     └─ 192.168.0.2:65002, the "SIP socket" the test owns

const lanIP = "192.168.0.2"

var (
	stun1  = netip.MustParseAddrPort("1.2.3.4:3478")
	stun2  = netip.MustParseAddrPort("1.2.3.5:3478")
	regSIP = netip.MustParseAddrPort("203.0.113.10:5060")
)

func quietVNetLogs() logging.LoggerFactory {
	f := logging.NewDefaultLoggerFactory()
	f.DefaultLogLevel = logging.LogLevelDisabled
	f.ScopeLevels = map[string]logging.LogLevel{}
	return f
}

func natType(mapping vnet.EndpointDependencyType) vnet.NATType {
	return vnet.NATType{
		Mode:              vnet.NATModeNormal,
		MappingBehavior:   mapping,
		FilteringBehavior: vnet.EndpointAddrPortDependent,
		MappingLifeTime:   30 * time.Second,
	}
}

type lab struct {
	t   *testing.T
	wan *vnet.Router
	// one per LAN router; the socket writes on sock.conns[active]
	sock *sipSocket
	resp map[netip.AddrPort]*responder
}

// newLab builds the topology with one LAN router per public IP. Call
// start before using it.
func newLab(t *testing.T, nat vnet.NATType, publicIPs ...string) *lab {
	t.Helper()
	return newLabDelay(t, nat, 0, publicIPs...)
}

// newLabDelay is newLab with a one-way WAN delay (RTT = 2*delay).
func newLabDelay(t *testing.T, nat vnet.NATType, delay time.Duration, publicIPs ...string) *lab {
	t.Helper()
	if len(publicIPs) == 0 {
		publicIPs = []string{"5.6.7.8"}
	}
	nats := make([]vnet.NATType, len(publicIPs))
	for i := range nats {
		nats[i] = nat
	}
	return newLabNATs(t, nats, delay, publicIPs...)
}

// newLabNATs is newLabDelay with one NAT type per LAN router: a "redial"
// can then land behind another kind of NAT.
func newLabNATs(t *testing.T, nats []vnet.NATType, delay time.Duration, publicIPs ...string) *lab {
	t.Helper()
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "0.0.0.0/0", MinDelay: delay, LoggerFactory: quietVNetLogs()})
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, wan: wan, sock: &sipSocket{}, resp: map[netip.AddrPort]*responder{}}
	for i, pub := range publicIPs {
		nt := nats[i]
		lan, err := vnet.NewRouter(&vnet.RouterConfig{
			CIDR:          "192.168.0.0/24",
			StaticIPs:     []string{pub},
			NATType:       &nt,
			LoggerFactory: quietVNetLogs(),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := wan.AddRouter(lan); err != nil {
			t.Fatal(err)
		}
		host, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{lanIP}})
		if err != nil {
			t.Fatal(err)
		}
		if err := lan.AddNet(host); err != nil {
			t.Fatal(err)
		}
		l.sock.nets = append(l.sock.nets, host)
	}
	return l
}

// addResponder puts a STUN responder on the WAN at addr.
func (l *lab) addResponder(addr netip.AddrPort) *responder {
	l.t.Helper()
	n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{addr.Addr().String()}})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.wan.AddNet(n); err != nil {
		l.t.Fatal(err)
	}
	conn, err := n.ListenPacket("udp4", addr.String())
	if err != nil {
		l.t.Fatal(err)
	}
	r := &responder{conn: conn}
	l.resp[addr] = r
	return r
}

// start opens the SIP socket(s) and starts the routers; everything is
// torn down by the returned func (call it before the bubble ends).
func (l *lab) start() func() {
	l.t.Helper()
	for _, n := range l.sock.nets {
		c, err := n.ListenPacket("udp4", net.JoinHostPort(lanIP, "65002"))
		if err != nil {
			l.t.Fatal(err)
		}
		l.sock.conns = append(l.sock.conns, c)
	}
	if err := l.wan.Start(); err != nil {
		l.t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, r := range l.resp {
		wg.Go(r.serve)
	}
	for _, c := range l.sock.conns {
		wg.Go(func() { l.sock.readLoop(c) })
	}
	return func() {
		for _, r := range l.resp {
			_ = r.conn.Close()
		}
		for _, c := range l.sock.conns {
			_ = c.Close()
		}
		if err := l.wan.Stop(); err != nil {
			l.t.Error(err)
		}
		wg.Wait()
	}
}

// sipSocket plays the socket owner: it demuxes STUN into the keeper and
// reports every write with NoteSent, as linkmanager's socket wrapper must.
type sipSocket struct {
	nets   []*vnet.Net
	conns  []net.PacketConn
	active atomic.Int32 // which conn writes; switching it is a "redial"
	k      atomic.Pointer[Keeper]
	sipIn  atomic.Int64 // non-STUN packets read
}

func (s *sipSocket) send(b []byte, to netip.AddrPort) error {
	c := s.conns[s.active.Load()]
	if _, err := c.WriteTo(b, net.UDPAddrFromAddrPort(to)); err != nil {
		return err
	}
	if k := s.k.Load(); k != nil {
		k.NoteSent(to)
	}
	return nil
}

func (s *sipSocket) readLoop(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if IsSTUN(buf[:n]) {
			if k := s.k.Load(); k != nil {
				k.HandlePacket(buf[:n], from)
			}
			continue
		}
		s.sipIn.Add(1)
	}
}

// responder is a tiny STUN server: it answers Binding requests with
// XOR-MAPPED-ADDRESS (or only MAPPED-ADDRESS when rfc3489), and can be
// told to drop requests.
type responder struct {
	conn net.PacketConn

	mu       sync.Mutex
	dead     bool
	drop     int // drop this many more requests
	rfc3489  bool
	received []time.Time // fake-clock arrival of every request
	seen     []netip.AddrPort
}

func (r *responder) setDead(dead bool) {
	r.mu.Lock()
	r.dead = dead
	r.mu.Unlock()
}

func (r *responder) requests() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.received...)
}

func (r *responder) sources() []netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]netip.AddrPort(nil), r.seen...)
}

func (r *responder) serve() {
	buf := make([]byte, 1500)
	for {
		n, addr, err := r.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		req := new(stun.Message)
		if err := stun.Decode(buf[:n], req); err != nil || req.Type != stun.BindingRequest {
			continue
		}
		ua := addr.(*net.UDPAddr)
		from := ua.AddrPort()
		r.mu.Lock()
		r.received = append(r.received, time.Now())
		r.seen = append(r.seen, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
		skip := r.dead || r.drop > 0
		if r.drop > 0 {
			r.drop--
		}
		old := r.rfc3489
		r.mu.Unlock()
		if skip {
			continue
		}
		setters := []stun.Setter{stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess}
		if old {
			setters = append(setters, &stun.MappedAddress{IP: ua.IP, Port: ua.Port})
		} else {
			setters = append(setters, &stun.XORMappedAddress{IP: ua.IP, Port: ua.Port}, stun.Fingerprint)
		}
		resp, err := stun.Build(setters...)
		if err != nil {
			panic(err)
		}
		_, _ = r.conn.WriteTo(resp.Raw, addr)
	}
}

// logs is an in-memory zap logger for asserting "logged once".
type logs struct{ *observer.ObservedLogs }

func newLogs() (*zap.Logger, logs) {
	core, obs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs{obs}
}

func (l logs) count(msg string) int { return l.FilterMessage(msg).Len() }

// runKeeper starts k.Run and returns a stop func that cancels it and
// checks it returned nil. Stop is idempotent: tests both defer it (so a
// t.Fatal does not leave Run behind in the bubble) and call it.
func runKeeper(t *testing.T, k *Keeper) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- k.Run(ctx) }()
	var once sync.Once
	return func() {
		t.Helper()
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		})
	}
}

// newLabKeeper wires a keeper to the lab's socket.
func (l *lab) newKeeper(cfg Config) *Keeper {
	l.t.Helper()
	cfg.Send = l.sock.send
	k, err := New(cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	l.sock.k.Store(k)
	return k
}

func drain(ch <-chan Mapping) []Mapping {
	var out []Mapping
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				return out
			}
			out = append(out, m)
		default:
			return out
		}
	}
}

func isClosedErr(err error) bool { return errors.Is(err, ErrClosed) }
