//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// rtpengineRelay is rtpengine in userspace (table = -1) on 127.0.0.1, with
// its own config in a temp dir, driven over its ng control protocol.
type rtpengineRelay struct {
	cmd     *exec.Cmd
	exited  chan error
	ng      *net.UDPConn
	cookie  int
	logPath string
}

const rtpengineConf = `[rtpengine]
table = -1
interface = 127.0.0.1
listen-ng = 127.0.0.1:%d
port-min = 10000
port-max = 19999
foreground = true
log-stderr = true
log-level = 3
delete-delay = 0
`

func startRtpengine(bin, tmp string) (*rtpengineRelay, error) {
	// A free loopback port for ng: bind, note it, release it.
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	ngPort := probe.LocalAddr().(*net.UDPAddr).Port
	_ = probe.Close()
	conf := filepath.Join(tmp, "rtpengine.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(rtpengineConf, ngPort)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config-file="+conf, "--config-section=rtpengine",
		"--pidfile="+filepath.Join(tmp, "rtpengine.pid"))
	// Its log goes to a file: under overload it logs a line per socket
	// that it gave up draining, which stop counts.
	logf, err := os.Create(filepath.Join(tmp, "rtpengine.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // if we die first
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	_ = logf.Close()
	r := &rtpengineRelay{cmd: cmd, exited: make(chan error, 1), logPath: logf.Name()}
	go func() { r.exited <- cmd.Wait() }()
	r.ng, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: ngPort})
	if err != nil {
		r.stop()
		return nil, err
	}
	// Await its control socket: ping until it answers pong.
	for try := 0; ; try++ {
		resp, err := r.query(map[string]any{"command": "ping"}, 200*time.Millisecond)
		if err == nil && resp["result"] == "pong" {
			return r, nil
		}
		if try == 50 {
			r.stop()
			return nil, fmt.Errorf("rtpengine did not answer ping: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // before it binds, a refused write returns at once
	}
}

func (r *rtpengineRelay) pid() int { return r.cmd.Process.Pid }

func (r *rtpengineRelay) stop() {
	if r.ng != nil {
		_ = r.ng.Close()
	}
	stopPID(r.cmd, r.exited, syscall.SIGTERM)
	if b, err := os.ReadFile(r.logPath); err == nil {
		var errs int
		var first string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "ERR:") || strings.Contains(l, "CRIT:") {
				if errs == 0 {
					first = l
				}
				errs++
			}
		}
		if errs > 0 {
			fmt.Fprintf(os.Stderr, "rtpengine logged %d errors, the first: %s\n", errs, first)
		}
	}
}

func sdp(port int) string {
	return "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" +
		"m=audio " + strconv.Itoa(port) + " RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n"
}

var mPort = regexp.MustCompile(`(?m)^m=audio (\d+) `)

func sdpPort(s any) (int, error) {
	str, _ := s.(string)
	m := mPort.FindStringSubmatch(str)
	if m == nil {
		return 0, fmt.Errorf("no m=audio in %q", str)
	}
	return strconv.Atoi(m[1])
}

// setup makes each call an offer from the PBX and an answer from the
// provider: the offer's reply is where the provider sends, the answer's
// where the PBX sends.
func (r *rtpengineRelay) setup(pbx, prov []int) ([]int, []int, error) {
	toA, toB := make([]int, len(pbx)), make([]int, len(pbx))
	for i := range pbx {
		id := fmt.Sprintf("bench-%d", i)
		offer, err := r.query(map[string]any{"command": "offer", "call-id": id, "from-tag": "pbx",
			"sdp": sdp(pbx[i])}, 2*time.Second)
		if err != nil {
			return nil, nil, err
		}
		if toB[i], err = sdpPort(offer["sdp"]); err != nil {
			return nil, nil, fmt.Errorf("offer %d: %v %w", i, offer, err)
		}
		answer, err := r.query(map[string]any{"command": "answer", "call-id": id, "from-tag": "pbx",
			"to-tag": "prov", "sdp": sdp(prov[i])}, 2*time.Second)
		if err != nil {
			return nil, nil, err
		}
		if toA[i], err = sdpPort(answer["sdp"]); err != nil {
			return nil, nil, fmt.Errorf("answer %d: %v %w", i, answer, err)
		}
	}
	return toA, toB, nil
}

// query sends one ng request ("cookie bencode-dict") and reads its reply.
func (r *rtpengineRelay) query(req map[string]any, timeout time.Duration) (map[string]any, error) {
	r.cookie++
	cookie := strconv.Itoa(r.cookie)
	msg := append([]byte(cookie+" "), bencode(req)...)
	if _, err := r.ng.Write(msg); err != nil {
		return nil, err
	}
	buf := make([]byte, 65536)
	_ = r.ng.SetReadDeadline(time.Now().Add(timeout))
	for {
		n, err := r.ng.Read(buf)
		if err != nil {
			return nil, err
		}
		c, body, ok := bytes.Cut(buf[:n], []byte(" "))
		if !ok || string(c) != cookie {
			continue // a late reply to an earlier try
		}
		v, _, err := bdecode(body)
		if err != nil {
			return nil, err
		}
		d, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("ng reply is not a dictionary")
		}
		if d["result"] == "error" {
			return nil, fmt.Errorf("ng %v: %v", req["command"], d["error-reason"])
		}
		return d, nil
	}
}

// bencode encodes strings, ints, lists and dictionaries (keys sorted).
func bencode(v any) []byte {
	switch x := v.(type) {
	case string:
		return []byte(strconv.Itoa(len(x)) + ":" + x)
	case int:
		return []byte("i" + strconv.Itoa(x) + "e")
	case []any:
		out := []byte("l")
		for _, e := range x {
			out = append(out, bencode(e)...)
		}
		return append(out, 'e')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := []byte("d")
		for _, k := range keys {
			out = append(out, bencode(k)...)
			out = append(out, bencode(x[k])...)
		}
		return append(out, 'e')
	}
	panic(fmt.Sprintf("bencode: %T", v))
}

var errBencode = errors.New("bad bencode")

// bdecode decodes one value from b and returns the rest.
func bdecode(b []byte) (any, []byte, error) {
	if len(b) == 0 {
		return nil, nil, errBencode
	}
	switch b[0] {
	case 'i':
		end := bytes.IndexByte(b, 'e')
		if end < 0 {
			return nil, nil, errBencode
		}
		n, err := strconv.Atoi(string(b[1:end]))
		return n, b[end+1:], err
	case 'l':
		var out []any
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			v, rest, err := bdecode(b)
			if err != nil {
				return nil, nil, err
			}
			out, b = append(out, v), rest
		}
		if len(b) == 0 {
			return nil, nil, errBencode
		}
		return out, b[1:], nil
	case 'd':
		out := map[string]any{}
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			k, rest, err := bdecode(b)
			if err != nil {
				return nil, nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, nil, errBencode
			}
			v, rest, err := bdecode(rest)
			if err != nil {
				return nil, nil, err
			}
			out[ks], b = v, rest
		}
		if len(b) == 0 {
			return nil, nil, errBencode
		}
		return out, b[1:], nil
	}
	colon := bytes.IndexByte(b, ':')
	if colon < 0 {
		return nil, nil, errBencode
	}
	n, err := strconv.Atoi(string(b[:colon]))
	if err != nil || n < 0 || colon+1+n > len(b) {
		return nil, nil, errBencode
	}
	return string(b[colon+1 : colon+1+n]), b[colon+1+n:], nil
}
