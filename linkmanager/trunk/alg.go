package trunk

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
)

// The SIP ALG detector (issue 11 item 2). A router that rewrites SIP
// breaks trunks silently; this compares what we sent with what the
// registrar echoes back.
//
// What Linux's ALG does, from net/netfilter/nf_nat_sip.c (and seen in the
// lab): on a NATed flow with the sip helper attached it rewrites every
// message in both directions. Going out, an address equal to our private
// address:port becomes the public one; coming back, an address equal to
// the NAT's public mapping (our Via sent-by and Contact, since we put the
// public address there) becomes the private address:port again: the top
// Via sent-by, its received= (and rport= when the port differs), and every
// Contact URI. So a response names our LAN address where we sent the
// public one. It keeps Content-Length right (it recomputes it after each
// SDP rewrite); sipgo drops a datagram whose body is shorter than its
// Content-Length before we see it, so that symptom of cruder ALGs is a
// timed-out transaction here, not an observation.
//
// A registrar must echo our Via unchanged (RFC 3261 §8.2.6.2) and lists
// our Contact as we registered it, so any difference is a middlebox's.

// ALG verdicts.
const (
	ALGUnknown  = "unknown"  // no response has shown either way yet
	ALGNone     = "none"     // responses come back as sent
	ALGDetected = "detected" // the router rewrites SIP
)

// algAfter is how many transactions in a row must agree before the
// verdict changes: one response alone, which anyone who can forge the
// provider's source address and guess a branch could send, never flips it.
// A REGISTER with digest is two transactions (401, then 200), so a real
// ALG is named at the first registration.
const algAfter = 2

// algAdvice is the admin's words for a detected ALG; fields says which
// headers came back rewritten.
func algAdvice(fields string) string {
	return "SIP ALG detected: the router rewrites SIP (" + fields +
		"); switch off 'SIP ALG' / 'SIP helper' / 'SIP passthrough' on the router"
}

// ALGStatus is one trunk's ALG verdict and its evidence.
type ALGStatus struct {
	Verdict  string    // ALGUnknown, ALGNone or ALGDetected
	Fields   string    // what the last rewritten response changed, e.g. "Via/Contact"
	Sent     string    // what we sent there
	Seen     string    // what came back instead
	Rewrites uint64    // responses that came back rewritten
	Since    time.Time // when the verdict last changed
	Advice   string    // set while detected: the log line's words
}

// algEvidence is what one response shows.
type algEvidence struct {
	via, contact bool   // the top Via (sent-by or received) or a Contact came back rewritten
	sent, seen   string // the first rewritten value: ours, and what came back
	branch       string // the transaction
	// conclusive: nothing rewritten, and the registrar saw us at
	// exactly our sent-by, the address Linux's ALG rewrites; so an ALG
	// of that kind would have shown.
	conclusive bool
}

func (e algEvidence) rewritten() bool { return e.via || e.contact }

func (e algEvidence) fields() string {
	switch {
	case e.via && e.contact:
		return "Via/Contact"
	case e.contact:
		return "Contact"
	}
	return "Via"
}

// inspect compares a response with the request it answers; lan is our
// own socket's address, which the provider never gets from us behind a
// NAT. It allocates only when something was rewritten.
func inspect(req *sip.Request, res *sip.Response, lan netip.AddrPort) algEvidence {
	var e algEvidence
	sv, rv := req.Via(), res.Via()
	if sv == nil {
		return e
	}
	e.branch, _ = sv.Params.Get("branch")
	if rv == nil {
		return e
	}
	// Behind a NAT we sent an address other than our socket's. The
	// probe's sent-by is a name: no address of ours for a router to
	// rewrite, so its answer tells nothing about the LAN address.
	sentBy, _ := netip.ParseAddr(sv.Host)
	behindNAT := lan.IsValid() && sentBy.IsValid() && sentBy.Unmap() != lan.Addr()
	if !strings.EqualFold(sv.Host, rv.Host) || sipPort(sv.Port) != sipPort(rv.Port) {
		e.via, e.sent, e.seen = true, hostPort(sv.Host, sv.Port), hostPort(rv.Host, rv.Port)
	} else if rec, ok := rv.Params.Get("received"); ok && behindNAT {
		// The registrar cannot see our LAN address behind a NAT: only
		// a router rewriting its answer writes it there.
		if a, err := netip.ParseAddr(rec); err == nil && a.Unmap() == lan.Addr() {
			e.via, e.sent, e.seen = true, "received of "+hostPort(sv.Host, sv.Port), rec
		}
	}
	if req.Method == sip.REGISTER && behindNAT {
		if c := lanContact(res, req, lan); c != "" {
			e.contact = true
			if !e.via {
				e.sent, e.seen = contactsOf(req), c
			}
		}
	}
	if !e.rewritten() && sentBy.IsValid() {
		seen := viaReceived(res)
		e.conclusive = seen.IsValid() && seen.Addr() == sentBy.Unmap() && int(seen.Port()) == sipPort(sv.Port)
	}
	return e
}

// lanContact is a Contact of res that names our LAN address when req did
// not; "" if none does.
func lanContact(res *sip.Response, req *sip.Request, lan netip.AddrPort) string {
	for _, h := range req.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok && uriIs(c.Address, lan) {
			return "" // we registered it ourselves
		}
	}
	for _, h := range res.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok && uriIs(c.Address, lan) {
			return hostPort(c.Address.Host, c.Address.Port)
		}
	}
	return ""
}

func contactsOf(req *sip.Request) string {
	if c, ok := req.GetHeader("Contact").(*sip.ContactHeader); ok {
		return hostPort(c.Address.Host, c.Address.Port)
	}
	return ""
}

// uriIs reports whether u's host:port is a (any port when a has none).
func uriIs(u sip.Uri, a netip.AddrPort) bool {
	ip, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	return err == nil && ip.Unmap() == a.Addr() && (a.Port() == 0 || sipPort(u.Port) == int(a.Port()))
}

func sipPort(p int) int {
	if p == 0 {
		return 5060
	}
	return p
}

func hostPort(host string, port int) string {
	return host + ":" + strconv.Itoa(sipPort(port))
}

// algDetector keeps one trunk's verdict. The registration and the
// keepalive both feed it, so it locks.
type algDetector struct {
	log *zap.Logger
	now func() time.Time

	mu      sync.Mutex
	st      ALGStatus // guarded by mu
	streak  int       // guarded by mu; transactions in a row that point away from the verdict
	against bool      // guarded by mu; which way the streak points: true, rewritten
	branch  string    // guarded by mu; the last transaction counted
}

func newALGDetector(log *zap.Logger) *algDetector {
	return &algDetector{log: log, now: time.Now, st: ALGStatus{Verdict: ALGUnknown}}
}

// status is a snapshot.
func (d *algDetector) status() ALGStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

// observe counts one response. Only rewritten and conclusive ones count;
// one transaction counts once.
func (d *algDetector) observe(e algEvidence) {
	if !e.rewritten() && !e.conclusive {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.branch != "" && e.branch == d.branch {
		return
	}
	d.branch = e.branch
	if e.rewritten() {
		d.st.Rewrites++
		d.st.Fields, d.st.Sent, d.st.Seen = e.fields(), e.sent, e.seen
		if d.st.Verdict == ALGDetected {
			d.st.Advice = algAdvice(d.st.Fields)
		}
	}
	want := ALGNone
	if e.rewritten() {
		want = ALGDetected
	}
	if d.st.Verdict == want {
		d.streak = 0
		return
	}
	if d.against != e.rewritten() {
		d.against, d.streak = e.rewritten(), 0
	}
	d.streak++
	if d.streak < algAfter {
		return
	}
	was := d.st.Verdict
	d.st.Verdict, d.st.Since, d.streak = want, d.now(), 0
	switch {
	case want == ALGDetected:
		d.st.Advice = algAdvice(d.st.Fields)
		d.log.Warn(d.st.Advice, zap.String("rewritten", d.st.Fields),
			zap.String("sent", d.st.Sent), zap.String("came_back", d.st.Seen), zap.Uint64("rewrites", d.st.Rewrites))
	case was == ALGDetected:
		d.st.Advice = ""
		d.log.Info("SIP ALG no longer detected: the registrar's answers come back as sent")
	default:
		d.log.Info("no SIP ALG: the registrar's answers come back as sent")
	}
}

// registrarSaw is where the registrar saw req come from (viaReceived),
// unless that is our LAN address while we sent another address: then a
// router rewrote the answer (Linux's ALG turns our public mapping back
// into the private address), and taking it would put the LAN address in
// our next Contact and SDP. The probe sends a name, which no ALG maps, so
// our own address in its answer means there is no NAT.
func registrarSaw(req *sip.Request, res *sip.Response, lan netip.AddrPort) netip.AddrPort {
	seen := viaReceived(res)
	if !seen.IsValid() || seen.Addr() != lan.Addr() {
		return seen
	}
	if sv := req.Via(); sv != nil {
		if a, err := netip.ParseAddr(sv.Host); err != nil || a.Unmap() == lan.Addr() {
			return seen // no address sent, or the LAN address ourselves: no NAT
		}
	}
	return netip.AddrPort{}
}
