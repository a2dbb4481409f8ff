package e2e

import (
	"testing"
	"time"
)

// Reliable provisional responses where the daemon is the UAS (issue 8
// item 5, RFC 3262): a caller whose INVITE Requires 100rel, in both
// directions of call, gets the callee's early media in a 183 with
// Require: 100rel and an RSeq, PRACKs it (sipp fails the scenario on a
// 183 without RSeq or a PRACK not answered 200), hears the early media
// before the 200 and gets the 200 after its PRACK. The old daemon
// answered such an INVITE 420.
//
// Each direction has its own lab, in parallel: the callee's early media
// alone takes 7.5 s.
func TestCallRequires100rel(t *testing.T) {
	t.Parallel()
	for _, dir := range []callDir{outbound, inbound} {
		t.Run(dir.name, func(t *testing.T) {
			t.Parallel()
			l, d := callLab(t, DaemonConfig{})
			r := placeCall(t, l, dir, "uac-100rel.xml", "uas-early.xml", time.Second, 0)
			defer r.ExplainOnFailure(t)
			requireCompleted(t, r, 200)
			checkLegs(t, r)
			p183, ok200 := checkEarlyMedia(t, r, dir)
			if req, rseq := p183.Header("Require"), p183.Header("RSeq"); len(req) != 1 || req[0] != "100rel" || len(rseq) != 1 {
				t.Errorf("the 183 to the %s is not reliable (Require %q, RSeq %q):\n%s", dir.caller.Name, req, rseq, p183.Text)
			}
			prack, ok := FirstSIP(r.SIPFrom(dir.caller), isRequest("PRACK"))
			switch {
			case !ok:
				t.Fatalf("the %s sent no PRACK", dir.caller.Name)
			case ok200.T.Before(prack.T):
				t.Errorf("the 200 reached the %s %v before its PRACK of the 183 with SDP", dir.caller.Name, prack.T.Sub(ok200.T))
			}
			requireDaemonQuiet(t, d)
			for _, e := range logsWith(d, "caller never acknowledged our reliable provisional response; failing the call") {
				t.Errorf("daemon gave up on a PRACK: %v", e)
			}
			stopDaemon(t, d)
		})
	}
}
