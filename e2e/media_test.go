//go:build linux

package e2e

// Reading the calls tests' captures: a small pcap reader (Ethernet, Linux
// cooked v1/v2; IPv4/UDP with fragment reassembly), RTP header parsing, the
// SIP messages and their SDP, and RTP tallies per source.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Packet is one IPv4/UDP datagram read from a capture.
type Packet struct {
	T        time.Time
	Src, Dst netip.AddrPort
	Payload  []byte
}

// ReadPcap returns the IPv4/UDP datagrams of a pcap file (classic format,
// either byte order, micro- or nanosecond timestamps), fragments reassembled.
func ReadPcap(path string) ([]Packet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("%s: %d bytes, no pcap header", path, len(b))
	}
	var bo binary.ByteOrder
	nano := false
	switch magic := binary.LittleEndian.Uint32(b); magic {
	case 0xa1b2c3d4:
		bo = binary.LittleEndian
	case 0xa1b23c4d:
		bo, nano = binary.LittleEndian, true
	case 0xd4c3b2a1:
		bo = binary.BigEndian
	case 0x4d3cb2a1:
		bo, nano = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("%s: not a classic pcap file (magic %#x)", path, magic)
	}
	link := bo.Uint32(b[20:])
	frags := map[fragKey]*fragBuf{}
	var res []Packet
	for off := 24; off+16 <= len(b); {
		sec, frac := bo.Uint32(b[off:]), bo.Uint32(b[off+4:])
		incl := int(bo.Uint32(b[off+8:]))
		off += 16
		if incl < 0 || off+incl > len(b) {
			break // truncated last record (capture stopped mid-write)
		}
		data := b[off : off+incl]
		off += incl
		ns := int64(frac) * 1000
		if nano {
			ns = int64(frac)
		}
		t := time.Unix(int64(sec), ns)
		ip, ok := ipv4Of(link, data)
		if !ok {
			continue
		}
		if p, ok := udpOf(ip, t, frags); ok {
			res = append(res, p)
		}
	}
	return res, nil
}

// ipv4Of strips the link header; ok only for IPv4.
func ipv4Of(link uint32, d []byte) ([]byte, bool) {
	var proto uint16
	switch link {
	case 1: // Ethernet, maybe one VLAN tag
		if len(d) < 14 {
			return nil, false
		}
		proto, d = binary.BigEndian.Uint16(d[12:]), d[14:]
		if proto == 0x8100 && len(d) >= 4 {
			proto, d = binary.BigEndian.Uint16(d[2:]), d[4:]
		}
	case 113: // Linux cooked v1
		if len(d) < 16 {
			return nil, false
		}
		proto, d = binary.BigEndian.Uint16(d[14:]), d[16:]
	case 276: // Linux cooked v2
		if len(d) < 20 {
			return nil, false
		}
		proto, d = binary.BigEndian.Uint16(d[0:]), d[20:]
	case 101, 228: // raw IPv4
		proto = 0x0800
	default:
		return nil, false
	}
	return d, proto == 0x0800
}

type fragKey struct {
	src, dst netip.Addr
	id       uint16
}

type fragBuf struct {
	parts map[int][]byte // by byte offset
	total int            // payload length, known once the last fragment is seen
}

// udpOf decodes an IPv4 packet; fragments are kept in frags until complete.
func udpOf(ip []byte, t time.Time, frags map[fragKey]*fragBuf) (Packet, bool) {
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return Packet{}, false
	}
	ihl := int(ip[0]&0x0f) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || tot < ihl || len(ip) < tot || ip[9] != 17 {
		return Packet{}, false
	}
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	flags := binary.BigEndian.Uint16(ip[6:])
	more, foff := flags&0x2000 != 0, int(flags&0x1fff)*8
	body := ip[ihl:tot]
	if more || foff > 0 {
		k := fragKey{src, dst, binary.BigEndian.Uint16(ip[4:])}
		fb := frags[k]
		if fb == nil {
			fb = &fragBuf{parts: map[int][]byte{}, total: -1}
			frags[k] = fb
		}
		fb.parts[foff] = append([]byte(nil), body...)
		if !more {
			fb.total = foff + len(body)
		}
		if fb.total < 0 {
			return Packet{}, false
		}
		whole := make([]byte, 0, fb.total)
		for len(whole) < fb.total {
			p, ok := fb.parts[len(whole)]
			if !ok || len(p) == 0 {
				return Packet{}, false
			}
			whole = append(whole, p...)
		}
		delete(frags, k)
		body = whole
	}
	if len(body) < 8 {
		return Packet{}, false
	}
	ulen := int(binary.BigEndian.Uint16(body[4:]))
	if ulen < 8 || ulen > len(body) {
		ulen = len(body)
	}
	return Packet{
		T:       t,
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(body[0:])),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(body[2:])),
		Payload: append([]byte(nil), body[8:ulen]...),
	}, true
}

// RTPHeader is the fixed RTP header of a datagram.
type RTPHeader struct {
	PT     uint8
	Marker bool
	Seq    uint16
	TS     uint32
	SSRC   uint32
	Body   []byte // after the fixed header and CSRCs
}

// ParseRTP reads an RTP header (version 2, not RTCP 200-204). SIP text and
// STUN never start with version bits 10.
func ParseRTP(b []byte) (RTPHeader, bool) {
	if len(b) < 12 || b[0]>>6 != 2 || (b[1] >= 200 && b[1] <= 204) {
		return RTPHeader{}, false
	}
	h := RTPHeader{
		PT: b[1] & 0x7f, Marker: b[1]&0x80 != 0,
		Seq: binary.BigEndian.Uint16(b[2:]), TS: binary.BigEndian.Uint32(b[4:]), SSRC: binary.BigEndian.Uint32(b[8:]),
	}
	off := 12 + 4*int(b[0]&0x0f)
	if off <= len(b) {
		h.Body = b[off:]
	}
	return h, true
}

// Packet selections used by the calls tests.
type pktFilter func(Packet) bool

// To selects datagrams to ip (any port).
func To(ip string) pktFilter {
	a := netip.MustParseAddr(ip)
	return func(p Packet) bool { return p.Dst.Addr() == a }
}

// From selects datagrams from ip (any port).
func From(ip string) pktFilter {
	a := netip.MustParseAddr(ip)
	return func(p Packet) bool { return p.Src.Addr() == a }
}

// RTPWithPT selects RTP datagrams of payload type pt.
func RTPWithPT(pt uint8) pktFilter {
	return func(p Packet) bool {
		h, ok := ParseRTP(p.Payload)
		return ok && h.PT == pt
	}
}

// RTPWithSSRC selects RTP datagrams of one SSRC.
func RTPWithSSRC(ssrc uint32) pktFilter {
	return func(p Packet) bool {
		h, ok := ParseRTP(p.Payload)
		return ok && h.SSRC == ssrc
	}
}

// Between selects datagrams captured in [from, to) (zero: open).
func Between(from, to time.Time) pktFilter {
	return func(p Packet) bool {
		return (from.IsZero() || !p.T.Before(from)) && (to.IsZero() || p.T.Before(to))
	}
}

// Select returns the packets matching every filter.
func Select(pkts []Packet, fs ...pktFilter) []Packet {
	var res []Packet
next:
	for _, p := range pkts {
		for _, f := range fs {
			if !f(p) {
				continue next
			}
		}
		res = append(res, p)
	}
	return res
}

// BySource counts packets per source address.
func BySource(pkts []Packet) map[netip.AddrPort]int {
	m := map[netip.AddrPort]int{}
	for _, p := range pkts {
		m[p.Src]++
	}
	return m
}

// FlowSummary lists every UDP flow of a capture with its packet count and
// RTP payload types, for failure messages.
func FlowSummary(pkts []Packet) string {
	type flow struct {
		src, dst netip.AddrPort
		kind     string
	}
	count := map[flow]int{}
	for _, p := range pkts {
		kind := "other"
		if h, ok := ParseRTP(p.Payload); ok {
			kind = "RTP PT " + strconv.Itoa(int(h.PT))
		} else if isSIP(p.Payload) {
			kind = "SIP"
		}
		count[flow{p.Src, p.Dst, kind}]++
	}
	lines := make([]string, 0, len(count))
	for f, n := range count {
		lines = append(lines, fmt.Sprintf("  %21s -> %-21s %-9s %5d", f.src, f.dst, f.kind, n))
	}
	sort.Strings(lines)
	if len(lines) > 80 {
		lines = append(lines[:80], fmt.Sprintf("  ... %d more flows", len(lines)-80))
	}
	return strings.Join(lines, "\n")
}

var sipStartRE = regexp.MustCompile(`^(SIP/2\.0 \d{3}|[A-Z]+ sips?:)`)

func isSIP(b []byte) bool { return sipStartRE.Match(b[:min(len(b), 32)]) }

// WireSIP is a SIP message seen in a capture.
type WireSIP struct {
	T        time.Time
	Src, Dst netip.AddrPort
	Text     string
	First    string // first line
	Method   string // request method; "" for responses
	Code     int    // response code; 0 for requests
	CSeq     string // e.g. "1 INVITE"
	CallID   string
}

// CSeqMethod is the method of the CSeq header ("INVITE" of "2 INVITE").
func (m WireSIP) CSeqMethod() string {
	f := strings.Fields(m.CSeq)
	if len(f) == 2 {
		return f[1]
	}
	return ""
}

// Header returns the values of every header called name (case-insensitive;
// compact forms are not expanded).
func (m WireSIP) Header(name string) []string {
	head, _, _ := strings.Cut(m.Text, "\r\n\r\n")
	var res []string
	for _, l := range strings.Split(head, "\r\n")[1:] {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			res = append(res, strings.TrimSpace(v))
		}
	}
	return res
}

// Body is the message body (SDP).
func (m WireSIP) Body() string {
	_, b, _ := strings.Cut(m.Text, "\r\n\r\n")
	return b
}

var callIDRE = regexp.MustCompile(`(?mi)^(?:Call-ID|i)\s*:\s*(.+?)\s*$`)

// SIPMessages returns the SIP messages among the datagrams.
func SIPMessages(pkts []Packet) []WireSIP {
	var res []WireSIP
	for _, p := range pkts {
		if !isSIP(p.Payload) {
			continue
		}
		m := WireSIP{T: p.T, Src: p.Src, Dst: p.Dst, Text: string(p.Payload)}
		m.First, _, _ = strings.Cut(m.Text, "\r\n")
		if s := statusRE.FindStringSubmatch(m.First); s != nil {
			m.Code, _ = strconv.Atoi(s[1])
		} else {
			m.Method, _, _ = strings.Cut(m.First, " ")
		}
		if c := cseqRE.FindStringSubmatch(m.Text); c != nil {
			m.CSeq = c[1]
		}
		if c := callIDRE.FindStringSubmatch(m.Text); c != nil {
			m.CallID = c[1]
		}
		res = append(res, m)
	}
	return res
}

// SDPMedia is the audio address an SDP announces: c= (media level first)
// and the first m=audio port, with the direction attribute and formats.
type SDPMedia struct {
	Addr      netip.AddrPort
	Direction string // sendrecv (default), sendonly, recvonly, inactive
	Formats   string // the m= line's payload types, e.g. "8 101"
	Lines     []string
}

// ParseSDPAudio returns the first audio stream of an SDP body.
func ParseSDPAudio(body string) (SDPMedia, bool) {
	var res SDPMedia
	var sessC, mediaC string
	inAudio, seen := false, false
	port := 0
	for _, l := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		res.Lines = append(res.Lines, l)
		switch {
		case strings.HasPrefix(l, "m="):
			if seen {
				inAudio = false
				continue
			}
			f := strings.Fields(l[2:])
			if len(f) >= 3 && f[0] == "audio" {
				port, _ = strconv.Atoi(f[1])
				res.Formats = strings.Join(f[3:], " ")
				inAudio, seen = true, true
			}
		case strings.HasPrefix(l, "c="):
			f := strings.Fields(l[2:])
			if len(f) == 3 {
				if inAudio {
					mediaC = f[2]
				} else if !seen {
					sessC = f[2]
				}
			}
		case l == "a=sendrecv" || l == "a=sendonly" || l == "a=recvonly" || l == "a=inactive":
			if inAudio || !seen {
				res.Direction = l[2:]
			}
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
	if res.Direction == "" {
		res.Direction = "sendrecv"
	}
	res.Addr = netip.AddrPortFrom(a, uint16(port))
	return res, true
}

// AnnouncedTo returns the audio addresses announced in the SDP of the SIP
// messages that reached ip (what that endpoint was told to send to).
func AnnouncedTo(msgs []WireSIP, ip string) map[netip.AddrPort]bool {
	a := netip.MustParseAddr(ip)
	res := map[netip.AddrPort]bool{}
	for _, m := range msgs {
		if m.Dst.Addr() != a {
			continue
		}
		if s, ok := ParseSDPAudio(m.Body()); ok && s.Addr.Port() != 0 {
			res[s.Addr] = true
		}
	}
	return res
}

// FirstSIP returns the first message matching pred (ok false if none).
func FirstSIP(msgs []WireSIP, pred func(WireSIP) bool) (WireSIP, bool) {
	for _, m := range msgs {
		if pred(m) {
			return m, true
		}
	}
	return WireSIP{}, false
}

// pcapPackets reads a capture or fails the test.
func pcapPackets(t interface {
	Helper()
	Fatalf(string, ...any)
}, path string) []Packet {
	t.Helper()
	pkts, err := ReadPcap(path)
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	return pkts
}

// Dropped returns what tcpdump reported as dropped by the kernel (0 when it
// reported nothing, e.g. still running).
func (c *Capture) Dropped() int {
	re := regexp.MustCompile(`(\d+) packets? dropped by kernel`)
	if m := re.FindStringSubmatch(c.proc.Log()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// rtpPacket builds an RTP packet (for injection tests).
func rtpPacket(pt uint8, seq uint16, ts, ssrc uint32, payload []byte) []byte {
	b := make([]byte, 12, 12+len(payload))
	b[0] = 0x80
	b[1] = pt & 0x7f
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], ts)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return append(b, payload...)
}

// containsAny reports which of needles occur in s.
func containsAny(s string, needles ...string) []string {
	var res []string
	for _, n := range needles {
		if strings.Contains(s, n) {
			res = append(res, n)
		}
	}
	return res
}
