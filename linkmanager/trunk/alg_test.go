package trunk

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/linkmanager/linkmanager/linkmanager/sipmsg"
	"github.com/linkmanager/linkmanager/stunkeeper"
)

// linuxALG wraps a registrar the way Linux's nf_nat_sip treats its answers
// on a NATed flow with the sip helper (net/netfilter/nf_nat_sip.c,
// reply direction): the top Via's sent-by, if it is the NAT's public
// mapping, becomes the private address:port, and with it received= (and
// rport= when the ports differ); every Contact URI equal to the mapping
// becomes the private address:port.
func linuxALG(do TxFunc, public, private netip.AddrPort) TxFunc {
	return func(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
		res, err := do(ctx, req, dst)
		if err != nil {
			return nil, err
		}
		if v := res.Via(); v != nil && uriIs(sip.Uri{Host: v.Host, Port: v.Port}, public) {
			v.Host, v.Port = private.Addr().String(), int(private.Port())
			if r, ok := v.Params.Get("received"); ok && r == public.Addr().String() {
				v.Params.Add("received", private.Addr().String())
			}
			if p, ok := v.Params.Get("rport"); ok && p == strconv.Itoa(int(public.Port())) {
				v.Params.Add("rport", strconv.Itoa(int(private.Port())))
			}
		}
		var cs []*sip.ContactHeader
		for _, h := range res.GetHeaders("Contact") {
			if c, ok := h.(*sip.ContactHeader); ok {
				cs = append(cs, c.Clone()) // the fake shares the request's
			}
		}
		for res.RemoveHeader("Contact") {
		}
		for _, c := range cs {
			if uriIs(c.Address, public) {
				c.Address.Host, c.Address.Port = private.Addr().String(), int(private.Port())
			}
			res.AppendHeader(c)
		}
		return res, nil
	}
}

// answer is a response to req as a registrar at natAddr's other side
// writes it, then edited by f.
func answer(req *sip.Request, f func(*sip.Response)) *sip.Response {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	res.Via().Params.Add("received", natAddr.Addr().String())
	res.Via().Params.Add("rport", strconv.Itoa(int(natAddr.Port())))
	for _, c := range req.GetHeaders("Contact") {
		res.AppendHeader(c.(*sip.ContactHeader).Clone())
	}
	if f != nil {
		f(res)
	}
	return res
}

func register(sentBy netip.AddrPort) *sip.Request {
	r := &registration{conf: Options{Username: "4930123456", Domain: "sip.provider.test"}, ua: "t"}
	return r.buildRegister(sentBy, netip.AddrPort{}, 300*time.Second)
}

func TestInspectResponses(t *testing.T) {
	probe := probeOptions(Options{Username: "4930123456", Domain: "sip.provider.test"}, 65002, "t")
	contact := func(host string) func(*sip.Response) {
		return func(res *sip.Response) {
			res.RemoveHeader("Contact")
			res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "4930123456", Host: host, Port: 65002}})
		}
	}
	for _, tc := range []struct {
		name                     string
		req                      *sip.Request
		edit                     func(*sip.Response)
		via, contact, conclusive bool
		seen                     string
	}{
		{name: "as sent", req: register(natAddr), conclusive: true},
		{name: "linux alg", req: register(natAddr), via: true, contact: true, seen: "192.168.100.2:65002", edit: func(res *sip.Response) {
			v := res.Via()
			v.Host = "192.168.100.2"
			v.Params.Add("received", "192.168.100.2")
			contact("192.168.100.2")(res)
		}},
		{name: "only received names the LAN", req: register(natAddr), via: true, seen: "192.168.100.2", edit: func(res *sip.Response) {
			res.Via().Params.Add("received", "192.168.100.2")
		}},
		{name: "only the contact", req: register(natAddr), contact: true, seen: "192.168.100.2:65002", edit: contact("192.168.100.2")},
		{name: "another ALG's port", req: register(natAddr), via: true, seen: "198.51.100.1:1024", edit: func(res *sip.Response) {
			res.Via().Port = 1024
		}},
		{name: "sent-by case is not a rewrite", req: register(natAddr), conclusive: true, edit: func(res *sip.Response) {
			res.Via().Host = strings.ToUpper(res.Via().Host)
		}},
		// Another phone on the same account: its binding is not ours and not a rewrite.
		{name: "another device's binding", req: register(natAddr), conclusive: true, edit: func(res *sip.Response) {
			res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "4930123456", Host: "203.0.113.9", Port: 5060}})
		}},
		// The probe names no address: clean, but it proves nothing about an ALG.
		{name: "probe", req: probe},
		// A stale sent-by (the NAT moved us): not what Linux's ALG matches.
		{name: "stale sent-by", req: register(netip.MustParseAddrPort("198.51.100.2:65002"))},
		// No NAT: the LAN address is our public one, and we sent it.
		{name: "no NAT", req: register(lanAddr), conclusive: true, edit: func(res *sip.Response) {
			res.Via().Params.Add("received", "192.168.100.2")
			res.Via().Params.Add("rport", "65002")
		}},
		// Hostile or broken answers: nothing to compare, no rewrite, no panic.
		{name: "no via", req: register(natAddr), edit: func(res *sip.Response) {
			for res.RemoveHeader("Via") {
			}
		}},
		{name: "received not an address", req: register(natAddr), edit: func(res *sip.Response) {
			res.Via().Params.Add("received", "<script>")
		}},
		{name: "contact host garbage", req: register(natAddr), conclusive: true, edit: func(res *sip.Response) {
			res.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Scheme: "sip", Host: "[::1"}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := inspect(tc.req, answer(tc.req, tc.edit), lanAddr)
			if e.via != tc.via || e.contact != tc.contact || e.conclusive != tc.conclusive {
				t.Errorf("via %v contact %v conclusive %v; want %v %v %v", e.via, e.contact, e.conclusive, tc.via, tc.contact, tc.conclusive)
			}
			if e.seen != tc.seen {
				t.Errorf("seen %q, want %q", e.seen, tc.seen)
			}
			if b, _ := tc.req.Via().Params.Get("branch"); e.branch != b {
				t.Errorf("branch %q, want %q", e.branch, b)
			}
		})
	}
}

// The verdict takes two transactions in a row: a single response, forged
// or not, never flips it either way, and a response retransmitted with
// the same branch counts once.
func TestALGVerdict(t *testing.T) {
	rewritten := func(b string) algEvidence {
		return algEvidence{via: true, contact: true, branch: b, sent: "198.51.100.1:65002", seen: "192.168.100.2:65002"}
	}
	clean := func(b string) algEvidence { return algEvidence{conclusive: true, branch: b} }
	inconclusive := func(b string) algEvidence { return algEvidence{branch: b} }
	for _, tc := range []struct {
		name  string
		seq   []algEvidence
		want  string
		warns int
	}{
		{"one rewrite", []algEvidence{rewritten("a")}, ALGUnknown, 0},
		{"two rewrites", []algEvidence{rewritten("a"), rewritten("b")}, ALGDetected, 1},
		{"same transaction twice", []algEvidence{rewritten("a"), rewritten("a")}, ALGUnknown, 0},
		{"interleaved", []algEvidence{rewritten("a"), clean("b"), rewritten("c"), clean("d")}, ALGUnknown, 0},
		{"two clean", []algEvidence{clean("a"), clean("b")}, ALGNone, 0},
		{"inconclusive answers prove nothing", []algEvidence{inconclusive("a"), inconclusive("b"), inconclusive("c")}, ALGUnknown, 0},
		{"one forged rewrite after clean", []algEvidence{clean("a"), clean("b"), rewritten("c"), clean("d")}, ALGNone, 0},
		{"one clean does not clear", []algEvidence{rewritten("a"), rewritten("b"), clean("c"), rewritten("d")}, ALGDetected, 1},
		{"switched off", []algEvidence{rewritten("a"), rewritten("b"), rewritten("c"), clean("d"), clean("e")}, ALGNone, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			d := newALGDetector(zap.New(core))
			for _, e := range tc.seq {
				d.observe(e)
			}
			st := d.status()
			if st.Verdict != tc.want {
				t.Errorf("verdict %q, want %q (%+v)", st.Verdict, tc.want, st)
			}
			if n := logs.FilterLevelExact(zap.WarnLevel).Len(); n != tc.warns {
				t.Errorf("%d warnings, want %d: %v", n, tc.warns, logs.All())
			}
			if tc.want == ALGDetected {
				const want = "SIP ALG detected: the router rewrites SIP (Via/Contact); switch off 'SIP ALG' / 'SIP helper' / 'SIP passthrough' on the router"
				if st.Advice != want || logs.FilterMessage(want).Len() != 1 {
					t.Errorf("advice %q, logs %v; want %q once", st.Advice, logs.All(), want)
				}
				if st.Sent != "198.51.100.1:65002" || st.Seen != "192.168.100.2:65002" {
					t.Errorf("evidence %q -> %q", st.Sent, st.Seen)
				}
			} else if st.Advice != "" {
				t.Errorf("advice %q while %s", st.Advice, st.Verdict)
			}
		})
	}
}

// registerAMinute runs a registration through do for a minute of fake
// time (inside synctest) and returns it with its log; stop ends it.
func registerAMinute(t *testing.T, do TxFunc, k *fakeKeeper) (*registration, *observer.ObservedLogs, func()) {
	t.Helper()
	conf := Options{Name: "provider", Domain: "sip.provider.test", Username: "4930123456",
		Password: "lab-secret", Expires: 300 * time.Second, Register: true}
	core, logs := observer.New(zap.InfoLevel)
	reg := newRegistration(conf, do, oneTarget(registrarAddr), k, lanAddr, zap.New(core))
	reg.jitter = func() float64 { return 0.5 }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.run(ctx) }()
	time.Sleep(time.Minute)
	synctest.Wait()
	return reg, logs, func() { cancel(); <-done }
}

// Behind Linux's ALG the registration names it, and keeps working: it
// never takes the rewritten (LAN) address as the public one, never puts it
// in a REGISTER, and reads its grant from the rewritten Contact. Before
// the detector the daemon re-registered with Contact 192.168.100.2 (seen
// in the lab).
func TestRegisterBehindLinuxALG(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr, Source: stunkeeper.SourceSTUN}
		f.extra = []sip.Header{sip.NewHeader("Expires", "600")} // wrong if the Contact's own is missed
		// the Contact's own grant, which the ALG's rewrite must not hide
		f.extra = append(f.extra, &sip.ContactHeader{Address: contactURI("4930123456", natAddr), Params: sipmsg.Params("expires", "120")})
		reg, logs, stop := registerAMinute(t, linuxALG(f.do, natAddr, lanAddr), k)
		defer stop()

		st := reg.Status()
		if st.ALG.Verdict != ALGDetected || st.ALG.Fields != "Via/Contact" || st.ALG.Seen != "192.168.100.2:65002" {
			t.Errorf("ALG status %+v, want detected from Via/Contact", st.ALG)
		}
		if logs.FilterMessageSnippet("SIP ALG detected").Len() != 1 {
			t.Errorf("want one SIP ALG line, got %v", logs.All())
		}
		if !st.Registered || st.Contact != natAddr || st.Expires != 120*time.Second {
			t.Errorf("status %+v: want registered at %v for the Contact's 120 s", st, natAddr)
		}
		if st.Public.IsValid() {
			t.Errorf("registrar's view %v: the rewritten address is no view of ours", st.Public)
		}
		for _, m := range k.observed {
			if m.Addr.Addr() == lanAddr.Addr() {
				t.Errorf("the keeper was told %v", m)
			}
		}
		reqs, _ := f.snapshot()
		if len(reqs) != 2 {
			t.Errorf("%d REGISTERs, want 2 (challenge, digest): no re-registration chasing the rewrite", len(reqs))
		}
		for _, r := range reqs {
			if strings.Contains(r.String(), "192.168.100.2") {
				t.Errorf("a REGISTER names the LAN address:\n%s", r)
			}
		}
	})
}

// The keepalive's OPTIONS feed the same verdict, and their rewritten
// received never reaches the registration as a new public address.
func TestKeepaliveOptionsBehindLinuxALG(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &keepaliveRig{}
		tr := r.trunk("options")
		tr.do = linuxALG(tr.do, natAddr, lanAddr)
		tr.reg.status.Contact = natAddr
		runFor(tr, 25*time.Second)
		if st := tr.Status(); st.ALG.Verdict != ALGDetected || st.ALG.Fields != "Via" {
			t.Errorf("after %d OPTIONS: ALG %+v, want detected from Via", r.sentOptions(), st.ALG)
		}
		select {
		case a := <-tr.reg.observed:
			t.Errorf("the registration was told %v", a)
		default:
		}
	})
}

// Without a NAT the registrar sees our socket's own address; the probe's
// answer and a REGISTER sent with it are taken as they are, and a probe
// answer naming the LAN address is no rewrite. Behind a NAT the LAN
// address is never taken.
func TestRegistrarSaw(t *testing.T) {
	probe := probeOptions(Options{Username: "4930123456", Domain: "sip.provider.test"}, 65002, "t")
	atLAN := func(res *sip.Response) {
		res.Via().Params.Add("received", lanAddr.Addr().String())
		res.Via().Params.Add("rport", strconv.Itoa(int(lanAddr.Port())))
	}
	for _, tc := range []struct {
		name string
		req  *sip.Request
		edit func(*sip.Response)
		want netip.AddrPort
	}{
		{"behind NAT", register(natAddr), nil, natAddr},
		{"ALG's rewrite", register(natAddr), atLAN, netip.AddrPort{}},
		{"probe, no NAT", probe, atLAN, lanAddr},
		{"probe, NAT", probe, nil, natAddr},
		{"no NAT", register(lanAddr), atLAN, lanAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := answer(tc.req, tc.edit)
			if got := registrarSaw(tc.req, res, lanAddr); got != tc.want {
				t.Errorf("registrarSaw = %v, want %v", got, tc.want)
			}
			if e := inspect(tc.req, res, lanAddr); e.rewritten() != !tc.want.IsValid() {
				t.Errorf("inspect rewritten %v", e.rewritten())
			}
		})
	}
}

// A forged answer that wins the race for one transaction (here the 401,
// rewritten as an ALG would) names no ALG: the next answer comes back as
// sent, and the registration neither believes the forged address nor
// stops trusting the registrar.
func TestRegisterOneForgedRewrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := newFakeRegistrar(t), &fakeKeeper{}
		k.public = &stunkeeper.Mapping{Addr: natAddr, Source: stunkeeper.SourceSTUN}
		forged := linuxALG(f.do, natAddr, lanAddr)
		n := 0
		do := func(ctx context.Context, req *sip.Request, dst netip.AddrPort) (*sip.Response, error) {
			if n++; n == 1 {
				return forged(ctx, req, dst)
			}
			return f.do(ctx, req, dst)
		}
		reg, logs, stop := registerAMinute(t, do, k)
		defer stop()
		st := reg.Status()
		if st.ALG.Verdict == ALGDetected || st.ALG.Rewrites != 1 || logs.FilterMessageSnippet("SIP ALG detected").Len() != 0 {
			t.Errorf("ALG %+v after one forged answer, want no verdict from it", st.ALG)
		}
		if !st.Registered || st.Contact != natAddr || st.Public != natAddr {
			t.Errorf("status %+v, want registered at %v as the registrar sees it", st, natAddr)
		}
	})
}
