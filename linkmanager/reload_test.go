package linkmanager

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/config"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
)

func TestReloadKeepsCallsAndAppliesChanges(t *testing.T) {
	prov := startFakeProvider(t)
	srv, lan := startB2BUA(t, prov)
	pbx := listenOn(t, pbxIP)
	pAddr := pbx.LocalAddr().(*net.UDPAddr).AddrPort()

	// A call is up across the reload.
	if _, err := pbx.WriteToUDPAddrPort([]byte(pbxInvite(pAddr, "0301234567", "kept")), lan); err != nil {
		t.Fatal(err)
	}
	final, _ := readFinal(t, pbx)
	if !strings.HasPrefix(final, "SIP/2.0 200") {
		t.Fatalf("call before reload: %q", firstLine(final))
	}
	registersBefore := len(prov.received("REGISTER"))

	tr := trunk.Options{Name: "provider", Host: wanIP, Port: prov.port(), Domain: "sip.provider.test",
		Username: "4930123456", Password: "rotated", Expires: 300 * time.Second, Register: true,
		Keepalive: config.KeepaliveOff, DIDs: []string{"4930123456"}}
	second := tr
	second.Name, second.Username = "second", "4930999"
	changed, err := srv.Reload(ReloadOptions{
		Trunks: []trunk.Options{tr, second},
		PBX: b2bua.PBXOptions{Addr: netip.MustParseAddrPort(pbxIP + ":5060"),
			Allow: []netip.Prefix{netip.MustParsePrefix(pbxIP + "/32"), netip.MustParsePrefix(strangerIP + "/32")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(changed, ",") != "trunk provider changed,trunk second added" {
		t.Errorf("changes = %v", changed)
	}
	await(t, "both trunks registered", func() bool {
		st := srv.Status()
		return len(st) == 2 && st[0].Registered && st[1].Registered
	})
	// The changed trunk handed its binding over: no Expires: 0 for it.
	for _, r := range prov.received("REGISTER")[registersBefore:] {
		if strings.Contains(r, "Expires: 0") {
			t.Errorf("reload unregistered the changed trunk:\n%s", firstLine(r))
		}
	}

	// The new allow-list is in force: 127.0.0.7 may call now.
	stranger := listenOn(t, strangerIP)
	sAddr := stranger.LocalAddr().(*net.UDPAddr).AddrPort()
	if _, err := stranger.WriteToUDPAddrPort([]byte(pbxInvite(sAddr, "0301234567", "nowallowed")), lan); err != nil {
		t.Fatal(err)
	}
	if res, _ := readFinal(t, stranger); strings.HasPrefix(res, "SIP/2.0 403") {
		t.Error("the reloaded allow-list was not applied")
	}

	// The call from before the reload still hangs up cleanly.
	bye := "BYE sip:0301234567@" + lan.String() + " SIP/2.0\r\nVia: SIP/2.0/UDP " + pAddr.String() + ";branch=z9hG4bKbyekept;rport\r\n" +
		"From: <sip:200@" + pbxIP + ">;tag=pbxkept\r\nTo: " + headerOf(final, "To") + "\r\nCall-ID: kept@" + pbxIP +
		"\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	byesBefore := len(prov.received("BYE"))
	if _, err := pbx.WriteToUDPAddrPort([]byte(bye), lan); err != nil {
		t.Fatal(err)
	}
	if res, _ := readFinal(t, pbx); !strings.HasPrefix(res, "SIP/2.0 200") {
		t.Errorf("BYE after reload answered %q; the call was lost", firstLine(res))
	}
	await(t, "the BYE at the provider", func() bool { return len(prov.received("BYE")) > byesBefore })

	// Removing a trunk unregisters it.
	before := len(prov.received("REGISTER"))
	if _, err := srv.Reload(ReloadOptions{Trunks: []trunk.Options{tr},
		PBX: b2bua.PBXOptions{Addr: netip.MustParseAddrPort(pbxIP + ":5060"), Allow: []netip.Prefix{netip.MustParsePrefix(pbxIP + "/32")}}}); err != nil {
		t.Fatal(err)
	}
	var unregistered bool
	for _, r := range prov.received("REGISTER")[before:] {
		unregistered = unregistered || (strings.Contains(r, "sip:4930999@") && strings.Contains(r, "Expires: 0"))
	}
	if !unregistered || len(srv.Status()) != 1 {
		t.Errorf("removed trunk: unregistered=%v, trunks now %d", unregistered, len(srv.Status()))
	}
}
