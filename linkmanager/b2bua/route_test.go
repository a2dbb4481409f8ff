package b2bua

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Item 6: in-dialog requests follow the route set and the remote target
// (RFC 3261 §12.2.1.1), not the address the INVITE went to.
const (
	proxyIP   = "127.0.0.10" // the provider's record-routing proxy
	phoneIP   = "127.0.0.11" // the provider's user agent, reached directly
	farIP     = "127.0.0.12" // a proxy further on; never reached
	outsideIP = "127.0.0.13" // an address the trunk does not allow
)

func prefixes(ips ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, ip := range ips {
		out = append(out, netip.PrefixFrom(netip.MustParseAddr(ip), 32))
	}
	return out
}

// serving is an agent on ip that runs until the test ends.
func serving(t *testing.T, ip string) *agent {
	a := newAgent(t, ip)
	a.serve(t)
	return a
}

func uriOf(a netip.AddrPort, params ...string) sip.Uri {
	u := sip.Uri{Scheme: "sip", Host: a.Addr().String(), Port: int(a.Port()), UriParams: sip.NewParams()}
	for _, p := range params {
		u.UriParams.Add(p, "")
	}
	return u
}

// answering answers a new INVITE at once with 200, SDP and extra
// (Contact, Record-Route): the callee the test's route set names.
func answering(t *testing.T, a *agent, extra ...sip.Header) sipgo.RequestHandler {
	return func(req *sip.Request, tx sip.ServerTransaction) {
		if req.To().Params.Has("tag") {
			respond(t, tx, req, 200, "OK", "", sdpOf(a.addr.Addr().String(), 30004))
			return
		}
		respond(t, tx, req, 200, "OK", "callee", sdpOf(a.addr.Addr().String(), 30004), extra...)
	}
}

func contactAt(a netip.AddrPort) *sip.ContactHeader {
	u := uriOf(a)
	u.User = "callee"
	return &sip.ContactHeader{Address: u}
}

func recordRoute(u sip.Uri) *sip.RecordRouteHeader { return &sip.RecordRouteHeader{Address: u} }

// routed checks a request we sent: its Request-URI and Route headers, by
// host and port.
func routed(t *testing.T, req *sip.Request, ruri sip.Uri, routes ...sip.Uri) {
	t.Helper()
	hostPort := func(u sip.Uri) string { return fmt.Sprintf("%s:%d", u.Host, u.Port) }
	if got, want := hostPort(req.Recipient), hostPort(ruri); got != want {
		t.Errorf("%s Request-URI %s, want %s", req.Method, req.Recipient.String(), want)
	}
	var got []string
	for _, h := range req.GetHeaders("Route") {
		if r, ok := h.(*sip.RouteHeader); ok {
			got = append(got, hostPort(r.Address))
		}
	}
	var want []string
	for _, r := range routes {
		want = append(want, hostPort(r))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s Route %v, want %v", req.Method, got, want)
	}
}

// The provider's 2xx brings a route set of two loose routers and a
// Contact elsewhere: our ACK, a relayed re-INVITE and the BYE go to the
// proxy nearest us (Record-Route reversed, RFC 3261 §12.1.2), with the
// remote target as Request-URI and the whole set as Route; the address
// the INVITE went to hears nothing of them.
func TestRouteSetOfTheAnswer(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{allow: prefixes(proxyIP, phoneIP)})
	proxy, phone := serving(t, proxyIP), serving(t, phoneIP)
	near, far := uriOf(proxy.addr, "lr"), uriOf(netip.MustParseAddrPort(farIP+":5060"), "lr")
	contact := contactAt(phone.addr)
	// Record-Route in a response: the proxy nearest the callee on top.
	h.prov.on(sip.INVITE, answering(t, h.prov, recordRoute(far), recordRoute(near), contact))
	u := h.pbx.call(h.lan.addr, "4930123456", sdpOf(pbxIP, 20000))
	if res, _ := u.final(); res.StatusCode != 200 {
		t.Fatalf("call answered %d", res.StatusCode)
	}
	u.ack()
	h.prov.next(sip.INVITE)
	routed(t, proxy.next(sip.ACK), contact.Address, near, far)

	if res := u.do(sip.INVITE, 20, sdpOf(pbxIP, 20002)); res.StatusCode != 200 {
		t.Fatalf("re-INVITE answered %d", res.StatusCode)
	}
	routed(t, proxy.next(sip.INVITE), contact.Address, near, far)
	routed(t, proxy.next(sip.ACK), contact.Address, near, far)

	if res := u.do(sip.BYE, 21, nil); res.StatusCode != 200 {
		t.Fatalf("BYE answered %d", res.StatusCode)
	}
	routed(t, proxy.next(sip.BYE), contact.Address, near, far)
	h.awaitEnded()
	if got := len(h.prov.received(sip.BYE)) + len(h.prov.received(sip.ACK)) + len(phone.received(sip.BYE)); got != 0 {
		t.Errorf("%d in-dialog requests bypassed the route set", got)
	}
	if n := h.b.Snapshot().RouteFallbacks; n != 0 {
		t.Errorf("%d requests fell back to the next hop; the route set is trusted", n)
	}
}

// A provider's INVITE brings its route set: Record-Route as received is
// the UAS's (RFC 3261 §12.1.1), so our BYE goes to the topmost.
func TestRouteSetOfTheRequest(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{allow: prefixes(proxyIP)})
	proxy := serving(t, proxyIP)
	near, far := uriOf(proxy.addr, "lr"), uriOf(netip.MustParseAddrPort(farIP+":5060"), "lr")
	h.pbx.on(sip.INVITE, answering(t, h.pbx, contactAt(h.pbx.addr)))
	u := h.prov.call(h.wan.addr, "4930123456", sdpOf(provIP, 20000), recordRoute(near), recordRoute(far))
	if res, _ := u.final(); res.StatusCode != 200 {
		t.Fatalf("call answered %d", res.StatusCode)
	}
	u.ack()
	in := &inDialog{a: h.pbx, inv: h.pbx.next(sip.INVITE), tag: "callee", cseq: 100, remote: h.lan.addr}
	h.pbx.next(sip.ACK)
	if res := in.do(sip.BYE, nil); res.StatusCode != 200 {
		t.Fatalf("BYE answered %d", res.StatusCode)
	}
	routed(t, proxy.next(sip.BYE), u.inv.Contact().Address, near, far)
	h.awaitEnded()
	if got := h.prov.received(sip.BYE); len(got) != 0 {
		t.Errorf("the BYE bypassed the route set: %d at the INVITE's source", len(got))
	}
}

// Without a route set the remote target is the next hop: the ACK and BYE
// go to the 2xx's Contact, and after a re-INVITE from a new address, to
// the Contact of that re-INVITE (a target refresh, RFC 3261 §12.2.2).
func TestRemoteTarget(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{allow: prefixes(phoneIP, proxyIP)})
	phone, moved := serving(t, phoneIP), serving(t, proxyIP)
	contact := contactAt(phone.addr)
	h.prov.on(sip.INVITE, answering(t, h.prov, contact))
	u := h.pbx.call(h.lan.addr, "4930123456", sdpOf(pbxIP, 20000))
	if res, _ := u.final(); res.StatusCode != 200 {
		t.Fatalf("call answered %d", res.StatusCode)
	}
	u.ack()
	in := &inDialog{a: h.prov, inv: h.prov.next(sip.INVITE), tag: "callee", cseq: 100, remote: h.wan.addr}
	routed(t, phone.next(sip.ACK), contact.Address)

	// The callee moved: its re-INVITE comes from, and names, another
	// address.
	e := in.callee()
	e.a = moved
	if res := e.do(sip.INVITE, sdpOf(proxyIP, 30006), nil); res.StatusCode != 200 {
		t.Fatalf("re-INVITE answered %d", res.StatusCode)
	}
	if res := u.do(sip.BYE, 20, nil); res.StatusCode != 200 {
		t.Fatalf("BYE answered %d", res.StatusCode)
	}
	routed(t, moved.next(sip.BYE), uriOf(moved.addr))
	h.awaitEnded()
	if got := len(phone.received(sip.BYE)) + len(h.prov.received(sip.BYE)); got != 0 {
		t.Errorf("%d BYEs went to the old target", got)
	}
}

// A strict router first in the route set (no ;lr, RFC 2543): it is the
// Request-URI, and the remote target is the last Route (RFC 3261
// §12.2.1.1).
func TestStrictRouter(t *testing.T) {
	h := newHarnessWith(t, trunkOptions{allow: prefixes(proxyIP, phoneIP)})
	proxy := serving(t, proxyIP)
	strict := uriOf(proxy.addr)
	contact := contactAt(netip.MustParseAddrPort(phoneIP + ":5060"))
	h.prov.on(sip.INVITE, answering(t, h.prov, recordRoute(strict), contact))
	u := h.pbx.call(h.lan.addr, "4930123456", sdpOf(pbxIP, 20000))
	if res, _ := u.final(); res.StatusCode != 200 {
		t.Fatalf("call answered %d", res.StatusCode)
	}
	u.ack()
	routed(t, proxy.next(sip.ACK), strict, contact.Address)
	if res := u.do(sip.BYE, 20, nil); res.StatusCode != 200 {
		t.Fatalf("BYE answered %d", res.StatusCode)
	}
	routed(t, proxy.next(sip.BYE), strict, contact.Address)
	h.awaitEnded()
}

// A route set or Contact naming an address the side does not trust is
// not followed: the request goes to the dialog's first hop, and is
// counted. The provider's Contact may name anyone, a LAN host included;
// the PBX's, a phone that is not in pbx.allow.
func TestUntrustedTarget(t *testing.T) {
	for _, tc := range []struct {
		name     string
		outbound bool   // the PBX calls; else the provider does and the PBX answers
		stranger string // where the answer points
		headers  func(h *harness, stranger netip.AddrPort) []sip.Header
	}{
		{"provider contact", true, outsideIP, func(h *harness, s netip.AddrPort) []sip.Header {
			return []sip.Header{contactAt(s)}
		}},
		{"provider route set", true, outsideIP, func(h *harness, s netip.AddrPort) []sip.Header {
			return []sip.Header{recordRoute(uriOf(s, "lr")), contactAt(h.prov.addr)}
		}},
		{"pbx contact", false, strangerIP, func(h *harness, s netip.AddrPort) []sip.Header {
			return []sip.Header{contactAt(s)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessWith(t, trunkOptions{allow: prefixes(proxyIP)})
			stranger := serving(t, tc.stranger)
			caller, callee, dst := h.pbx, h.prov, h.lan.addr
			if !tc.outbound {
				caller, callee, dst = h.prov, h.pbx, h.wan.addr
			}
			callee.on(sip.INVITE, answering(t, callee, tc.headers(h, stranger.addr)...))
			u := caller.call(dst, "4930123456", sdpOf(caller.addr.Addr().String(), 20000))
			if res, _ := u.final(); res.StatusCode != 200 {
				t.Fatalf("call answered %d", res.StatusCode)
			}
			u.ack()
			callee.next(sip.INVITE)
			callee.next(sip.ACK)
			if res := u.do(sip.BYE, 20, nil); res.StatusCode != 200 {
				t.Fatalf("BYE answered %d", res.StatusCode)
			}
			callee.next(sip.BYE)
			h.awaitEnded()
			if got := len(stranger.received(sip.ACK)) + len(stranger.received(sip.BYE)); got != 0 {
				t.Errorf("%d requests sent where the untrusted answer pointed", got)
			}
			if n := h.b.Snapshot().RouteFallbacks; n != 2 {
				t.Errorf("%d fallbacks counted, want 2 (ACK, BYE)", n)
			}
		})
	}
}

// A name in the route set is looked up (RFC 3263) with Config.Resolve;
// one that does not resolve goes to the first hop, counted.
func TestRouteByName(t *testing.T) {
	proxy := serving(t, proxyIP)
	h := newHarnessWith(t, trunkOptions{allow: prefixes(proxyIP)}, func(c *Config) {
		c.Resolve = func(ctx context.Context, host string, port int) ([]netip.AddrPort, error) {
			if host == "sbc.provider.test" && port == 0 {
				return []netip.AddrPort{proxy.addr}, nil
			}
			return nil, fmt.Errorf("%s: no such host", host)
		}
	})
	byName := sip.Uri{Scheme: "sip", Host: "sbc.provider.test", UriParams: sip.NewParams()}
	byName.UriParams.Add("lr", "")
	h.prov.on(sip.INVITE, answering(t, h.prov, recordRoute(byName), contactAt(h.prov.addr)))
	u := h.pbx.call(h.lan.addr, "4930123456", sdpOf(pbxIP, 20000))
	if res, _ := u.final(); res.StatusCode != 200 {
		t.Fatalf("call answered %d", res.StatusCode)
	}
	u.ack()
	h.prov.next(sip.INVITE)
	routed(t, proxy.next(sip.ACK), uriOf(h.prov.addr), byName)
	if res := u.do(sip.BYE, 20, nil); res.StatusCode != 200 {
		t.Fatalf("BYE answered %d", res.StatusCode)
	}
	proxy.next(sip.BYE)
	h.awaitEnded()
	if n := h.b.Snapshot().RouteFallbacks; n != 0 {
		t.Errorf("%d fallbacks counted, want 0", n)
	}
}
