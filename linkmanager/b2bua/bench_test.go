package b2bua

import (
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/linkmanager/linkmanager/rtpbridge"
)

// BenchmarkCallSetup is one outbound call's whole life through the
// B2BUA and the real relay (issue 10 item 3): the PBX's INVITE, the
// provider's 200, both ACKs, the PBX's BYE and the provider's 200, each
// over loopback UDP through sipgo on both legs. One op is one call; the
// calls/s metric is the setup rate one caller at a time gets.
//
//	go test -run '^$' -bench CallSetup -benchmem ./linkmanager/b2bua/
func BenchmarkCallSetup(b *testing.B) {
	br, err := rtpbridge.New(rtpbridge.Config{
		LAN: &rtpbridge.Pool{Address: lanIP, MinPort: 21000, MaxPort: 22999},
		WAN: &rtpbridge.Pool{Address: wanIP, MinPort: 23000, MaxPort: 24999},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close() })
	h := newHarness(b, func(c *Config) { c.Media = bridgeMedia{br} })
	h.prov.on(sip.INVITE, func(req *sip.Request, tx sip.ServerTransaction) {
		respond(b, tx, req, 200, "OK", "prov", sdpOf(provIP, 30000))
	})
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		u := h.pbx.call(h.lan.addr, "0301234567", sdpOf(pbxIP, 20000))
		if final, _ := u.final(); final.StatusCode != 200 {
			b.Fatalf("call: %d", final.StatusCode)
		}
		u.ack()
		if res := u.do(sip.BYE, 2, nil); res.StatusCode != 200 {
			b.Fatalf("BYE: %d", res.StatusCode)
		}
		h.awaitEnded()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}
