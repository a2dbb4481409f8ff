//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SIPMessage is one message from a sipp -trace_msg file.
type SIPMessage struct {
	Sent  bool
	Time  string
	Text  string
	Code  int    // response code, 0 for requests
	CSeq  string // e.g. "1 INVITE"
	First string // first line
}

var cseqRE = regexp.MustCompile(`(?mi)^CSeq:\s*(.+?)\s*$`)

// parseSippMessages parses a sipp -message_file.
func parseSippMessages(path string) []SIPMessage {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var res []SIPMessage
	blocks := strings.Split(string(b), "----------------------------------------------- ")
	for _, blk := range blocks {
		hdr, body, ok := strings.Cut(blk, "\n")
		if !ok {
			continue
		}
		dirLine, msg, ok := strings.Cut(body, "\n")
		if !ok {
			continue
		}
		m := SIPMessage{Time: strings.TrimSpace(hdr), Text: strings.TrimLeft(msg, "\r\n")}
		switch {
		case strings.Contains(dirLine, "message sent"):
			m.Sent = true
		case strings.Contains(dirLine, "message received"):
		default:
			continue
		}
		m.First, _, _ = strings.Cut(m.Text, "\n")
		m.First = strings.TrimSpace(m.First)
		if s := statusRE.FindStringSubmatch(m.First); s != nil {
			m.Code, _ = strconv.Atoi(s[1])
		}
		if c := cseqRE.FindStringSubmatch(m.Text); c != nil {
			m.CSeq = c[1]
		}
		res = append(res, m)
	}
	return res
}

func (l *Lab) sippArgs(name, scenario string, extra ...string) (args []string, msgFile string) {
	n := l.nextSeq()
	base := fmt.Sprintf("sipp-%02d-%s", n, name)
	msgFile = filepath.Join(l.Dir, base+".msg")
	// sipp binds -cp on 0.0.0.0 and media on -mp and -mp+2: six ports, so
	// two sipps running at once in one namespace never collide.
	ports := l.allocPorts(6)
	// A scenario is a file of lab/sipp, or an absolute path (say a copy
	// next to a generated pcap: sipp looks for pcap files next to the
	// scenario first).
	sf := scenario
	if !filepath.IsAbs(sf) {
		sf = filepath.Join(l.sippDir, scenario)
	}
	args = []string{"sipp", "-sf", sf,
		"-nostdin", "-trace_msg", "-message_file", msgFile,
		"-trace_err", "-error_file", filepath.Join(l.Dir, base+".err"),
		"-cp", strconv.Itoa(ports), "-mp", strconv.Itoa(ports + 2)}
	return append(args, extra...), msgFile
}

// CallSpec describes a call placed with sipp (call.xml).
type CallSpec struct {
	NS      string        // namespace short name; default "phone"
	From    string        // local IP; default PhoneIP
	Port    int           // local SIP port; default a free one from 5070 up
	Number  string        // Request-URI user (e.g. the DID)
	Target  string        // where to send; default ProviderAddr
	Hold    time.Duration // how long to keep an answered call before BYE
	Timeout time.Duration // bound for the whole call; default 30 s
}

// CallResult is what the caller saw.
type CallResult struct {
	Code     int // final response to the INVITE (0: none)
	Messages []SIPMessage
	ExitCode int
	Log      string // sipp's screen output
}

// Call places one call with sipp and returns the final response the caller got.
func (l *Lab) Call(spec CallSpec) (CallResult, error) {
	if spec.NS == "" {
		spec.NS = NSPhone
	}
	if spec.From == "" {
		spec.From = PhoneIP
	}
	if spec.Port == 0 {
		spec.Port = 5070 + l.nextSeq()
	}
	if spec.Target == "" {
		spec.Target = ProviderAddr
	}
	if spec.Timeout == 0 {
		spec.Timeout = 30 * time.Second
	}
	args, msgFile := l.sippArgs("call-"+spec.Number, "call.xml",
		"-i", spec.From, "-p", strconv.Itoa(spec.Port), "-m", "1",
		"-s", spec.Number, "-d", strconv.FormatInt(spec.Hold.Milliseconds(), 10),
		"-timeout", fmt.Sprintf("%ds", int(spec.Timeout.Seconds())), "-timeout_error",
		spec.Target)
	out, err := l.ExecTimeout(spec.Timeout+10*time.Second, spec.NS, args...)
	res := CallResult{Log: out, Messages: parseSippMessages(msgFile), ExitCode: -1}
	if err == nil {
		res.ExitCode = 0
	}
	for _, m := range res.Messages {
		if !m.Sent && m.Code >= 200 && strings.HasSuffix(m.CSeq, "INVITE") {
			res.Code = m.Code
			break
		}
	}
	if res.Code == 0 {
		return res, fmt.Errorf("call to %s: no final response (sipp: %v)\n%s", spec.Number, err, tail(out, 15))
	}
	return res, nil
}

// CallDID has the phone (198.51.100.70) call number through the provider and
// returns the final response code it got: e.g. 480 from the daemon (the
// INVITE reached it), 404 (trunk not registered), 408 (lost at the router).
func (l *Lab) CallDID(number string, timeout time.Duration) (int, error) {
	r, err := l.Call(CallSpec{Number: number, Timeout: timeout, Hold: time.Second})
	return r.Code, err
}

// UASpec describes a sipp UA that registers from behind the NAT.
type UASpec struct {
	NS        string        // default "lm"
	IP        string        // default DaemonIP
	Port      int           // default 65002
	User      string        // default TrunkUser
	Password  string        // default TrunkPass
	Expires   int           // seconds, default 3600
	Keepalive time.Duration // OPTIONS to the registrar every Keepalive; 0 = none
	Lifetime  time.Duration // bound on the process (sipp -timeout); default 10 min
	// OneShot: REGISTER, then exit at once (no INVITE answering).
	OneShot bool
	// NoRegister: do not register; only bind the port and answer INVITEs (480).
	NoRegister bool
}

// RegisteringUA is a running sipp that registered through the NAT and
// answers incoming INVITEs with 480 (ooc-uas.xml).
type RegisteringUA struct {
	*Proc
	MsgFile string
}

// Messages returns the SIP messages the UA sent and received so far.
func (u *RegisteringUA) Messages() []SIPMessage { return parseSippMessages(u.MsgFile) }

// ReceivedINVITEs counts INVITEs that reached the UA.
func (u *RegisteringUA) ReceivedINVITEs() int {
	n := 0
	for _, m := range u.Messages() {
		if !m.Sent && strings.HasPrefix(m.First, "INVITE ") {
			n++
		}
	}
	return n
}

// StartRegisteringUA starts sipp registering with digest auth through the
// NAT and waits (bounded) for the 200 to the REGISTER.
func (l *Lab) StartRegisteringUA(spec UASpec) (*RegisteringUA, error) {
	if spec.NS == "" {
		spec.NS = NSLM
	}
	if spec.IP == "" {
		spec.IP = DaemonIP
	}
	if spec.Port == 0 {
		spec.Port = DaemonSIPPort
	}
	if spec.User == "" {
		spec.User = TrunkUser
	}
	if spec.Password == "" {
		spec.Password = TrunkPass
	}
	if spec.Expires == 0 {
		spec.Expires = 3600
	}
	if spec.Lifetime == 0 {
		spec.Lifetime = 10 * time.Minute
	}
	scenario, d := "register.xml", spec.Lifetime
	if spec.Keepalive > 0 {
		scenario, d = "register-keepalive.xml", spec.Keepalive
	}
	if spec.OneShot {
		d = 0
	}
	var args []string
	var msgFile string
	common := []string{"-i", spec.IP, "-p", strconv.Itoa(spec.Port),
		"-timeout", fmt.Sprintf("%ds", int(spec.Lifetime.Seconds()))}
	if spec.NoRegister {
		// server mode: the answering scenario is the main one
		args, msgFile = l.sippArgs("uaonly", "ooc-uas.xml", common...)
	} else {
		args, msgFile = l.sippArgs("ua", scenario, append(common,
			"-oocsf", filepath.Join(l.sippDir, "ooc-uas.xml"), "-m", "1",
			"-d", strconv.FormatInt(d.Milliseconds(), 10),
			"-s", spec.User, "-au", spec.User, "-ap", spec.Password,
			"-auth_uri", "sip:"+SIPDomain,
			"-key", "domain", SIPDomain, "-key", "expires", strconv.Itoa(spec.Expires),
			ProviderAddr)...)
	}
	p := l.Start(spec.NS, strings.TrimSuffix(filepath.Base(msgFile), ".msg")+".out", args...)
	ua := &RegisteringUA{Proc: p, MsgFile: msgFile}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if spec.NoRegister {
			if out, err := l.Exec(spec.NS, "ss", "-Hlun", "sport", "= :"+strconv.Itoa(spec.Port)); err == nil && strings.TrimSpace(out) != "" {
				return ua, nil
			}
		}
		for _, m := range ua.Messages() {
			if !spec.NoRegister && !m.Sent && m.CSeq == "2 REGISTER" {
				if m.Code == 200 {
					return ua, nil
				}
				if m.Code >= 300 {
					return ua, fmt.Errorf("REGISTER failed: %s", m.First)
				}
			}
		}
		if p.Exited() {
			return ua, fmt.Errorf("sipp UA exited (%d) before it was ready:\n%s", p.ExitCode(), tail(p.Log(), 20))
		}
		if time.Now().After(deadline) {
			return ua, fmt.Errorf("sipp UA not ready within 15 s:\n%s", tail(p.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartUAS starts sipp uas.xml (answers one call: 180, 200 with SDP, waits
// for BYE) on ip:port inside ns, e.g. the phone on 198.51.100.70:5060.
func (l *Lab) StartUAS(ns, ip string, port int, lifetime time.Duration) *Proc {
	args, _ := l.sippArgs("uas", "uas.xml", "-i", ip, "-p", strconv.Itoa(port), "-m", "1",
		"-timeout", fmt.Sprintf("%ds", int(lifetime.Seconds())))
	return l.Start(ns, fmt.Sprintf("sipp-uas-%s-%d.out", ip, port), args...)
}
