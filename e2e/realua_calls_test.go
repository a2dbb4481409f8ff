//go:build linux

package e2e

// Calls with real user agents (issue 8, "Done means"): baresip and
// linphone-daemon call each other both ways with two-way audio, RFC 4733
// DTMF both ways, hold and resume from one side and hang-up from the other.
// TestRealUALabScenarios proves the harness through Kamailio alone (a
// baresip on the Internet side stands in for the trunk);
// TestRealUACall… run the same calls through the daemon, baresip as the PBX
// and linphone as the phone behind the provider.

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// party is one real user agent in a call.
type party interface {
	ep() Endpoint
	dial(target string) error
	established(timeout time.Duration) error
	startAudio() error
	hold() error
	resume() error
	digit(d byte) error
	hangup() error
	ended(timeout time.Duration) error
	log() string
}

// bsParty drives a baresip.
type bsParty struct {
	b *Baresip
	e Endpoint
}

func (p *bsParty) ep() Endpoint { return p.e }
func (p *bsParty) dial(target string) error {
	_, err := p.b.Command("dial", target)
	return err
}
func (p *bsParty) established(timeout time.Duration) error {
	if _, err := p.b.WaitEvent("CALL_ESTABLISHED", timeout); err != nil {
		return err
	}
	// The menu's status line (bit rates, ten times a second) would fill
	// the log; statmode (a command only while in a call) turns it off.
	_, err := p.b.Command("statmode", "")
	return err
}
func (p *bsParty) startAudio() error { return nil } // ausine runs from the start
func (p *bsParty) hold() error {
	_, err := p.b.Command("hold", "")
	return err
}
func (p *bsParty) resume() error {
	_, err := p.b.Command("resume", "")
	return err
}
func (p *bsParty) digit(d byte) error {
	_, err := p.b.Command("sndcode", string(d))
	return err
}
func (p *bsParty) hangup() error {
	_, err := p.b.Command("hangup", "")
	return err
}
func (p *bsParty) ended(timeout time.Duration) error {
	e, err := p.b.WaitEvent("CALL_CLOSED", timeout)
	if err == nil && e.Param != "" && e.Param != "Connection reset by user" && e.Param != "Connection reset by peer" {
		return fmt.Errorf("%w: baresip %s: call closed with %q", errUA, p.b.Spec.Name, e.Param)
	}
	return err
}
func (p *bsParty) log() string {
	var evs []string
	for _, e := range p.b.Events() {
		evs = append(evs, e.Type+"("+e.Param+")")
	}
	return fmt.Sprintf("baresip %s events %v\n%s", p.b.Spec.Name, evs, tail(p.b.Log(), 15))
}

// lpParty drives a linphone-daemon.
type lpParty struct {
	lp      *Linphone
	e       Endpoint
	id      int
	resumes int
}

func (p *lpParty) ep() Endpoint { return p.e }
func (p *lpParty) dial(target string) error {
	id, err := p.lp.Call(target)
	p.id = id
	return err
}
func (p *lpParty) established(timeout time.Duration) error {
	ev, err := p.lp.WaitState("StreamsRunning", p.id, 1, timeout)
	if err == nil {
		p.id = ev.ID
	}
	return err
}

// startAudio plays the tone file into the call (no sound card in the
// lab), once the streams run (again: a hold stops the player).
func (p *lpParty) startAudio() error {
	if _, err := p.lp.WaitRunning(p.id, 15*time.Second); err != nil {
		return err
	}
	_, err := p.lp.Command(fmt.Sprintf("incall-player-start %s %d", p.lp.WAV, p.id))
	return err
}
func (p *lpParty) hold() error {
	if _, err := p.lp.Command(fmt.Sprintf("call-pause %d", p.id)); err != nil {
		return err
	}
	_, err := p.lp.WaitState("Paused", p.id, 1, 15*time.Second)
	return err
}
func (p *lpParty) resume() error {
	if _, err := p.lp.Command(fmt.Sprintf("call-resume %d", p.id)); err != nil {
		return err
	}
	p.resumes++
	_, err := p.lp.WaitState("Resuming", p.id, p.resumes, 15*time.Second)
	return err
}
func (p *lpParty) digit(d byte) error {
	_, err := p.lp.Command("dtmf " + string(d))
	return err
}
func (p *lpParty) hangup() error {
	_, err := p.lp.Command(fmt.Sprintf("terminate %d", p.id))
	return err
}
func (p *lpParty) ended(timeout time.Duration) error {
	if _, err := p.lp.WaitState("End", p.id, 1, timeout); err != nil {
		return err
	}
	for _, e := range p.lp.Events() {
		if e.ID == p.id && e.Event == "LinphoneCallError" {
			return fmt.Errorf("%w: linphone %s: call %d ended in error", errUA, p.lp.Spec.Name, p.id)
		}
	}
	return nil
}
func (p *lpParty) log() string {
	var evs []string
	for _, e := range p.lp.Events() {
		evs = append(evs, fmt.Sprintf("%s#%d", strings.TrimPrefix(e.Event, "LinphoneCall"), e.ID))
	}
	return fmt.Sprintf("linphone %s events %v\n%s", p.lp.Spec.Name, evs, tail(p.lp.Log(), 10))
}

// realMedia is where RTP to an endpoint must come from: the other UA
// (any port), or the daemon's relay (its address and pool facing at).
type realMedia struct {
	SrcIP            string
	PortMin, PortMax int
}

// realCall is one call between two real UAs: who holds, who hangs up.
type realCall struct {
	caller, callee party
	target         string // what the caller dials
	holder, hanger party
	media          map[string]realMedia // by endpoint name
	capture        []string
}

// realAudioMin is the least RTP packets (20 ms each) every audio phase
// must deliver each way before the call moves on: 2 s of audio.
const realAudioMin = 100

var realDigits = []byte("159")

// run places the call and steps through it, each step awaited: both sides
// established, audio both ways, DTMF both ways, hold, resume, audio again,
// hang-up, both sides ended. Then the captures are checked.
func (c *realCall) run(t *testing.T, l *Lab) {
	t.Helper()
	caps := map[string]*Capture{}
	for _, ns := range c.capture {
		caps[ns] = l.StartCapture(ns, "eth0", "udp")
	}
	parties := []party{c.caller, c.callee}
	explain := func() {
		for _, p := range parties {
			t.Logf("%s", p.log())
		}
	}
	defer func() {
		if t.Failed() {
			explain()
		}
	}()
	live := func(at Endpoint) []Packet {
		pkts, _ := ReadPcap(caps[at.NS].Path)
		return pkts
	}
	// waitRTP waits until n RTP packets of pt reached at after from.
	waitRTP := func(at Endpoint, pt uint8, from time.Time, n int) error {
		m := c.media[at.Name]
		deadline := time.Now().Add(15 * time.Second)
		for {
			got := len(Select(live(at), To(at.IP), From(m.SrcIP), RTPWithPT(pt), Between(from, time.Time{})))
			if got >= n {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s got %d RTP packets (PT %d) from %s since %s within 15 s, want %d", at.Name, got, pt, m.SrcIP, from.Format("15:04:05.000"), n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// waitFinal waits for the final response to the k-th in-dialog INVITE
	// (k from 1) that from sent, as seen in from's namespace.
	waitFinal := func(from Endpoint, method string, k int) (WireSIP, error) {
		deadline := time.Now().Add(15 * time.Second)
		for {
			msgs := SIPMessages(live(from))
			reqs := distinct(msgs, func(m WireSIP) bool {
				return m.Method == method && m.Src.Addr() == netip.MustParseAddr(from.IP) && hasToTag(m)
			})
			if len(reqs) >= k {
				req := reqs[k-1]
				if res, ok := FirstSIP(msgs, func(m WireSIP) bool {
					return m.Code >= 200 && m.CallID == req.CallID && m.CSeq == req.CSeq && m.Dst.Addr() == netip.MustParseAddr(from.IP)
				}); ok {
					return res, nil
				}
			}
			if time.Now().After(deadline) {
				return WireSIP{}, fmt.Errorf("%s: no final response to in-dialog %s #%d within 15 s (%d sent)", from.Name, method, k, len(reqs))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	stopCaptures := func() (map[string][]Packet, map[string]int) {
		time.Sleep(300 * time.Millisecond) // trailing packets
		pk, dr := map[string][]Packet{}, map[string]int{}
		for ns, cp := range caps {
			cp.Stop()
			pk[ns] = pcapPackets(t, cp.Path)
			dr[ns] = cp.Dropped()
		}
		return pk, dr
	}
	fatal := func(format string, a ...any) {
		t.Helper()
		pk, _ := stopCaptures()
		for _, ns := range c.capture {
			t.Logf("SIP in %s:\n%s", ns, sipFlow(SIPMessages(pk[ns])))
		}
		t.Fatalf(format, a...)
	}

	start := time.Now()
	if err := c.caller.dial(c.target); err != nil {
		fatal("dial: %v", err)
	}
	for _, p := range parties {
		if err := p.established(20 * time.Second); err != nil {
			fatal("call not established: %v", err)
		}
	}
	for _, p := range parties {
		if err := p.startAudio(); err != nil {
			fatal("%v", err)
		}
	}
	// a missing direction is an error, not the end: the dialog checks
	// below still tell their part
	hears := map[string]bool{}
	for _, p := range parties {
		if err := waitRTP(p.ep(), PTPCMA, start, realAudioMin); err != nil {
			t.Errorf("audio before hold: %v", err)
			continue
		}
		hears[p.ep().Name] = true
	}
	// DTMF both ways, one digit at a time: each awaited at the receiver
	// (end packets of that event).
	for _, pair := range [][2]party{{c.caller, c.callee}, {c.callee, c.caller}} {
		from, to := pair[0], pair[1]
		for _, d := range realDigits {
			if err := from.digit(d); err != nil {
				t.Errorf("DTMF %c: %v", d, err)
				continue
			}
			if !hears[to.ep().Name] {
				continue // no RTP path that way: checkRealDTMF reports it
			}
			if err := waitEvent(t, live, to.ep(), c.media[to.ep().Name].SrcIP, digitEvent(d)); err != nil {
				t.Errorf("DTMF %c from %s: %v", d, from.ep().Name, err)
			}
		}
	}
	// reinvite runs the holder's hold or resume and awaits the final
	// response to its k-th re-INVITE, which must be 200.
	reinvite := func(what string, act func() error, k int) WireSIP {
		if err := act(); err != nil {
			t.Errorf("%s by %s: %v", what, c.holder.ep().Name, err)
		}
		res, err := waitFinal(c.holder.ep(), "INVITE", k)
		if err != nil {
			t.Errorf("%s: %v", what, err)
		} else if res.Code != 200 {
			t.Errorf("the %s re-INVITE from %s was answered %q, want 200", what, c.holder.ep().Name, res.First)
		}
		return res
	}
	// Anything in-dialog before this is not the hold: the daemon's own
	// re-INVITE after a lost NAT race (issue 9b), say.
	holdAct := time.Now()
	reinvite("hold", c.holder.hold, 1)
	resumeRes := reinvite("resume", c.holder.resume, 2)
	afterResume := time.Now()
	if resumeRes.Code == 200 {
		afterResume = resumeRes.T
		// linphone's file player stops with the hold
		for _, p := range parties {
			if err := p.startAudio(); err != nil {
				t.Errorf("%v", err)
			}
		}
		for _, p := range parties {
			if err := waitRTP(p.ep(), PTPCMA, afterResume, realAudioMin); err != nil {
				t.Errorf("audio after resume: %v", err)
			}
		}
	}
	if err := c.hanger.hangup(); err != nil {
		t.Errorf("hang-up by %s: %v", c.hanger.ep().Name, err)
	}
	byeRes, byeErr := waitFinal(c.hanger.ep(), "BYE", 1)
	for _, p := range parties {
		if err := p.ended(15 * time.Second); err != nil {
			t.Errorf("after the hang-up by %s: %v", c.hanger.ep().Name, err)
		}
	}
	if byeErr != nil {
		t.Errorf("hang-up: %v", byeErr)
	} else if byeRes.Code != 200 {
		t.Errorf("the BYE from %s was answered %q, want 200", c.hanger.ep().Name, byeRes.First)
	}

	pkts, dropped := stopCaptures()
	held := c.callee
	if c.holder == c.callee {
		held = c.caller
	}
	checkHoldSDP(t, SIPMessages(pkts[held.ep().NS]), held.ep(), holdAct)
	for _, p := range parties {
		at := p.ep()
		msgs := SIPMessages(pkts[at.NS])
		checkDialogTags(t, msgs, at)
		checkInDialogAnswered(t, msgs, at)
		m := c.media[at.Name]
		checkRealAudio(t, pkts[at.NS], msgs, at, m, dropped[at.NS], repairedAt(msgs, start, holdAct),
			holdStart(msgs, c.holder.ep(), holdAct), "before the hold")
		if resumeRes.Code == 200 {
			checkRealAudio(t, pkts[at.NS], msgs, at, m, dropped[at.NS], afterResume, byeStart(msgs), "after the resume")
		}
		checkRealDTMF(t, pkts[at.NS], msgs, at, m.SrcIP)
	}
	if t.Failed() {
		for _, ns := range c.capture {
			t.Logf("SIP in %s:\n%s", ns, sipFlow(SIPMessages(pkts[ns])))
		}
	}
}

// checkHoldSDP asserts that the held party got the hold as a re-INVITE
// offering sendonly (or inactive) and the resume as one offering sendrecv.
func checkHoldSDP(t *testing.T, msgs []WireSIP, held Endpoint, holdAct time.Time) {
	t.Helper()
	ip := netip.MustParseAddr(held.IP)
	reinvites := distinct(msgs, func(m WireSIP) bool {
		return m.Method == "INVITE" && hasToTag(m) && m.Dst.Addr() == ip && m.T.After(holdAct)
	})
	want := [][]string{{"sendonly", "inactive"}, {"sendrecv"}}
	for i, w := range want {
		if i >= len(reinvites) {
			t.Errorf("%s got %d re-INVITEs, want the hold and the resume", held.Name, len(reinvites))
			return
		}
		s, ok := ParseSDPAudio(reinvites[i].Body())
		if !ok || !slices.Contains(w, s.Direction) {
			t.Errorf("%s got re-INVITE #%d with audio direction %q, want one of %v", held.Name, i+1, s.Direction, w)
		}
	}
}

// digitEvent is the RFC 4733 event code of a DTMF digit.
func digitEvent(d byte) int {
	switch {
	case d >= '0' && d <= '9':
		return int(d - '0')
	case d == '*':
		return 10
	case d == '#':
		return 11
	}
	return -1
}

// eventPT is the telephone-event payload type of the first SDP in msgs
// that has one (linphone offers 96, baresip 101; the answer takes the
// offer's), PTEvent if none.
func eventPT(msgs []WireSIP) uint8 {
	for _, m := range msgs {
		if s := telEventRE.FindStringSubmatch(m.Body()); s != nil {
			pt, _ := strconv.Atoi(s[1])
			return uint8(pt)
		}
	}
	return PTEvent
}

var telEventRE = regexp.MustCompile(`a=rtpmap:(\d+) telephone-event/8000`)

// waitEvent waits until an end packet of RFC 4733 event ev reached at from srcIP.
func waitEvent(t *testing.T, live func(Endpoint) []Packet, at Endpoint, srcIP string, ev int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pkts := live(at)
		pt := eventPT(SIPMessages(pkts))
		for _, p := range Select(pkts, To(at.IP), From(srcIP), RTPWithPT(pt)) {
			h, _ := ParseRTP(p.Payload)
			if len(h.Body) >= 4 && int(h.Body[0]) == ev && h.Body[1]&0x80 != 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s got no end packet of event %d (PT %d) from %s within 10 s", at.Name, ev, pt, srcIP)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// holdStart is when the holder's first in-dialog INVITE after holdAct left.
func holdStart(msgs []WireSIP, holder Endpoint, holdAct time.Time) time.Time {
	a := netip.MustParseAddr(holder.IP)
	if m, ok := FirstSIP(msgs, func(m WireSIP) bool {
		return m.Method == "INVITE" && hasToTag(m) && m.Src.Addr() == a && m.T.After(holdAct)
	}); ok {
		return m.T
	}
	if m, ok := FirstSIP(msgs, func(m WireSIP) bool { return m.Method == "INVITE" && hasToTag(m) && m.T.After(holdAct) }); ok {
		return m.T
	}
	return time.Time{}
}

// repairedAt is when the audio before the hold must be whole: start, or
// once the daemon's re-INVITE after a lost NAT race (issue 9b) has been
// answered, plus a settling margin. Until then the remote's audio was
// dropped at the router and ours came from the port the router chose.
func repairedAt(msgs []WireSIP, start, holdAct time.Time) time.Time {
	from := start
	for _, req := range distinct(msgs, func(m WireSIP) bool {
		return m.Method == "INVITE" && hasToTag(m) && m.T.After(start) && m.T.Before(holdAct)
	}) {
		if res, ok := FirstSIP(msgs, func(m WireSIP) bool {
			return m.Code >= 200 && m.CallID == req.CallID && m.CSeq == req.CSeq
		}); ok && res.T.After(from) {
			from = res.T.Add(200 * time.Millisecond)
		}
	}
	return from
}

// byeStart is when the first BYE was seen.
func byeStart(msgs []WireSIP) time.Time {
	if m, ok := FirstSIP(msgs, isRequest("BYE")); ok {
		return m.T
	}
	return time.Time{}
}

var tagRE = regexp.MustCompile(`;\s*tag=([^;>\s]+)`)

// tagOf returns the tag of a message's From or To header ("" none).
func tagOf(m WireSIP, header, compact string) string {
	for _, v := range append(m.Header(header), m.Header(compact)...) {
		if s := tagRE.FindStringSubmatch(v); s != nil {
			return s[1]
		}
	}
	return ""
}

// checkDialogTags asserts, in at's namespace, that the dialog at took part
// in kept its tags: every response to the initial INVITE carries one To
// tag, and every in-dialog request at received names at's own tag and the
// peer's tag exactly as the initial exchange set them (RFC 3261 §12). A
// B2BUA that puts a fresh tag on each response or uses a third tag in its
// BYE fails here, whatever the UA then answers.
func checkDialogTags(t testing.TB, msgs []WireSIP, at Endpoint) {
	t.Helper()
	ip := netip.MustParseAddr(at.IP)
	// the initial INVITE: the one answered 2xx (not one challenged 407)
	var inv WireSIP
	ok := false
	for _, m := range msgs {
		if m.Method != "INVITE" || hasToTag(m) {
			continue
		}
		if _, answered := FirstSIP(msgs, func(r WireSIP) bool { return r.Code/100 == 2 && r.CallID == m.CallID && r.CSeq == m.CSeq }); answered || !ok {
			inv, ok = m, true
		}
	}
	if !ok {
		t.Errorf("%s: no initial INVITE in its capture", at.Name)
		return
	}
	caller := inv.Src.Addr() == ip
	var toTags []string
	seen := map[string]bool{}
	for _, m := range msgs {
		if m.Code > 100 && m.Code < 300 && m.CallID == inv.CallID && m.CSeq == inv.CSeq {
			if tag := tagOf(m, "To", "t"); tag != "" && !seen[tag] {
				seen[tag] = true
				toTags = append(toTags, fmt.Sprintf("%s (%d)", tag, m.Code))
			}
		}
	}
	if len(toTags) != 1 {
		t.Errorf("%s: the responses to the initial INVITE carry %d To tags %v, want 1 (one dialog)", at.Name, len(toTags), toTags)
		if len(toTags) == 0 {
			return
		}
	}
	fromTag := tagOf(inv, "From", "f")
	toTag, _, _ := strings.Cut(toTags[len(toTags)-1], " ")
	// the 2xx fixes the dialog: take its tag
	if ok200, ok := FirstSIP(msgs, func(m WireSIP) bool { return m.Code == 200 && m.CallID == inv.CallID && m.CSeq == inv.CSeq }); ok {
		toTag = tagOf(ok200, "To", "t")
	}
	local, remote := toTag, fromTag
	if caller {
		local, remote = fromTag, toTag
	}
	for _, m := range msgs {
		if m.Method == "" || m.Method == "ACK" && !hasToTag(m) || !hasToTag(m) || m.CallID != inv.CallID || m.Dst.Addr() != ip {
			continue
		}
		if f, to := tagOf(m, "From", "f"), tagOf(m, "To", "t"); f != remote || to != local {
			t.Errorf("%s got %q with From tag %s and To tag %s; its dialog is local %s, remote %s", at.Name, m.First, f, to, local, remote)
		}
	}
}

// checkInDialogAnswered asserts that every in-dialog request (BYE,
// re-INVITE, UPDATE, ...) at sent or received got a 2xx final response in
// at's capture, naming each 481.
func checkInDialogAnswered(t testing.TB, msgs []WireSIP, at Endpoint) {
	t.Helper()
	ip := netip.MustParseAddr(at.IP)
	reqs := distinct(msgs, func(m WireSIP) bool {
		return m.Method != "" && m.Method != "ACK" && hasToTag(m) && (m.Src.Addr() == ip || m.Dst.Addr() == ip)
	})
	if len(reqs) == 0 {
		t.Errorf("%s: no in-dialog request in its capture", at.Name)
	}
	for _, req := range reqs {
		res, ok := FirstSIP(msgs, func(m WireSIP) bool {
			return m.Code >= 200 && m.CallID == req.CallID && m.CSeq == req.CSeq && m.Src == req.Dst
		})
		dir := "sent"
		if req.Dst.Addr() == ip {
			dir = "received"
		}
		switch {
		case !ok:
			t.Errorf("%s %s %q [%s] and saw no final response", at.Name, dir, req.First, req.CSeq)
		case res.Code == 481:
			t.Errorf("%s %s %q [%s]: answered %q (the dialog's tags did not match)", at.Name, dir, req.First, req.CSeq, res.First)
		case res.Code >= 300:
			t.Errorf("%s %s %q [%s]: answered %q, want 2xx", at.Name, dir, req.First, req.CSeq, res.First)
		}
	}
}

// checkRealAudio asserts the RTP (PT 8) that reached at in [from, to): it
// came from m's address and only from addresses an SDP announced to at, and
// each stream (SSRC) delivered >= 99 % of its sequence-number span (what
// the sender sent in the window), at least realAudioMin packets in all. A
// capture that dropped packets may account for that many missing.
func checkRealAudio(t *testing.T, pkts []Packet, msgs []WireSIP, at Endpoint, m realMedia, dropped int, from, to time.Time, phase string) {
	t.Helper()
	if to.IsZero() || !to.After(from) {
		t.Errorf("%s %s: no audio window (from %v to %v)", at.Name, phase, from, to)
		return
	}
	announced := AnnouncedTo(msgs, at.IP)
	src := netip.MustParseAddr(m.SrcIP)
	for a := range announced {
		if a.Addr() != src || (m.PortMin != 0 && (int(a.Port()) < m.PortMin || int(a.Port()) > m.PortMax)) {
			t.Errorf("%s was told to send RTP to %s; want %s (ports %d-%d)", at.Name, a, m.SrcIP, m.PortMin, m.PortMax)
		}
	}
	type span struct {
		n          int
		first, max uint32 // extended sequence numbers
		last       uint16
		src        netip.AddrPort
		seen       map[uint32]bool
		dups       int
	}
	spans := map[uint32]*span{}
	foreign := map[netip.AddrPort]int{}
	defer func() {
		for a, n := range foreign {
			t.Errorf("%s %s: %d RTP packets from %s, which no SDP announced to it (a lost pinhole race moves the public port)", at.Name, phase, n, a)
		}
	}()
	audio := 0
	// telephone-event packets share the stream's SSRC and sequence numbers
	evPT := eventPT(msgs)
	rtp := func(p Packet) bool { h, ok := ParseRTP(p.Payload); return ok && (h.PT == PTPCMA || h.PT == evPT) }
	for _, p := range Select(pkts, To(at.IP), rtp, Between(from, to)) {
		h, _ := ParseRTP(p.Payload)
		if h.PT == PTPCMA {
			audio++
		}
		if !announced[p.Src] {
			foreign[p.Src]++
		}
		s := spans[h.SSRC]
		if s == nil {
			s = &span{first: 1 << 16, max: 1 << 16, last: h.Seq, src: p.Src, seen: map[uint32]bool{}}
			spans[h.SSRC] = s
		}
		ext := s.max + uint32(int16(h.Seq-s.last))
		s.last = h.Seq
		s.max = max(s.max, ext)
		s.first = min(s.first, ext)
		// RFC 4733 repeats an event's end packet with its sequence number
		if s.seen[ext] {
			if h.PT == PTPCMA {
				s.dups++
			}
			continue
		}
		s.seen[ext] = true
		s.n++
	}
	total, missing := 0, 0
	var lines []string
	for ssrc, s := range spans {
		want := int(s.max-s.first) + 1
		total += s.n
		lines = append(lines, fmt.Sprintf("SSRC %08x from %s: %d of %d (PT 8 and 101)", ssrc, s.src, s.n, want))
		if s.dups > 0 {
			t.Errorf("%s %s: SSRC %08x delivered %d audio packets twice", at.Name, phase, ssrc, s.dups)
		}
		if s.n < MinDelivered(want) {
			missing += want - s.n
		}
	}
	switch {
	case audio < realAudioMin:
		t.Errorf("%s %s: %d RTP packets (PT 8) from %s, want >= %d: %v", at.Name, phase, audio, m.SrcIP, realAudioMin, lines)
	case missing > dropped:
		t.Errorf("%s %s: streams lost more than 1 %% (%d packets missing, the capture dropped %d): %v", at.Name, phase, missing, dropped, lines)
	default:
		t.Logf("%s %s: %v", at.Name, phase, lines)
	}
}

// checkRealDTMF asserts that the digits of realDigits reached at as RFC
// 4733 events (the telephone-event PT of the SDP) from srcIP, in order,
// each with its end packet.
func checkRealDTMF(t *testing.T, pkts []Packet, msgs []WireSIP, at Endpoint, srcIP string) {
	t.Helper()
	var got []int
	ends := map[int]int{}
	for _, p := range Select(pkts, To(at.IP), From(srcIP), RTPWithPT(eventPT(msgs))) {
		h, _ := ParseRTP(p.Payload)
		if len(h.Body) < 4 {
			t.Errorf("%s: telephone-event packet with %d bytes", at.Name, len(h.Body))
			continue
		}
		ev := int(h.Body[0])
		if len(got) == 0 || got[len(got)-1] != ev {
			got = append(got, ev)
		}
		if h.Body[1]&0x80 != 0 {
			ends[ev]++
		}
	}
	var want []int
	for _, d := range realDigits {
		want = append(want, digitEvent(d))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s got the RFC 4733 events %v from %s, want %v", at.Name, got, srcIP, want)
	}
	for _, ev := range want {
		if ends[ev] == 0 {
			t.Errorf("%s got no end packet of event %d", at.Name, ev)
		}
	}
}

// sipFlow is a capture's SIP, one line per message, for failure logs.
func sipFlow(msgs []WireSIP) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "  %s %s -> %s %s [%s] from-tag %s to-tag %s\n", m.T.Format("15:04:05.000"), m.Src, m.Dst, m.First, m.CSeq, tagOf(m, "From", "f"), tagOf(m, "To", "t"))
	}
	return b.String()
}

// ---- the parties of the lab ----

// The phone: linphone at 198.51.100.70:5060, RTP on 30000.
func startPhone(t *testing.T, l *Lab) *lpParty {
	lp := l.StartLinphone(t, LinphoneSpec{Name: "phone", NS: NSPhone, IP: PhoneIP, Port: 5060, RTPPort: 30000, AutoAnswer: true})
	return &lpParty{lp: lp, e: Endpoint{Name: "phone", NS: NSPhone, IP: PhoneIP, Port: 5060}}
}

func startBaresipParty(t *testing.T, l *Lab, e Endpoint, spec BaresipSpec) *bsParty {
	spec.Name, spec.NS, spec.IP, spec.Port = e.Name, e.NS, e.IP, e.Port
	return &bsParty{b: l.StartBaresip(t, spec), e: e}
}

// realScenarios: hold from one side, hang-up from the other, and the
// other way round; together hold and hang-up from either side.
var realScenarios = []struct {
	name                   string
	holdByCaller, hangCall bool
}{
	{"caller-holds-callee-hangs-up", true, false},
	{"callee-holds-caller-hangs-up", false, true},
}

func (c *realCall) roles(holdByCaller, hangByCaller bool) {
	c.holder, c.hanger = c.callee, c.callee
	if holdByCaller {
		c.holder = c.caller
	}
	if hangByCaller {
		c.hanger = c.caller
	}
}

// TestRealUALabScenarios proves the real UAs and the harness through
// Kamailio without the daemon: a baresip authenticating as the trunk
// (198.51.100.60) calls linphone at the phone, and linphone calls the DID,
// which Kamailio relays to a baresip registered as the trunk
// (198.51.100.60:5060). Each call: audio both ways, DTMF both ways, hold and
// resume, hang-up, every in-dialog request answered 200. If this fails, a
// TestRealUACall… failure says nothing about the daemon.
func TestRealUALabScenarios(t *testing.T) {
	t.Parallel()
	trunkCaller := Endpoint{Name: "trunkhost", NS: NSSTUN, IP: STUN1IP, Port: 5070}
	// baresip takes the first address of its interface (.60) for media
	// whatever sip_listen says: the registered trunk host is .60 too.
	trunkCallee := Endpoint{Name: "trunkhost", NS: NSSTUN, IP: STUN1IP, Port: 5060}
	trunkAccount := BaresipSpec{AOR: "sip:" + TrunkUser + "@" + SIPDomain, Password: TrunkPass, Outbound: "sip:" + ProviderAddr}
	t.Run("trunk-to-phone", func(t *testing.T) {
		t.Parallel()
		l := newLab(t)
		for _, sc := range realScenarios {
			t.Run(sc.name, func(t *testing.T) {
				phone := startPhone(t, l)
				host := startBaresipParty(t, l, trunkCaller, trunkAccount)
				c := &realCall{caller: host, callee: phone, target: "sip:" + PhoneNumber + "@" + SIPDomain,
					media:   map[string]realMedia{"phone": {SrcIP: STUN1IP}, "trunkhost": {SrcIP: PhoneIP}},
					capture: []string{NSSTUN, NSPhone}}
				c.roles(sc.holdByCaller, sc.hangCall)
				c.run(t, l)
			})
		}
	})
	t.Run("phone-to-trunk", func(t *testing.T) {
		t.Parallel()
		l := newLab(t)
		for _, sc := range realScenarios {
			t.Run(sc.name, func(t *testing.T) {
				spec := trunkAccount
				spec.Register, spec.AutoAnswer = true, true
				host := startBaresipParty(t, l, trunkCallee, spec)
				// (REGISTER_OK may come before the control connection: ctrl_tcp
				// sends events only to a connected client.)
				if _, err := l.WaitKamailioContact(TrunkUser, 10*time.Second, func(c ULContact) bool { return c.Received == STUN1IP+":5060" }); err != nil {
					t.Fatal(err)
				}
				phone := startPhone(t, l)
				c := &realCall{caller: phone, callee: host, target: "sip:" + DID + "@" + ProviderIP,
					media:   map[string]realMedia{"phone": {SrcIP: STUN1IP}, "trunkhost": {SrcIP: PhoneIP}},
					capture: []string{NSSTUN, NSPhone}}
				c.roles(sc.holdByCaller, sc.hangCall)
				c.run(t, l)
			})
		}
	})
}

// realRelay is what reaches each party through the daemon.
func realRelay() map[string]realMedia {
	ph, pbx := relayAudio(PhoneCallee), relayAudio(PBXCallee)
	return map[string]realMedia{
		"phone": {SrcIP: ph.SrcIP, PortMin: ph.PortMin, PortMax: ph.PortMax},
		"pbx":   {SrcIP: pbx.SrcIP, PortMin: pbx.PortMin, PortMax: pbx.PortMax},
	}
}

// The PBX's account: the DID as user, so that baresip takes the daemon's
// INVITE to sip:DID@192.168.100.20 (it matches the Request-URI user).
var pbxAccount = BaresipSpec{AOR: "sip:" + DID + "@" + PBXIP}

// TestRealUACallOutbound: baresip as the PBX calls linphone at the phone
// through the daemon and Kamailio.
//
// Here the router forwards the RTP pool (the optional port forward
// `linkmanager firewall` prints). linphone starts RTP ~0.4 ms after its
// 200, before the 200 reaches the daemon through the provider: on a plain
// NAT its first packet wins the race against the daemon's pinhole
// (nat-findings 4). TestNATRaceRealUAOutbound runs the same calls without
// the forward, where the daemon must repair that.
func TestRealUACallOutbound(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	if err := l.ForwardRTPPool(); err != nil {
		t.Fatal(err)
	}
	realUAOutbound(t, l)
	stopDaemon(t, d)
}

// TestRealUACallInbound: linphone at the phone calls the DID; the daemon
// sends the call to baresip as the PBX.
func TestRealUACallInbound(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{})
	for _, sc := range realScenarios {
		t.Run(sc.name, func(t *testing.T) {
			spec := pbxAccount
			spec.AutoAnswer = true
			pbx := startBaresipParty(t, l, PBXCallee, spec)
			phone := startPhone(t, l)
			c := &realCall{caller: phone, callee: pbx, target: "sip:" + DID + "@" + ProviderIP,
				media: realRelay(), capture: []string{NSPBX, NSPhone, NSLM}}
			c.roles(sc.holdByCaller, sc.hangCall)
			c.run(t, l)
		})
	}
	stopDaemon(t, d)
}
