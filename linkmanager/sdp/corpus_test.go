package sdp

import "strings"

// The corpus holds SDP as the stacks we meet write it. LAN addresses are
// 192.168.100.0/24 and 10.0.0.0/8 as in the e2e lab, provider addresses
// are documentation prefixes (203.0.113.0/24, 198.51.100.0/24).
//
// media lists one summary per m-line as Parse should see it (see summary):
// kind port proto [formats] addr rtcp=... direction hold=... mux=...
type corpusCase struct {
	name   string
	lf     bool // keep bare LF; the others are sent with CRLF as on the wire
	body   string
	origin Origin
	media  []string
}

var corpus = []corpusCase{
	{
		name: "asterisk pjsip offer G.711/G.722/DTMF",
		body: `v=0
o=- 1838367154 1838367154 IN IP4 192.168.100.20
s=Asterisk
c=IN IP4 192.168.100.20
t=0 0
m=audio 10062 RTP/AVP 8 0 9 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
`,
		origin: Origin{"-", "1838367154", "1838367154", "192.168.100.20"},
		media:  []string{"audio 10062 RTP/AVP [8 0 9 101] 192.168.100.20 rtcp=192.168.100.20:10063 sendrecv hold=false mux=false"},
	},
	{
		name: "freeswitch offer opus with a=rtcp address",
		body: `v=0
o=FreeSWITCH 1718203400 1718203401 IN IP4 192.168.100.30
s=FreeSWITCH
c=IN IP4 192.168.100.30
t=0 0
m=audio 16384 RTP/AVP 102 9 8 0 101 13
a=rtpmap:102 opus/48000/2
a=fmtp:102 useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=48000; ptime=20; minptime=10; maxptime=40
a=rtpmap:9 G722/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:13 CN/8000
a=ptime:20
a=sendrecv
a=rtcp:16385 IN IP4 192.168.100.30
`,
		origin: Origin{"FreeSWITCH", "1718203400", "1718203401", "192.168.100.30"},
		media:  []string{"audio 16384 RTP/AVP [102 9 8 0 101 13] 192.168.100.30 rtcp=192.168.100.30:16385 sendrecv hold=false mux=false"},
	},
	{
		name: "3cx offer with c= at both levels",
		body: `v=0
o=3cxPS 1369047040 1694498817 IN IP4 192.168.100.40
s=3cxPS Audio call
c=IN IP4 192.168.100.40
t=0 0
m=audio 7092 RTP/AVP 8 0 9 101
c=IN IP4 192.168.100.40
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:9 G722/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
`,
		origin: Origin{"3cxPS", "1369047040", "1694498817", "192.168.100.40"},
		media:  []string{"audio 7092 RTP/AVP [8 0 9 101] 192.168.100.40 rtcp=192.168.100.40:7093 sendrecv hold=false mux=false"},
	},
	{
		name: "telekom-style answer, media-level c= only, bandwidth",
		body: `v=0
o=- 3914123456 3914123457 IN IP4 203.0.113.37
s=-
t=0 0
m=audio 31204 RTP/AVP 8 101
c=IN IP4 203.0.113.38
b=AS:80
b=TIAS:64000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=maxptime:240
a=sendrecv
`,
		origin: Origin{"-", "3914123456", "3914123457", "203.0.113.37"},
		media:  []string{"audio 31204 RTP/AVP [8 101] 203.0.113.38 rtcp=203.0.113.38:31205 sendrecv hold=false mux=false"},
	},
	{
		name: "sipgate-style inbound offer, G.729 annexb=no, a=rtcp port only",
		body: `v=0
o=- 3921874521 3921874521 IN IP4 203.0.113.60
s=sipgate VoIP
c=IN IP4 203.0.113.61
t=0 0
m=audio 40376 RTP/AVP 8 0 9 18 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:9 G722/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:40377
a=ptime:20
a=sendrecv
`,
		origin: Origin{"-", "3921874521", "3921874521", "203.0.113.60"},
		media:  []string{"audio 40376 RTP/AVP [8 0 9 18 101] 203.0.113.61 rtcp=203.0.113.61:40377 sendrecv hold=false mux=false"},
	},
	{
		name: "asterisk hold re-INVITE a=sendonly",
		body: `v=0
o=- 1838367154 1838367155 IN IP4 192.168.100.20
s=Asterisk
c=IN IP4 192.168.100.20
t=0 0
m=audio 10062 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendonly
`,
		origin: Origin{"-", "1838367154", "1838367155", "192.168.100.20"},
		media:  []string{"audio 10062 RTP/AVP [8 101] 192.168.100.20 rtcp=192.168.100.20:10063 sendonly hold=true mux=false"},
	},
	{
		name: "hold with session-level a=inactive",
		body: `v=0
o=FreeSWITCH 1718203400 1718203402 IN IP4 192.168.100.30
s=FreeSWITCH
c=IN IP4 192.168.100.30
t=0 0
a=inactive
m=audio 16384 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
`,
		origin: Origin{"FreeSWITCH", "1718203400", "1718203402", "192.168.100.30"},
		media:  []string{"audio 16384 RTP/AVP [8 101] 192.168.100.30 rtcp=192.168.100.30:16385 inactive hold=true mux=false"},
	},
	{
		name: "RFC 2543 hold c=0.0.0.0 (old snom/Cisco style)",
		body: `v=0
o=root 1042 1043 IN IP4 192.168.100.50
s=call
c=IN IP4 0.0.0.0
t=0 0
m=audio 62000 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
`,
		origin: Origin{"root", "1042", "1043", "192.168.100.50"},
		media:  []string{"audio 62000 RTP/AVP [8 0 101] 0.0.0.0 rtcp=0.0.0.0:62001 sendrecv hold=true mux=false"},
	},
	{
		name: "media-level c=0.0.0.0 overrides session c=, with a=sendonly",
		body: `v=0
o=- 77 78 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
m=audio 5004 RTP/AVP 0 101
c=IN IP4 0.0.0.0
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendonly
`,
		origin: Origin{"-", "77", "78", "10.0.0.5"},
		media:  []string{"audio 5004 RTP/AVP [0 101] 0.0.0.0 rtcp=0.0.0.0:5005 sendonly hold=true mux=false"},
	},
	{
		name: "provider answers hold with a=recvonly",
		body: `v=0
o=- 3921874521 3921874522 IN IP4 203.0.113.60
s=sipgate VoIP
c=IN IP4 203.0.113.61
t=0 0
m=audio 40376 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=recvonly
`,
		origin: Origin{"-", "3921874521", "3921874522", "203.0.113.60"},
		media:  []string{"audio 40376 RTP/AVP [8 101] 203.0.113.61 rtcp=203.0.113.61:40377 recvonly hold=false mux=false"},
	},
	{
		name: "asterisk T.38 re-INVITE: audio disabled, image udptl",
		body: `v=0
o=- 1838367154 1838367156 IN IP4 192.168.100.20
s=Asterisk
c=IN IP4 192.168.100.20
t=0 0
m=audio 0 RTP/AVP 8
a=rtpmap:8 PCMA/8000
m=image 4000 udptl t38
c=IN IP4 192.168.100.20
a=T38FaxVersion:0
a=T38MaxBitRate:14400
a=T38FaxRateManagement:transferredTCF
a=T38FaxMaxBuffer:400
a=T38FaxMaxDatagram:400
a=T38FaxUdpEC:t38UDPRedundancy
`,
		origin: Origin{"-", "1838367154", "1838367156", "192.168.100.20"},
		media: []string{
			"audio 0 RTP/AVP [8] 192.168.100.20 rtcp=- sendrecv hold=false mux=false",
			"image 4000 udptl [t38] 192.168.100.20 rtcp=- sendrecv hold=false mux=false",
		},
	},
	{
		name: "freeswitch audio plus T.38 image, both active",
		body: `v=0
o=FreeSWITCH 1718203400 1718203403 IN IP4 192.168.100.30
s=FreeSWITCH
c=IN IP4 192.168.100.30
t=0 0
m=audio 16384 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=rtcp:16385 IN IP4 192.168.100.30
m=image 16386 udptl t38
a=T38FaxVersion:0
a=T38MaxBitRate:9600
a=T38FaxFillBitRemoval
a=T38FaxRateManagement:transferredTCF
a=T38FaxMaxBuffer:2000
a=T38FaxMaxDatagram:400
a=T38FaxUdpEC:t38UDPRedundancy
`,
		origin: Origin{"FreeSWITCH", "1718203400", "1718203403", "192.168.100.30"},
		media: []string{
			"audio 16384 RTP/AVP [8 101] 192.168.100.30 rtcp=192.168.100.30:16385 sendrecv hold=false mux=false",
			"image 16386 udptl [t38] 192.168.100.30 rtcp=- sendrecv hold=false mux=false",
		},
	},
	{
		name: "linphone audio plus video with rtcp-fb and rtcp-xr",
		body: `v=0
o=linphone 2741 3416 IN IP4 192.168.100.60
s=Talk
c=IN IP4 192.168.100.60
t=0 0
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
m=audio 7078 RTP/AVP 96 8 0 101
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:101 telephone-event/8000
a=rtcp:7079
a=rtcp-fb:* trr-int 1000
a=rtcp-fb:* ccm tmmbr
m=video 9078 RTP/AVP 96 97
a=rtpmap:96 VP8/90000
a=rtpmap:97 H264/90000
a=fmtp:97 profile-level-id=42801F
a=rtcp:9079
a=rtcp-fb:* trr-int 1000
a=rtcp-fb:* ccm tmmbr
a=rtcp-fb:96 nack pli
a=rtcp-fb:96 ccm fir
a=rtcp-fb:97 nack pli
a=rtcp-fb:97 ccm fir
`,
		origin: Origin{"linphone", "2741", "3416", "192.168.100.60"},
		media: []string{
			"audio 7078 RTP/AVP [96 8 0 101] 192.168.100.60 rtcp=192.168.100.60:7079 sendrecv hold=false mux=false",
			"video 9078 RTP/AVP [96 97] 192.168.100.60 rtcp=192.168.100.60:9079 sendrecv hold=false mux=false",
		},
	},
	{
		name: "session-level c= used by one stream, overridden by the other",
		body: `v=0
o=- 20518 0 IN IP4 203.0.113.80
s=-
c=IN IP4 203.0.113.81
t=0 0
m=audio 20000 RTP/AVP 0
m=video 20002 RTP/AVP 31
c=IN IP4 203.0.113.82
`,
		origin: Origin{"-", "20518", "0", "203.0.113.80"},
		media: []string{
			"audio 20000 RTP/AVP [0] 203.0.113.81 rtcp=203.0.113.81:20001 sendrecv hold=false mux=false",
			"video 20002 RTP/AVP [31] 203.0.113.82 rtcp=203.0.113.82:20003 sendrecv hold=false mux=false",
		},
	},
	{
		name: "asterisk SDES-SRTP offer RTP/SAVP with a=crypto",
		body: `v=0
o=- 1838367300 1838367300 IN IP4 192.168.100.20
s=Asterisk
c=IN IP4 192.168.100.20
t=0 0
m=audio 10070 RTP/SAVP 8 101
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
`,
		origin: Origin{"-", "1838367300", "1838367300", "192.168.100.20"},
		media:  []string{"audio 10070 RTP/SAVP [8 101] 192.168.100.20 rtcp=192.168.100.20:10071 sendrecv hold=false mux=false"},
	},
	{
		name: "asterisk ICE offer with host and srflx candidates, rtcp-mux",
		body: `v=0
o=- 1838367200 1838367200 IN IP4 192.168.100.20
s=Asterisk
c=IN IP4 192.168.100.20
t=0 0
a=ice-options:trickle
m=audio 10090 RTP/AVP 8 101
a=ice-ufrag:5c3e1d2a6f4b0c9d
a=ice-pwd:0f9e8d7c6b5a49382716a5b4c3d2e1f0
a=candidate:Hc0a86414 1 UDP 2130706431 192.168.100.20 10090 typ host
a=candidate:S3b5f7a11 1 UDP 1694498815 198.51.100.200 10090 typ srflx raddr 192.168.100.20 rport 10090
a=candidate:Hc0a86414 2 UDP 2130706430 192.168.100.20 10091 typ host
a=end-of-candidates
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
a=rtcp-mux
`,
		origin: Origin{"-", "1838367200", "1838367200", "192.168.100.20"},
		media:  []string{"audio 10090 RTP/AVP [8 101] 192.168.100.20 rtcp=192.168.100.20:10091 sendrecv hold=false mux=true"},
	},
	{
		name: "bare LF line endings",
		lf:   true,
		body: `v=0
o=- 1838367154 1838367154 IN IP4 192.168.100.20
s=Asterisk
c=IN IP4 192.168.100.20
t=0 0
m=audio 10062 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
`,
		origin: Origin{"-", "1838367154", "1838367154", "192.168.100.20"},
		media:  []string{"audio 10062 RTP/AVP [8 101] 192.168.100.20 rtcp=192.168.100.20:10063 sendrecv hold=false mux=false"},
	},
	{
		name: "sloppy but usable: blank line, extra spaces, trailing space, disabled stream without formats or c=",
		body: "v=0\n" +
			"o=- 5 5 IN IP4 192.168.100.20\n" +
			"s=-\n" +
			"t=0 0\n" +
			"\n" +
			"m=audio  10062 RTP/AVP 0 8 101 \n" +
			"c=IN IP4 192.168.100.20\n" +
			"a=rtpmap:101 telephone-event/8000\n" +
			"m=video 0 RTP/AVP\n" +
			"a=inactive",
		origin: Origin{"-", "5", "5", "192.168.100.20"},
		media: []string{
			"audio 10062 RTP/AVP [0 8 101] 192.168.100.20 rtcp=192.168.100.20:10063 sendrecv hold=false mux=false",
			"video 0 RTP/AVP [] - rtcp=- inactive hold=true mux=false",
		},
	},
}

// wire returns the body as it travels: CRLF unless the case is about LF.
func (c corpusCase) wire() []byte {
	if c.lf {
		return []byte(c.body)
	}
	return []byte(crlf(c.body))
}

// crlf turns a readable LF-only literal into wire format.
func crlf(s string) string { return strings.ReplaceAll(s, "\n", "\r\n") }
