package linkmanager

import (
	"context"

	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/linkmanager/linkmanager/linkmanager/admin"
)

func startAdmin(t *testing.T, srv *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := admin.New(srv, srv.Metrics(), nil)
	done := make(chan error, 1)
	go func() { done <- a.Serve(ln) }()
	t.Cleanup(func() {
		a.Shutdown(context.Background())
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// metricValue finds one sample in Prometheus text output; -1 if absent.
func metricValue(body, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestAdminAPI(t *testing.T) {
	prov := startFakeProvider(t)
	srv, lan := startB2BUA(t, prov)
	base := startAdmin(t, srv)

	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %s, want 200 once registered", code, body)
	}
	code, body := get(t, base+"/status")
	var st admin.Status
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("/status = %d %v: %s", code, err, body)
	}
	if len(st.Trunks) != 1 || !st.Trunks[0].Registered || st.Trunks[0].Contact == "" || st.Trunks[0].PublicSrc != "registrar" ||
		st.Ports == nil || st.Ports.WAN.Free != 100 || st.Ports.Capacity.Max != 100 || st.Ports.Capacity.Calls != 0 || st.Public == "" {
		t.Errorf("status = %+v", st)
	} else if a := st.Trunks[0].Addresses; a.Registrar != st.Trunks[0].Public || a.Contact != st.Trunks[0].Contact || !strings.HasPrefix(st.Public, a.SDP+":") {
		t.Errorf("trunk addresses %+v: want the registrar's view %s, Contact %s, SDP %s", a, st.Trunks[0].Public, st.Trunks[0].Contact, st.Public)
	}

	// Browsers are refused: DNS rebinding and cross-site requests.
	if code, _ := get(t, base+"/status", "Origin", "http://evil.example"); code != 403 {
		t.Errorf("request with Origin = %d, want 403", code)
	}
	if code, _ := get(t, base+"/status", "Host", "evil.example:9065"); code != 403 {
		t.Errorf("request for Host evil.example = %d, want 403", code)
	}

	_, before := get(t, base+"/metrics")
	for _, name := range []string{
		`linkmanager_trunk_registered{trunk="provider"}`, "linkmanager_public_address_changes_total",
		"linkmanager_stun_rtt_seconds", "linkmanager_stun_failures_total", "linkmanager_calls_active",
		`linkmanager_port_pool_pairs{pool="internet",state="free"}`, `linkmanager_sip_dropped_total{reason="source_not_allowed",socket="internet"}`,
		`linkmanager_sip_large_sent_total{socket="internet"}`, "linkmanager_media_addresses_refused_total", "linkmanager_sip_route_fallbacks_total",
		`linkmanager_rtp_dropped_total{reason="no_session"}`, `linkmanager_rtp_dropped_total{reason="foreign_source"}`,
		"go_goroutines", "process_open_fds",
	} {
		if metricValue(before, name) < 0 {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if v := metricValue(before, "linkmanager_calls_capacity"); v != 100 {
		t.Errorf("capacity gauge = %v, want the pool's 100 calls", v)
	}
	if v := metricValue(before, `linkmanager_trunk_registered{trunk="provider"}`); v != 1 {
		t.Errorf("registered gauge = %v, want 1", v)
	}

	// One call moves the call and RTP metrics.
	pbx := listenOn(t, pbxIP)
	placeCall(t, prov, pbx, lan, "m1")
	await(t, "the call to end", func() bool { return srv.b2bua.Active() == 0 })
	_, after := get(t, base+"/metrics")
	if v := metricValue(after, `linkmanager_calls_total{direction="outbound"}`); v != 1 {
		t.Errorf(`calls_total{direction="outbound"} = %v after one call, want 1`, v)
	}
	if v := metricValue(after, `linkmanager_rtp_loss_ratio_count{direction="pbx_to_provider"}`); v >= 0 && v != 0 {
		t.Errorf("loss observed for a call without media: %v", v)
	}

	// Draining: readiness fails first, new calls get 503.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with no calls = %v", err)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while draining = %d %s, want 503 shutting down", code, body)
	}
	pAddr := pbx.LocalAddr().(*net.UDPAddr).AddrPort()
	if _, err := pbx.WriteToUDPAddrPort([]byte(pbxInvite(pAddr, "0301234567", "late")), lan); err != nil {
		t.Fatal(err)
	}
	if res, _ := readFinal(t, pbx); !strings.HasPrefix(res, "SIP/2.0 503") || !strings.Contains(res, "Retry-After:") {
		t.Errorf("INVITE while draining answered %q, want 503 with Retry-After", firstLine(res))
	}
}
