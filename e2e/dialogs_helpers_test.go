//go:build linux

package e2e

// Helpers of the dialog tests (dialogs_test.go): a PCMU copy of
// g711a.pcap for the codec change, UDPTL (T.38) datagrams, a one-shot drop
// of the first ACK inside one lab namespace, SDP m=image parsing and
// message de-duplication.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// G711APcap is the audio every pcap scenario plays (Debian's sip-tester).
const G711APcap = "/usr/share/sip-tester/g711a.pcap"

// PTPCMU is the payload type of g711u.pcap.
const PTPCMU = 0

// scenarioCopies copies lab/sipp scenarios into dir with g711u.pcap next
// to them (sipp looks for a relative pcap next to its scenario first) and
// returns the copies' absolute paths, by name.
func scenarioCopies(t testing.TB, l *Lab, names ...string) map[string]string {
	t.Helper()
	dir := filepath.Join(l.Dir, fmt.Sprintf("scenarios-%02d", l.nextSeq()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeG711UPcap(G711APcap, filepath.Join(dir, "g711u.pcap")); err != nil {
		t.Fatalf("g711u.pcap: %v", err)
	}
	res := map[string]string{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(l.sippDir, n))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		res[n] = p
	}
	return res
}

// writeG711UPcap writes a copy of the A-law pcap src with every RTP packet
// of PT 8 turned into PT 0 (PCMU): payload transcoded sample by sample
// (G.711 A-law to linear to µ-law), marker bit, sequence numbers, timing and
// addresses kept, UDP checksum recomputed. 236 packets, like the original.
func writeG711UPcap(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if len(b) < 24 {
		return fmt.Errorf("%s: no pcap header", src)
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return fmt.Errorf("%s: not a classic pcap file", src)
	}
	if link := bo.Uint32(b[20:]); link != 1 {
		return fmt.Errorf("%s: link type %d, want Ethernet", src, link)
	}
	out := append([]byte(nil), b...)
	n := 0
	for off := 24; off+16 <= len(out); {
		incl := int(bo.Uint32(out[off+8:]))
		off += 16
		if off+incl > len(out) {
			return fmt.Errorf("%s: truncated record", src)
		}
		frame := out[off : off+incl]
		off += incl
		if len(frame) < 14+20+8+12 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 17 || len(ip) < ihl+8+12 {
			continue
		}
		udp := ip[ihl:]
		ulen := int(binary.BigEndian.Uint16(udp[4:]))
		if ulen < 8+12 || ulen > len(udp) {
			continue
		}
		rtp := udp[8:ulen]
		if rtp[0]>>6 != 2 || rtp[1]&0x7f != PTPCMA {
			continue
		}
		rtp[1] = rtp[1]&0x80 | PTPCMU
		hdr := 12 + 4*int(rtp[0]&0x0f)
		for i := hdr; i < len(rtp); i++ {
			rtp[i] = linearToULaw(aLawToLinear(rtp[i]))
		}
		binary.BigEndian.PutUint16(udp[6:], 0)
		binary.BigEndian.PutUint16(udp[6:], udpChecksum(ip[12:16], ip[16:20], udp[:ulen]))
		n++
	}
	if n != G711Packets {
		return fmt.Errorf("%s: %d RTP packets of PT 8, want %d", src, n, G711Packets)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func udpChecksum(src, dst, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src)
	add(dst)
	sum += 17 + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// aLawToLinear and linearToULaw are ITU-T G.711 (the Sun reference code).
func aLawToLinear(a byte) int16 {
	a ^= 0x55
	t := int16(a&0x0f) << 4
	seg := (a & 0x70) >> 4
	switch seg {
	case 0:
		t += 8
	case 1:
		t += 0x108
	default:
		t += 0x108
		t <<= seg - 1
	}
	if a&0x80 != 0 {
		return t
	}
	return -t
}

func linearToULaw(pcm int16) byte {
	const bias, clip = 0x84, 32635
	v := int32(pcm)
	mask := byte(0xff)
	if v < 0 {
		v = -v
		mask = 0x7f
	}
	if v > clip {
		v = clip
	}
	v += bias
	seg := byte(7)
	for i, end := 0, int32(0xff); i < 8; i, end = i+1, end<<1|1 {
		if v <= end {
			seg = byte(i)
			break
		}
	}
	return (seg<<4 | byte(v>>(seg+3))&0x0f) ^ mask
}

// UDPTL (ITU-T T.38 §9.1) as a fax gateway sends it: a 16-bit sequence
// number starting at 0, the primary IFP packet as an open type (length
// byte, then the packet) and the error-recovery field (here redundancy with
// no secondary packets). The IFP bytes do not matter to a relay; ours carry
// a marker so that the receiver counts only the test's datagrams.
var udptlIFP = []byte{0xc0, 0x01, 'l', 'm', 't', '3', '8'}

func udptlPacket(seq uint16) []byte {
	b := []byte{byte(seq >> 8), byte(seq), byte(len(udptlIFP))}
	b = append(b, udptlIFP...)
	return append(b, 0x00, 0x00)
}

// parseUDPTL returns the sequence number of one of udptlPacket's datagrams.
func parseUDPTL(b []byte) (uint16, bool) {
	if len(b) != 3+len(udptlIFP)+2 || int(b[2]) != len(udptlIFP) || !bytes.Equal(b[3:3+len(udptlIFP)], udptlIFP) {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), true
}

// SDPImage is the first m=image stream of an SDP body (T.38).
type SDPImage struct {
	Addr  netip.AddrPort
	Proto string   // "udptl"
	Fmt   string   // "t38"
	Attrs []string // its a= lines, in order
	Audio bool     // the body still has an active m=audio line
}

// ParseSDPImage returns the first m=image stream of body.
func ParseSDPImage(body string) (SDPImage, bool) {
	var res SDPImage
	var sessC, mediaC string
	section := "" // "", "image", "other"
	seen := false
	port := 0
	for _, l := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "m="):
			f := strings.Fields(l[2:])
			section = "other"
			if len(f) >= 3 && f[0] == "audio" && f[1] != "0" {
				res.Audio = true
			}
			if len(f) >= 4 && f[0] == "image" && !seen {
				port, _ = strconv.Atoi(f[1])
				res.Proto, res.Fmt = f[2], f[3]
				section, seen = "image", true
			}
		case strings.HasPrefix(l, "c="):
			if f := strings.Fields(l[2:]); len(f) == 3 {
				switch section {
				case "":
					sessC = f[2]
				case "image":
					mediaC = f[2]
				}
			}
		case strings.HasPrefix(l, "a=") && section == "image":
			res.Attrs = append(res.Attrs, l)
		}
	}
	if !seen {
		return res, false
	}
	c := mediaC
	if c == "" {
		c = sessC
	}
	a, err := netip.ParseAddr(c)
	if err != nil {
		return res, false
	}
	res.Addr = netip.AddrPortFrom(a, uint16(port))
	return res, true
}

// ackDrop drops the first ACK request (UDP, "ACK sip:" in the datagram)
// from one source address to one port inside one lab namespace, and lets
// every later one pass: two iptables rules in a chain of that namespace's
// INPUT (the string and recent matches), nothing anywhere else.
type ackDrop struct {
	l     *Lab
	ns    string
	chain string
}

func dropFirstACK(t testing.TB, l *Lab, ns, from string, dport int) *ackDrop {
	t.Helper()
	n := l.nextSeq()
	d := &ackDrop{l: l, ns: ns, chain: fmt.Sprintf("LMACKDROP%d", n)}
	list := fmt.Sprintf("lmack%d", n)
	match := []string{"-p", "udp", "-s", from, "--dport", strconv.Itoa(dport),
		"-m", "string", "--algo", "bm", "--string", "ACK sip:"}
	for _, rule := range [][]string{
		{"-N", d.chain},
		append(append([]string{"-A", d.chain}, match...), "-m", "recent", "--name", list, "--rcheck", "-j", "ACCEPT"),
		append(append([]string{"-A", d.chain}, match...), "-m", "recent", "--name", list, "--set", "-j", "DROP"),
		{"-I", "INPUT", "1", "-j", d.chain},
	} {
		if out, err := l.Exec(ns, append([]string{"iptables", "-w", "5"}, rule...)...); err != nil {
			t.Fatalf("iptables in %s: %v %s", ns, err, out)
		}
	}
	return d
}

var dropLineRE = regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+DROP\b`)

// Dropped is how many ACKs the rule dropped so far.
func (d *ackDrop) Dropped(t testing.TB) int {
	t.Helper()
	out, err := d.l.Exec(d.ns, "iptables", "-w", "5", "-L", d.chain, "-n", "-v", "-x")
	if err != nil {
		t.Fatal(err)
	}
	m := dropLineRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no DROP rule in %s of %s:\n%s", d.chain, d.ns, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// Remove takes the rules out again (the namespace goes with the lab anyway).
func (d *ackDrop) Remove() {
	_, _ = d.l.Exec(d.ns, "iptables", "-w", "5", "-D", "INPUT", "-j", d.chain)
	_, _ = d.l.Exec(d.ns, "iptables", "-w", "5", "-F", d.chain)
	_, _ = d.l.Exec(d.ns, "iptables", "-w", "5", "-X", d.chain)
}

// distinct drops retransmissions: the first message per CSeq (and per
// response code) of those matching pred.
func distinct(msgs []WireSIP, pred func(WireSIP) bool) []WireSIP {
	seen := map[string]bool{}
	var res []WireSIP
	for _, m := range msgs {
		if !pred(m) {
			continue
		}
		k := m.CallID + "|" + m.CSeq + "|" + strconv.Itoa(m.Code)
		if seen[k] {
			continue
		}
		seen[k] = true
		res = append(res, m)
	}
	return res
}

// isRequest matches requests of method.
func isRequest(method string) func(WireSIP) bool {
	return func(m WireSIP) bool { return m.Method == method }
}

// isResponse matches responses with code to requests of method.
func isResponse(code int, method string) func(WireSIP) bool {
	return func(m WireSIP) bool { return m.Code == code && m.CSeqMethod() == method }
}

// hasToTag reports whether a message's To header carries a tag (an
// in-dialog request).
func hasToTag(m WireSIP) bool {
	for _, h := range []string{"To", "t"} {
		for _, v := range m.Header(h) {
			if strings.Contains(v, ";tag=") {
				return true
			}
		}
	}
	return false
}

// contactOf returns the Contact header values (full and compact form).
func contactOf(m WireSIP) []string { return append(m.Header("Contact"), m.Header("m")...) }

// withoutHeldSDP is r with every message to at whose audio SDP names
// 0.0.0.0 left out of at's capture: CheckAudio requires every SDP at got to
// name the relay, and an RFC 2543 hold (c=0.0.0.0) passes the daemon
// unchanged by design.
func withoutHeldSDP(r *CallRun, at Endpoint) *CallRun {
	c := *r
	c.SIP = map[string][]WireSIP{}
	for ns, ms := range r.SIP {
		c.SIP[ns] = ms
	}
	var keep []WireSIP
	for _, m := range r.SIP[at.NS] {
		if s, ok := ParseSDPAudio(m.Body()); ok && s.Addr.Addr().IsUnspecified() {
			continue
		}
		keep = append(keep, m)
	}
	c.SIP[at.NS] = keep
	return &c
}

// rtpCount counts RTP packets of pt that reached at from ip after from.
func rtpCount(r *CallRun, at Endpoint, srcIP string, pt uint8, from time.Time) int {
	return len(Select(r.Pkts[at.NS], To(at.IP), From(srcIP), RTPWithPT(pt), Between(from, time.Time{})))
}

// callEnded returns the daemon's "call ended" log entries.
func callEnded(d *Daemon) []map[string]any {
	var res []map[string]any
	for _, e := range d.Entries() {
		if e["msg"] == "call ended" {
			res = append(res, e)
		}
	}
	return res
}

// relayedTo waits (bounded) until the daemon has logged calls "call ended"
// lines and returns, per call, the RTP packets it forwarded towards at: the
// relay's own count, to cross-check a capture that dropped packets. Leg A is
// the PBX's, so what reaches the PBX is b_to_a.
func relayedTo(t testing.TB, d *Daemon, at Endpoint, calls int) []int {
	t.Helper()
	dir := "a_to_b"
	if at.NS == NSPBX {
		dir = "b_to_a"
	}
	var ended []map[string]any
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if ended = callEnded(d); len(ended) >= calls || time.Now().After(deadline) {
			break
		}
	}
	if len(ended) < calls {
		t.Errorf("the daemon logged %d \"call ended\" lines, want %d", len(ended), calls)
	}
	var res []int
	for _, e := range ended {
		// forwarded counts RTP and RTCP; rtcp_packets is the RTCP that came in.
		res = append(res, int(mediaField(e, dir, "forwarded")-mediaField(e, dir, "rtcp_packets")))
	}
	return res
}

// mediaField reads media.<dir>.<key> of a "call ended" entry (0 if absent).
func mediaField(e map[string]any, dir, key string) float64 {
	m, _ := e["media"].(map[string]any)
	d, _ := m[dir].(map[string]any)
	v, _ := d[key].(float64)
	return v
}

// logsWith returns the daemon's log entries whose msg is msg.
func logsWith(d *Daemon, msg string) []map[string]any {
	var res []map[string]any
	for _, e := range d.Entries() {
		if e["msg"] == msg {
			res = append(res, e)
		}
	}
	return res
}
