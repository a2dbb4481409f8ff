package rtpbridge

import "encoding/binary"

// scrubSDES overwrites, in place, the text of every SDES item in a
// compound RTCP packet (RFC 3550 §6.5) with a neutral one of the same
// length, so that nothing the PBX writes there reaches the Internet side:
// its CNAME is typically "sip:20@192.168.100.20", a LAN address (issue 9
// item 8). Lengths stay as they are, so the packet needs no re-encoding
// and the path allocates nothing. A malformed packet is left as it is
// past the point where it stops making sense; the relay forwards RTCP
// it cannot read unchanged, as before.
func scrubSDES(b []byte) {
	for len(b) >= 4 {
		words := int(binary.BigEndian.Uint16(b[2:4]))
		n := 4 * (words + 1)
		if b[0]>>6 != 2 || n > len(b) {
			return
		}
		if b[1] == 202 { // SDES
			scrubChunks(b[4:n], int(b[0]&0x1f))
		}
		b = b[n:]
	}
}

// scrubChunks walks count SDES chunks: an SSRC, then items (type, length,
// text) up to a zero type, then padding to 32 bits.
func scrubChunks(b []byte, count int) {
	for ; count > 0 && len(b) >= 4; count-- {
		ssrc := b[:4]
		i := 4
		for i < len(b) && b[i] != 0 {
			if i+2 > len(b) {
				return
			}
			l := int(b[i+1])
			if i+2+l > len(b) {
				return
			}
			neutral(b[i+2:i+2+l], ssrc)
			i += 2 + l
		}
		i++              // the zero type
		i = (i + 3) &^ 3 // padding to the next 32-bit boundary
		if i > len(b) {
			return
		}
		b = b[i:]
	}
}

// neutral fills text with the SSRC in hex, repeated: still unique per
// source, as a CNAME must be, and telling nothing about the host.
func neutral(text, ssrc []byte) {
	const hex = "0123456789abcdef"
	for j := range text {
		nib := ssrc[(j/2)%4]
		if j%2 == 0 {
			nib >>= 4
		}
		text[j] = hex[nib&0xf]
	}
}
