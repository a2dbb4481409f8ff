//go:build linux

package e2e

// Real user agents in the lab (issue 8): baresip (the PBX, or a trunk
// stand-in on the Internet side) and linphone-daemon (the remote phone).
// Unlike sipp they check dialog tags: a BYE or re-INVITE with a tag they
// never saw gets 481. Each runs in a lab namespace with a config directory
// of its own, is driven through its control interface (baresip's ctrl_tcp
// module, linphone-daemon's unix socket) and is stopped by PID on cleanup.
// Every wait is for an event: a control-socket event, a call state, a
// packet in a capture.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// errUA is wrapped by every control failure of a real user agent.
var errUA = errors.New("real user agent")

// ---- baresip ----

// BaresipSpec configures one baresip instance.
type BaresipSpec struct {
	Name       string // for logs and file names
	NS, IP     string
	Port       int    // sip_listen port
	AOR        string // account, e.g. sip:4930123456@sip.provider.test
	Password   string // auth_pass ("" none)
	Outbound   string // outbound proxy URI ("" none)
	Register   bool   // REGISTER (regint=300), else regint=0
	AutoAnswer bool   // answermode=auto
}

// BaresipEvent is one event of the ctrl_tcp module.
type BaresipEvent struct {
	Type  string `json:"type"`
	Class string `json:"class"`
	ID    string `json:"id"`
	Param string `json:"param"`
	Peer  string `json:"peeruri"`
	At    time.Time
}

// Baresip is a running baresip with its ctrl_tcp connection.
type Baresip struct {
	*Proc
	Spec BaresipSpec
	Dir  string

	conn   net.Conn
	done   chan struct{} // the reader has exited
	mu     sync.Mutex
	events []BaresipEvent
	resp   map[string]chan baresipResponse
	seq    int
}

type baresipResponse struct {
	OK   bool   `json:"ok"`
	Data string `json:"data"`
}

// StartBaresip writes a config directory, starts baresip in spec.NS and
// connects to its ctrl_tcp socket (bounded). Audio: a 440 Hz tone from
// ausine, played out to ALSA's null device; PCMA only.
func (l *Lab) StartBaresip(t testing.TB, spec BaresipSpec) *Baresip {
	t.Helper()
	n := l.nextSeq()
	dir := filepath.Join(l.Dir, fmt.Sprintf("baresip-%02d-%s", n, spec.Name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctl := l.allocPorts(1)
	rtp := l.allocPorts(40)
	// ausine only makes 48 kHz stereo; baresip resamples to PCMA's 8 kHz mono.
	cfg := fmt.Sprintf(`poll_method epoll
sip_listen %s:%d
audio_player alsa,null
audio_alert alsa,null
audio_source ausine,440
ausrc_srate 48000
ausrc_channels 2
rtp_ports %d-%d
module_path /usr/lib/baresip/modules
module g711.so
module ausine.so
module alsa.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:%d
dns_server 127.0.0.1:53
`, spec.IP, spec.Port, rtp, rtp+39, ctl)
	acc := "<" + spec.AOR + ">"
	if spec.Password != "" {
		acc += ";auth_pass=" + spec.Password
	}
	if spec.Outbound != "" {
		acc += fmt.Sprintf(";outbound=%q", spec.Outbound)
	}
	regint := 0
	if spec.Register {
		regint = 300
	}
	acc += fmt.Sprintf(";regint=%d;audio_codecs=PCMA", regint)
	if spec.AutoAnswer {
		acc += ";answermode=auto"
	}
	for name, body := range map[string]string{"config": cfg, "accounts": acc + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := l.Start(spec.NS, filepath.Join(dir, "baresip.log"), "baresip", "-f", dir)
	b := &Baresip{Proc: p, Spec: spec, Dir: dir, done: make(chan struct{}), resp: map[string]chan baresipResponse{}}
	t.Cleanup(b.Close)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.Log(), "baresip is ready.") {
		if p.Exited() || time.Now().After(deadline) {
			close(b.done)
			t.Fatalf("baresip %s did not start:\n%s", spec.Name, tail(p.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		var conn net.Conn
		err := l.inNetns(spec.NS, func() error {
			var e error
			conn, e = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ctl), time.Second)
			return e
		})
		if err == nil {
			b.conn = conn
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			close(b.done)
			t.Fatalf("baresip %s: ctrl_tcp on 127.0.0.1:%d: %v\n%s", spec.Name, ctl, err, tail(p.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	go b.read()
	return b
}

// read parses ctrl_tcp's netstrings (LEN ":" JSON ","): responses go to
// the waiting command, events to the list.
func (b *Baresip) read() {
	defer close(b.done)
	r := bufio.NewReader(b.conn)
	for {
		lenStr, err := r.ReadString(':')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(lenStr[:len(lenStr)-1]))
		if err != nil || n < 0 || n > 1<<20 {
			return
		}
		buf := make([]byte, n+1)
		if _, err := io.ReadFull(r, buf); err != nil || buf[n] != ',' {
			return
		}
		var m struct {
			Response bool   `json:"response"`
			Event    bool   `json:"event"`
			Token    string `json:"token"`
			baresipResponse
			BaresipEvent
		}
		if json.Unmarshal(buf[:n], &m) != nil {
			continue
		}
		b.mu.Lock()
		switch {
		case m.Response:
			if c := b.resp[m.Token]; c != nil {
				c <- m.baresipResponse
				delete(b.resp, m.Token)
			}
		case m.Event:
			ev := m.BaresipEvent
			ev.At = time.Now()
			b.events = append(b.events, ev)
		}
		b.mu.Unlock()
	}
}

// Command runs a baresip command (the menu module's long names: dial,
// hangup, hold, resume, sndcode, ...) and returns its output.
func (b *Baresip) Command(cmd, params string) (string, error) {
	b.mu.Lock()
	b.seq++
	token := strconv.Itoa(b.seq)
	c := make(chan baresipResponse, 1)
	b.resp[token] = c
	b.mu.Unlock()
	msg, _ := json.Marshal(map[string]string{"command": cmd, "params": params, "token": token})
	_ = b.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(b.conn, "%d:%s,", len(msg), msg); err != nil {
		return "", fmt.Errorf("%w: baresip %s: %s: %v", errUA, b.Spec.Name, cmd, err)
	}
	select {
	case r := <-c:
		if !r.OK {
			return r.Data, fmt.Errorf("%w: baresip %s: %s %s failed: %s", errUA, b.Spec.Name, cmd, params, r.Data)
		}
		return r.Data, nil
	case <-b.done:
		return "", fmt.Errorf("%w: baresip %s: control connection closed during %s", errUA, b.Spec.Name, cmd)
	case <-time.After(10 * time.Second):
		return "", fmt.Errorf("%w: baresip %s: no answer to %s within 10 s", errUA, b.Spec.Name, cmd)
	}
}

// Events returns the events so far.
func (b *Baresip) Events() []BaresipEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]BaresipEvent(nil), b.events...)
}

// WaitEvent waits (bounded) until an event of typ has arrived and returns
// the first one.
func (b *Baresip) WaitEvent(typ string, timeout time.Duration) (BaresipEvent, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range b.Events() {
			if e.Type == typ {
				return e, nil
			}
		}
		if b.Exited() || time.Now().After(deadline) {
			var seen []string
			for _, e := range b.Events() {
				seen = append(seen, e.Type+"("+e.Param+")")
			}
			return BaresipEvent{}, fmt.Errorf("%w: baresip %s: no %s event within %v (exited %v; events %v)", errUA, b.Spec.Name, typ, timeout, b.Exited(), seen)
		}
		select {
		case <-b.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close drops the control connection, waits for its reader and stops
// baresip by PID.
func (b *Baresip) Close() {
	if b.conn != nil {
		_ = b.conn.Close()
		<-b.done
	}
	b.Proc.Stop(3 * time.Second)
}

// ---- linphone ----

// LinphoneSpec configures one linphone-daemon.
type LinphoneSpec struct {
	Name       string
	NS, IP     string
	Port       int // SIP (UDP) port
	RTPPort    int // audio RTP port
	AutoAnswer bool
}

// LinphoneEvent is one event popped from linphone-daemon's queue.
type LinphoneEvent struct {
	Type  string // Event-type, e.g. call-state-changed
	Event string // e.g. LinphoneCallStreamsRunning
	ID    int
	At    time.Time
}

// Linphone is a running linphone-daemon with its command socket.
type Linphone struct {
	*Proc
	Spec   LinphoneSpec
	Home   string
	Socket string
	WAV    string // what incall-player-start plays

	mu         sync.Mutex // one command at a time on the socket
	conn       net.Conn
	reconnects int
	events     []LinphoneEvent
}

// StartLinphone starts linphone-daemon in spec.NS with its own HOME and
// linphonerc, connects to its unix socket (bounded) and restricts the
// audio codecs to PCMA (telephone-event stays, RFC 2833 on). The phone's
// namespace needs its default route (lab.sh), or the SDP says 127.0.0.1.
func (l *Lab) StartLinphone(t testing.TB, spec LinphoneSpec) *Linphone {
	t.Helper()
	n := l.nextSeq()
	home := filepath.Join(l.Dir, fmt.Sprintf("linphone-%02d-%s", n, spec.Name))
	// liblinphone opens its database there; without the directory it never
	// binds its SIP port.
	if err := os.MkdirAll(filepath.Join(home, ".local", "share", "linphone"), 0o755); err != nil {
		t.Fatal(err)
	}
	rc := filepath.Join(home, "linphonerc")
	cfg := fmt.Sprintf(`[sip]
sip_port=%d
sip_tcp_port=0
sip_tls_port=0
contact="%s" <sip:%s@%s>
use_rfc2833=1
use_info=0
inc_timeout=60
[rtp]
audio_rtp_port=%d
[sound]
echocancellation=0
[video]
enabled=0
capture=0
display=0
automatically_initiate=0
automatically_accept=0
`, spec.Port, spec.Name, spec.Name, spec.IP, spec.RTPPort)
	if err := os.WriteFile(rc, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	wav := filepath.Join(home, "tone.wav")
	if err := writeToneWAV(wav, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	// the socket is /tmp/NAME (linphone-daemon's --pipe)
	pipe := fmt.Sprintf("%s-lp%02d", l.Prefix, n)
	args := []string{"env", "HOME=" + home, "linphone-daemon", "--config", rc, "--pipe", pipe,
		"--log", filepath.Join(home, "linphone.log")}
	if spec.AutoAnswer {
		args = append(args, "--auto-answer")
	}
	p := l.Start(spec.NS, filepath.Join(home, "linphone.out"), args...)
	lp := &Linphone{Proc: p, Spec: spec, Home: home, Socket: filepath.Join("/tmp", pipe), WAV: wav}
	t.Cleanup(lp.Close)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("unix", lp.Socket, time.Second)
		if err == nil {
			lp.conn = c
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("linphone %s: socket %s: %v\n%s", spec.Name, lp.Socket, err, tail(p.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []string{"audio-codec-disable ALL", "audio-codec-enable PCMA/8000/1"} {
		if _, err := lp.Command(c); err != nil {
			t.Fatal(err)
		}
	}
	// bound to its SIP port (the daemon answers before the core listens)
	for {
		out, err := l.Exec(spec.NS, "ss", "-Hlunp", "sport", "= :"+strconv.Itoa(spec.Port))
		if err == nil && strings.Contains(out, fmt.Sprintf("pid=%d,", p.PID())) {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("linphone %s did not bind UDP %d:\n%s", spec.Name, spec.Port, tail(p.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return lp
}

// Command sends one command line and reads its response. linphone-daemon
// reads one command per read and writes each response with one write, so
// one command is in flight at a time and one read takes the whole answer.
// Never send call-stats: linphone-daemon 5.1 crashes on it.
func (lp *Linphone) Command(cmd string) (string, error) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	_ = lp.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(lp.conn, cmd+"\n"); err != nil {
		// linphone-daemon drops a client that stays quiet for long (say
		// during a 10 s wait for a packet): connect again, send again.
		if rerr := lp.reconnect(); rerr != nil {
			return "", fmt.Errorf("%w: linphone %s: %s: %v; reconnect: %v", errUA, lp.Spec.Name, cmd, err, rerr)
		}
		_ = lp.conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(lp.conn, cmd+"\n"); err != nil {
			return "", fmt.Errorf("%w: linphone %s: %s: %v", errUA, lp.Spec.Name, cmd, err)
		}
	}
	buf := make([]byte, 256*1024)
	n, err := lp.conn.Read(buf)
	if err != nil {
		return "", fmt.Errorf("%w: linphone %s: %s: %v (exited %v)", errUA, lp.Spec.Name, cmd, err, lp.Exited())
	}
	out := string(buf[:n])
	if !strings.HasPrefix(out, "Status: Ok") {
		return out, fmt.Errorf("%w: linphone %s: %s: %s", errUA, lp.Spec.Name, cmd, strings.TrimSpace(strings.ReplaceAll(out, "\n", " ")))
	}
	return out, nil
}

// reconnect replaces the socket connection (lp.mu held).
func (lp *Linphone) reconnect() error {
	_ = lp.conn.Close()
	lp.reconnects++
	c, err := net.DialTimeout("unix", lp.Socket, 5*time.Second)
	if err != nil {
		return err
	}
	lp.conn = c
	return nil
}

// field returns the value of "Key: value" in a response.
func lpField(out, key string) string {
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Poll pops every queued event.
func (lp *Linphone) Poll() error {
	for {
		out, err := lp.Command("pop-event")
		if err != nil {
			return err
		}
		// Size counts what is left after this one: an event may come
		// with "Size: 0".
		if lpField(out, "Event") == "" {
			return nil
		}
		id, _ := strconv.Atoi(lpField(out, "Id"))
		lp.mu.Lock()
		lp.events = append(lp.events, LinphoneEvent{Type: lpField(out, "Event-type"), Event: lpField(out, "Event"), ID: id, At: time.Now()})
		lp.mu.Unlock()
	}
}

// Events returns the events popped so far.
func (lp *Linphone) Events() []LinphoneEvent {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return append([]LinphoneEvent(nil), lp.events...)
}

// WaitState waits (bounded) for the n-th call-state event state of call id
// (id 0: any call) and returns it.
func (lp *Linphone) WaitState(state string, id, n int, timeout time.Duration) (LinphoneEvent, error) {
	return lp.await(timeout, func(evs []LinphoneEvent) (LinphoneEvent, bool) {
		seen := 0
		for _, e := range evs {
			if e.Event == "LinphoneCall"+state && (id == 0 || e.ID == id) {
				if seen++; seen == n {
					return e, true
				}
			}
		}
		return LinphoneEvent{}, false
	}, fmt.Sprintf("no %s (#%d) of call %d", state, n, id))
}

// WaitRunning waits (bounded) until the latest call-state event of call
// id is StreamsRunning and returns it. Counting StreamsRunning events is
// not enough: a re-INVITE the daemon sends on its own (a NAT-race repair)
// adds one, and a count taken before it would then be met by that old
// event while the streams are still being restarted.
func (lp *Linphone) WaitRunning(id int, timeout time.Duration) (LinphoneEvent, error) {
	return lp.await(timeout, func(evs []LinphoneEvent) (LinphoneEvent, bool) {
		var last LinphoneEvent
		for _, e := range evs {
			if e.Type == "call-state-changed" && e.ID == id {
				last = e
			}
		}
		return last, last.Event == "LinphoneCallStreamsRunning"
	}, fmt.Sprintf("call %d not StreamsRunning", id))
}

// await polls the event queue until match finds its event, or fails with
// what and the events seen after timeout (or when the socket fails).
func (lp *Linphone) await(timeout time.Duration, match func([]LinphoneEvent) (LinphoneEvent, bool), what string) (LinphoneEvent, error) {
	deadline := time.Now().Add(timeout)
	for {
		err := lp.Poll()
		evs := lp.Events()
		if e, ok := match(evs); ok {
			return e, nil
		}
		if err != nil || time.Now().After(deadline) {
			var got []string
			for _, e := range evs {
				got = append(got, fmt.Sprintf("%s#%d", strings.TrimPrefix(e.Event, "LinphoneCall"), e.ID))
			}
			return LinphoneEvent{}, fmt.Errorf("%w: linphone %s: %s within %v (err %v; events %v)", errUA, lp.Spec.Name, what, timeout, err, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Call places a call and returns its id.
func (lp *Linphone) Call(uri string) (int, error) {
	out, err := lp.Command("call " + uri)
	if err != nil {
		return 0, err
	}
	id, err := strconv.Atoi(lpField(out, "Id"))
	if err != nil {
		return 0, fmt.Errorf("%w: linphone %s: no call id in %q", errUA, lp.Spec.Name, out)
	}
	return id, nil
}

// Close drops the socket and stops linphone-daemon by PID.
func (lp *Linphone) Close() {
	lp.mu.Lock()
	if lp.conn != nil {
		_ = lp.conn.Close()
	}
	lp.mu.Unlock()
	lp.Proc.Stop(3 * time.Second)
	_ = os.Remove(lp.Socket)
}

// writeToneWAV writes d of a 400 Hz tone, 8 kHz mono 16-bit PCM: linphone
// has no sound card in the lab and plays this into the call instead.
func writeToneWAV(path string, d time.Duration) error {
	const rate = 8000
	n := int(d.Seconds() * rate)
	b := make([]byte, 44+2*n)
	copy(b, "RIFF")
	binary.LittleEndian.PutUint32(b[4:], uint32(36+2*n))
	copy(b[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(b[16:], 16)
	binary.LittleEndian.PutUint16(b[20:], 1) // PCM
	binary.LittleEndian.PutUint16(b[22:], 1) // mono
	binary.LittleEndian.PutUint32(b[24:], rate)
	binary.LittleEndian.PutUint32(b[28:], 2*rate)
	binary.LittleEndian.PutUint16(b[32:], 2)
	binary.LittleEndian.PutUint16(b[34:], 16)
	copy(b[36:], "data")
	binary.LittleEndian.PutUint32(b[40:], uint32(2*n))
	for i := range n {
		v := int16(8000 * math.Sin(2*math.Pi*400*float64(i)/rate))
		binary.LittleEndian.PutUint16(b[44+2*i:], uint16(v))
	}
	return os.WriteFile(path, b, 0o644)
}
