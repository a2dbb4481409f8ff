//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRedialDuringCall (issue 9 item 9): baresip as the PBX calls linphone
// at the phone through the daemon, and the router redials to a new public
// IP in the middle of the call. The remote's RTP to the SDP's old address
// is dropped at the router from then on, so before the fix the PBX heard
// nothing for the rest of the call. Now the daemon re-registers, then
// re-INVITEs the provider leg with the new address; linphone follows, and
// its audio reaches the PBX again within 2 s of the re-registration.
func TestRedialDuringCall(t *testing.T) {
	t.Parallel()
	l, d := callLab(t, DaemonConfig{Interval: "10s", LogLevel: "info"})
	// The forward keeps linphone's early RTP from racing the pinhole
	// (that is TestNATRaceRealUAOutbound's business).
	if err := l.ForwardRTPPool(); err != nil {
		t.Fatal(err)
	}
	phone := startPhone(t, l)
	pbx := startBaresipParty(t, l, PBXCaller, pbxAccount)
	capPBX, capPhone := l.StartCapture(NSPBX, "eth0", "udp"), l.StartCapture(NSPhone, "eth0", "udp")
	// rtpAt counts PT 8 packets to at's IP from src since from.
	rtpAt := func(c *Capture, at, src string, from time.Time) []Packet {
		pkts, _ := ReadPcap(c.Path)
		return Select(pkts, To(at), From(src), RTPWithPT(PTPCMA), Between(from, time.Time{}))
	}
	await := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !cond() {
			if time.Now().After(deadline) {
				pkts, _ := ReadPcap(capPhone.Path)
				t.Fatalf("%s: not within %v\nSIP at the phone:\n%s\n%s\n%s", what, timeout, sipFlow(SIPMessages(pkts)), phone.log(), pbx.log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	start := time.Now()
	if err := pbx.dial("sip:" + PhoneNumber + "@" + DaemonIP + ":5060"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []party{pbx, phone} {
		if err := p.established(20 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := phone.startAudio(); err != nil {
		t.Fatal(err)
	}
	await("audio both ways before the redial", 15*time.Second, func() bool {
		return len(rtpAt(capPBX, PBXIP, DaemonIP, start)) >= 50 && len(rtpAt(capPhone, PhoneIP, WANIP1, start)) >= 50
	})

	redial := time.Now()
	if err := l.Redial(WANIP2); err != nil {
		t.Fatal(err)
	}
	e := d.WaitLog(t, 20*time.Second, func(e map[string]any) bool {
		return e["msg"] == "registered" && strings.Contains(Field(e, "contact"), WANIP2+":")
	})
	reg := time.Now()
	t.Logf("re-registered %v after the redial: %v", reg.Sub(redial).Round(time.Millisecond), Field(e, "contact"))
	d.WaitLog(t, 15*time.Second, Msg("public IP changed: re-INVITEd live calls"))

	// The phone got a re-INVITE naming the new address, and its audio
	// reaches the PBX again; the relay's audio reaches it from the new IP.
	await("a re-INVITE with the new address at the phone", 10*time.Second, func() bool {
		pkts, _ := ReadPcap(capPhone.Path)
		for _, m := range SIPMessages(pkts) {
			if m.Method == "INVITE" && hasToTag(m) && m.T.After(redial) && strings.Contains(m.Body(), "c=IN IP4 "+WANIP2) {
				return true
			}
		}
		return false
	})
	await("audio from the phone at the PBX after the re-registration", 10*time.Second, func() bool {
		return len(rtpAt(capPBX, PBXIP, DaemonIP, reg)) >= 50
	})
	first := rtpAt(capPBX, PBXIP, DaemonIP, reg)[0].T
	resumed := first.Sub(reg)
	t.Logf("the PBX hears the phone again %v after the re-registration (%v after the redial)", resumed.Round(time.Millisecond), first.Sub(redial).Round(time.Millisecond))
	if resumed > 2*time.Second {
		t.Errorf("audio resumed %v after the re-registration, want <= 2 s", resumed)
	}
	await("the relay's audio at the phone from the new IP", 10*time.Second, func() bool {
		return len(rtpAt(capPhone, PhoneIP, WANIP2, redial)) >= 50
	})

	if err := pbx.hangup(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []party{pbx, phone} {
		if err := p.ended(15 * time.Second); err != nil {
			t.Error(fmt.Errorf("after the hang-up: %w", err))
		}
	}
	capPBX.Stop()
	capPhone.Stop()
	stopDaemon(t, d)
}
