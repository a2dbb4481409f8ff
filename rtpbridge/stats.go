package rtpbridge

import (
	"net/netip"
	"time"

	"go.uber.org/zap/zapcore"
)

// Constants of the RFC 3550 A.1 sequence validator.
const (
	maxDropout  = 3000
	maxMisorder = 100
)

// seqState counts expected and received packets as in RFC 3550 A.1, so loss
// survives the 16-bit wrap, reordering and duplicates. A restart (new SSRC, or
// a jump the validator accepts as a new sequence) folds the finished run into
// the prior totals instead of discarding it.
type seqState struct {
	started   bool
	maxSeq    uint16
	cycles    int64 // wraps, times 65536
	baseSeq   int64
	badSeq    int32 // -1: none
	received  int64
	priorExp  int64
	priorRecv int64
}

func (s *seqState) restart(seq uint16) {
	if s.started {
		s.priorExp += s.expected()
		s.priorRecv += s.received
	}
	s.started = true
	s.maxSeq = seq
	s.cycles = 0
	s.baseSeq = int64(seq)
	s.badSeq = -1
	s.received = 0
}

func (s *seqState) expected() int64 { return s.cycles + int64(s.maxSeq) - s.baseSeq + 1 }

// update reports whether the packet counts toward the statistics.
func (s *seqState) update(seq uint16) bool {
	if !s.started {
		s.restart(seq)
		s.received++
		return true
	}
	udelta := seq - s.maxSeq
	switch {
	case udelta < maxDropout:
		if seq < s.maxSeq {
			s.cycles += 1 << 16
		}
		s.maxSeq = seq
	case int(udelta) <= 1<<16-maxMisorder:
		// A large jump is accepted as a new sequence only when the next
		// packet follows it, so one stray packet does not reset the counts.
		if int32(seq) != s.badSeq {
			s.badSeq = int32(seq+1) & 0xffff
			return false
		}
		s.restart(seq)
	default:
		// Duplicate or reordered within maxMisorder: counted, maxSeq kept.
	}
	s.received++
	return true
}

func (s *seqState) lost() int64 {
	if !s.started {
		return 0
	}
	return s.priorExp + s.expected() - s.priorRecv - s.received
}

// jitterState is the RFC 3550 A.8 interarrival jitter estimator, kept scaled
// by 16 in timestamp units as the RFC's integer form does.
type jitterState struct {
	started     bool
	rate        uint32
	lastTransit uint32
	j16         int64
}

// update takes the arrival time in ns since the session's epoch.
func (j *jitterState) update(ts uint32, arrivalNS int64, rate uint32) {
	if rate == 0 {
		return
	}
	// Microseconds keep the multiplication far from overflow for any call
	// length while staying finer than one sample at 48 kHz.
	arrival := uint32((arrivalNS / 1e3) * int64(rate) / 1e6)
	transit := arrival - ts
	if !j.started || rate != j.rate {
		// A payload type with another clock rate (e.g. a codec switch)
		// starts a new baseline: differences across rates are meaningless.
		j.started, j.rate, j.lastTransit = true, rate, transit
		return
	}
	d := int64(int32(transit - j.lastTransit))
	j.lastTransit = transit
	if d < 0 {
		d = -d
	}
	j.j16 += d - (j.j16+8)>>4
}

func (j *jitterState) reset() { *j = jitterState{j16: j.j16} }

func (j *jitterState) duration() time.Duration {
	if j.rate == 0 {
		return 0
	}
	return time.Duration(j.j16>>4) * time.Second / time.Duration(j.rate)
}

// Stats is a snapshot of a Session's media.
type Stats struct {
	// AtoB is what arrived on leg A (from the PBX) for leg B; BtoA the reverse.
	AtoB, BtoA Direction
}

// Direction holds the counters of one direction. Packets, Bytes, Lost and
// Jitter describe RTP accepted from the latched peer; drop counters cover the
// RTP and RTCP sockets of the receiving leg.
type Direction struct {
	Packets uint64
	Bytes   uint64
	// Lost is RFC 3550's cumulative loss: expected minus received. It can be
	// negative when duplicates arrive.
	Lost int64
	// Jitter is the RFC 3550 interarrival jitter estimate.
	Jitter      time.Duration
	RTCPPackets uint64
	RTCPBytes   uint64
	// Forwarded counts RTP and RTCP packets sent out of the other leg.
	Forwarded uint64
	// Unsent counts accepted packets not sent because the other leg has no
	// address (no SDP yet, or a 0.0.0.0 hold).
	Unsent uint64
	// SendErrors counts failed writes on the other leg.
	SendErrors uint64
	// Malformed counts packets that are not RTP (or RTCP) version 2.
	Malformed uint64
	// Foreign counts packets dropped because they came from a source other
	// than the latched one (or arrived while nothing was latched): what an
	// attacker spraying the relay's ports, or injecting into a call, sends.
	Foreign uint64
	// Refused is the part of Foreign whose source the latching rule never
	// accepts: not the SDP address (strict) or its IP (ip), a source of the
	// previous call on a reused port pair, or any source before the SDP
	// address was known. The rest of Foreign came from acceptable sources
	// while the latched one was alive.
	Refused uint64
	// Relatched counts takeovers: another source replaced the latched one
	// after it had been silent for Config.RelatchAfter.
	Relatched uint64
	// SSRC is the SSRC last seen from the latched RTP source.
	SSRC uint32
	// Source is the latched RTP source, invalid if none.
	Source netip.AddrPort
}

// OneWay reports whether RTP arrived, but not from both peers: the symptom
// of a NAT that lost the pinhole race, of a call held with sendonly, or of
// an attack. Only RTP from the latched peers counts as arrived from them,
// so a call whose one direction brought nothing but refused or foreign
// traffic (an attacker hitting a silent direction, or a genuine peer the
// latching rule refused) is one-way, even if nothing else came in either:
// no two-way audio was relayed, yet media was sent to the call. A call
// with no RTP at all (unanswered, or both sides held) is not.
func (s Stats) OneWay() bool {
	a, b := s.AtoB.Packets > 0, s.BtoA.Packets > 0
	if a || b {
		return a != b
	}
	return s.AtoB.Foreign+s.BtoA.Foreign > 0
}

// MarshalLogObject lets the SIP layer log a call's media in its one
// call-end line with zap.Object.
func (s Stats) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddBool("one_way", s.OneWay())
	if err := enc.AddObject("a_to_b", s.AtoB); err != nil {
		return err
	}
	return enc.AddObject("b_to_a", s.BtoA)
}

// MarshalLogObject implements zapcore.ObjectMarshaler.
func (d Direction) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddUint64("packets", d.Packets)
	enc.AddUint64("bytes", d.Bytes)
	enc.AddInt64("lost", d.Lost)
	enc.AddDuration("jitter", d.Jitter)
	enc.AddUint64("rtcp_packets", d.RTCPPackets)
	enc.AddUint64("forwarded", d.Forwarded)
	if d.Unsent > 0 {
		enc.AddUint64("unsent", d.Unsent)
	}
	if d.SendErrors > 0 {
		enc.AddUint64("send_errors", d.SendErrors)
	}
	enc.AddUint64("dropped_malformed", d.Malformed)
	enc.AddUint64("dropped_foreign", d.Foreign)
	if d.Refused > 0 {
		enc.AddUint64("refused", d.Refused)
	}
	if d.Relatched > 0 {
		enc.AddUint64("takeovers", d.Relatched)
	}
	enc.AddUint32("ssrc", d.SSRC)
	if d.Source.IsValid() {
		enc.AddString("source", d.Source.String())
	}
	return nil
}
