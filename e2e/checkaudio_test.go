//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// recTB records failures instead of failing: CheckAudio's verdict on
// synthetic captures, without a lab.
type recTB struct {
	testing.TB
	errs []string
}

func (r *recTB) Helper()                        {}
func (r *recTB) Errorf(format string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(format, a...)) }
func (r *recTB) Fatalf(format string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(format, a...)) }
func (r *recTB) Logf(string, ...any)            {}

// TestCheckAudioCaptureDrops: a capture that dropped packets must neither
// fail a relay that delivered, nor hide a relay that did not. The relay's
// own counters decide, and a shortfall larger than the capture's drops is
// never blamed on the capture.
func TestCheckAudioCaptureDrops(t *testing.T) {
	const streams, perCall = 3, G711Packets
	src := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(WANIP1), uint16(PoolMin+2*i))
	}
	phone := netip.AddrPortFrom(netip.MustParseAddr(PhoneIP), 30000)
	// build returns a capture at the phone: one SDP per stream announcing
	// its source, then got[i] RTP packets from each.
	build := func(got []int) *CallRun {
		var pkts []Packet
		t0 := time.Unix(1700000000, 0)
		for i := range streams {
			sdp := fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\n", WANIP1, WANIP1, src(i).Port())
			msg := fmt.Sprintf("INVITE sip:phone@%s SIP/2.0\r\nCall-ID: c%d\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", PhoneIP, i, len(sdp), sdp)
			pkts = append(pkts, Packet{T: t0, Src: netip.AddrPortFrom(netip.MustParseAddr(ProviderIP), 5060), Dst: netip.AddrPortFrom(phone.Addr(), 5060), Payload: []byte(msg)})
			for n := range got[i] {
				pkts = append(pkts, Packet{T: t0.Add(time.Duration(n) * 20 * time.Millisecond), Src: src(i), Dst: phone, Payload: rtpPacket(PTPCMA, uint16(n), uint32(160*n), uint32(i+1), make([]byte, 160))})
			}
		}
		return &CallRun{Pkts: map[string][]Packet{NSPhone: pkts}, SIP: map[string][]WireSIP{NSPhone: SIPMessages(pkts)}, Dropped: map[string]int{}}
	}
	full, need := []int{perCall, perCall, perCall}, MinDelivered(perCall)
	cases := []struct {
		name    string
		got     []int // captured per stream
		dropped int   // capture drops
		relayed []int // the daemon's counters (nil: none given)
		wantErr string
	}{
		{"complete capture", full, 0, nil, ""},
		{"relay loss, capture complete", []int{perCall, need - 5, perCall}, 0, nil, "2 of 3 streams"},
		{"capture drops, relay delivered", []int{perCall, need - 5, perCall - 3}, 20, full, ""},
		{"capture drops, no counters", []int{perCall, need - 5, perCall}, 20, nil, "no relay counters"},
		{"capture drops hide a relay loss", []int{perCall, need - 5, perCall}, 20, []int{perCall, need - 5, perCall}, "forwarded >= 234 on 2 of 3"},
		{"shortfall larger than the drops", []int{perCall, need - 30, perCall}, 20, full, "30 missing"},
		{"a stream missing from the capture", []int{perCall, 0, perCall}, 400, full, "2 sources"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := build(c.got)
			if c.dropped > 0 {
				r.Dropped[NSPhone] = c.dropped
			}
			chk := relayAudio(PhoneCallee)
			chk.Streams, chk.Relayed = streams, c.relayed
			rec := &recTB{TB: t}
			r.CheckAudio(rec, chk)
			got := strings.Join(rec.errs, "\n")
			switch {
			case c.wantErr == "" && got != "":
				t.Errorf("want a pass, got:\n%s", got)
			case c.wantErr != "" && !strings.Contains(got, c.wantErr):
				t.Errorf("want an error containing %q, got:\n%s", c.wantErr, got)
			}
		})
	}
}
