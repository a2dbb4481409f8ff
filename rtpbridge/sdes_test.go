package rtpbridge

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// sdesPacket is an RR followed by an SDES chunk with a CNAME and a NAME.
func sdesPacket(ssrc uint32, cname, name string) []byte {
	rr := []byte{0x80, 201, 0, 1, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(rr[4:], ssrc)
	chunk := binary.BigEndian.AppendUint32(nil, ssrc)
	chunk = append(chunk, 1, byte(len(cname)))
	chunk = append(chunk, cname...)
	chunk = append(chunk, 2, byte(len(name)))
	chunk = append(chunk, name...)
	chunk = append(chunk, 0)
	for len(chunk)%4 != 0 {
		chunk = append(chunk, 0)
	}
	sdes := []byte{0x81, 202, 0, 0}
	binary.BigEndian.PutUint16(sdes[2:], uint16(len(chunk)/4))
	return append(append(rr, sdes...), chunk...)
}

func TestScrubSDES(t *testing.T) {
	in := sdesPacket(0x1234abcd, "sip:20@192.168.100.20", "Reception 192.168.100.20")
	b := bytes.Clone(in)
	scrubSDES(b)
	if len(b) != len(in) || !bytes.Equal(b[:12], in[:12]) {
		t.Fatalf("lengths or headers changed:\n%x\n%x", in, b)
	}
	if bytes.Contains(b, []byte("192.168")) || bytes.Contains(b, []byte("sip:")) {
		t.Fatalf("LAN text left in %q", b)
	}
	if !bytes.Contains(b, []byte("1234abcd1234abcd1234a")) {
		t.Fatalf("CNAME not the SSRC in hex: %q", b)
	}
	// Truncated or foreign packets: no panic, nothing past the damage.
	for n := range len(in) {
		scrubSDES(bytes.Clone(in[:n]))
	}
	junk := []byte{0x81, 202, 0xff, 0xff, 1, 2, 3, 4}
	scrubSDES(junk)
	if !bytes.Equal(junk, []byte{0x81, 202, 0xff, 0xff, 1, 2, 3, 4}) {
		t.Fatalf("a packet claiming more than it holds was changed: %x", junk)
	}
}

func FuzzScrubSDES(f *testing.F) {
	f.Add(sdesPacket(1, "sip:20@192.168.100.20", "x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := len(b)
		scrubSDES(b)
		if len(b) != n {
			t.Fatal("length changed")
		}
	})
}

// The PBX's RTCP reaches the provider without its CNAME; the provider's
// reaches the PBX unchanged.
func TestRelayScrubsPBXCNAME(t *testing.T) {
	h := newHarness(t, nil)
	h.connect()
	pkt := sdesPacket(0x0a0b0c0d, "sip:20@192.168.100.20", "Reception")
	send(t, h.pbxRTCP, pkt, h.aRTCP)
	got, _ := recv(t, h.sdpRTCP)
	if len(got) != len(pkt) || bytes.Contains(got, []byte("192.168")) {
		t.Fatalf("provider got %q", got)
	}
	from := sdesPacket(0x01020304, "gw@10.1.2.3", "Provider")
	send(t, h.sdpRTCP, from, h.bRTCP)
	back, _ := recv(t, h.pbxRTCP)
	if !bytes.Equal(back, from) {
		t.Fatalf("the PBX got %q, want the provider's RTCP unchanged", back)
	}
	if allocs := testing.AllocsPerRun(100, func() { scrubSDES(pkt) }); allocs != 0 {
		t.Fatalf("scrubSDES allocates %v", allocs)
	}
}
