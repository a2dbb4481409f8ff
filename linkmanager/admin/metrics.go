package admin

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/linkmanager/linkmanager/linkmanager/b2bua"
	"github.com/linkmanager/linkmanager/linkmanager/trunk"
	"github.com/linkmanager/linkmanager/rtpbridge"
)

// Metrics holds what cannot be read from a snapshot at scrape time: call
// counts, fed by the B2BUA's call-ended events. Everything else (trunks,
// STUN, pools, sockets, calls and their media) is read from snapshots
// when Prometheus scrapes, so no state is kept twice.
type Metrics struct {
	mu     sync.Mutex
	calls  map[string]uint64 // guarded by mu; by direction
	failed map[string]uint64 // guarded by mu; by cause
	natFix uint64            // guarded by mu; calls whose lost NAT race was repaired

	loss   *prometheus.HistogramVec
	jitter *prometheus.HistogramVec
}

// NewMetrics makes the call counters; feed them CallEnded.
func NewMetrics() *Metrics {
	return &Metrics{
		calls:  map[string]uint64{},
		failed: map[string]uint64{},
		loss: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "linkmanager_rtp_loss_ratio",
			Help:    "Share of RTP packets lost per call and direction, observed when a call ends.",
			Buckets: []float64{0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1},
		}, []string{"direction"}),
		jitter: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "linkmanager_rtp_jitter_seconds",
			Help:    "RFC 3550 interarrival jitter per call and direction, observed when a call ends.",
			Buckets: []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16},
		}, []string{"direction"}),
	}
}

const (
	dirPBXToNet = "pbx_to_provider"
	dirNetToPBX = "provider_to_pbx"
)

// CallEnded counts a finished call. A call that was never answered
// counts as failed, by cause: the SIP status it got, or our reason.
func (m *Metrics) CallEnded(e b2bua.CallEnded) {
	m.mu.Lock()
	m.calls[e.Direction]++
	if e.NATRepaired {
		m.natFix++
	}
	if !e.Answered {
		m.failed[causeOf(e.Reason)]++
	}
	m.mu.Unlock()
	if !e.Answered {
		return
	}
	for _, d := range []struct {
		name string
		d    rtpbridge.Direction
	}{{dirPBXToNet, e.Media.AtoB}, {dirNetToPBX, e.Media.BtoA}} {
		if exp := int64(d.d.Packets) + d.d.Lost; exp > 0 && d.d.Packets > 0 {
			m.loss.WithLabelValues(d.name).Observe(max(0, float64(d.d.Lost)) / float64(exp))
			m.jitter.WithLabelValues(d.name).Observe(d.d.Jitter.Seconds())
		}
	}
}

// causeOf keeps the label set small: a status code, or the first words of
// one of our own reasons.
func causeOf(reason string) string {
	if len(reason) >= 3 && strings.Trim(reason[:3], "0123456789") == "" {
		return reason[:3]
	}
	reason, _, _ = strings.Cut(reason, ":")
	return strings.ReplaceAll(strings.TrimSpace(reason), " ", "_")
}

// collector exports snapshots and the call counters to Prometheus.
type collector struct {
	src Source
	m   *Metrics
}

var (
	descRegistered = prometheus.NewDesc("linkmanager_trunk_registered",
		"1 while the trunk is registered with its provider.", []string{"trunk"}, nil)
	descRegFailures = prometheus.NewDesc("linkmanager_trunk_registration_failures",
		"Consecutive failed registration attempts.", []string{"trunk"}, nil)
	descAddrChanges = prometheus.NewDesc("linkmanager_public_address_changes_total",
		"Public address observations that differed from the previous one at the same destination.", nil, nil)
	descSTUNRTT = prometheus.NewDesc("linkmanager_stun_rtt_seconds",
		"Round trip time of the last STUN transaction answered without retransmission.", nil, nil)
	descSTUNRequests = prometheus.NewDesc("linkmanager_stun_requests_total",
		"STUN Binding requests sent, retransmissions included.", nil, nil)
	descSTUNFailures = prometheus.NewDesc("linkmanager_stun_failures_total",
		"STUN transactions that got no answer.", nil, nil)
	descSIPDropped = prometheus.NewDesc("linkmanager_sip_dropped_total",
		"Datagrams dropped on a SIP socket before parsing, by socket and reason.", []string{"socket", "reason"}, nil)
	descCallsActive = prometheus.NewDesc("linkmanager_calls_active",
		"Calls being set up or up.", nil, nil)
	descCalls = prometheus.NewDesc("linkmanager_calls_total",
		"Calls that have ended, by direction.", []string{"direction"}, nil)
	descCallsFailed = prometheus.NewDesc("linkmanager_calls_failed_total",
		"Calls that ended without being answered, by cause.", []string{"cause"}, nil)
	descRTPPackets = prometheus.NewDesc("linkmanager_rtp_packets_total",
		"RTP packets relayed, by direction.", []string{"direction"}, nil)
	descRTPBytes = prometheus.NewDesc("linkmanager_rtp_bytes_total",
		"RTP bytes relayed, by direction.", []string{"direction"}, nil)
	descRTPDropped = prometheus.NewDesc("linkmanager_rtp_dropped_total",
		"RTP packets dropped, by reason.", []string{"reason"}, nil)
	descSIPRejected = prometheus.NewDesc("linkmanager_sip_rejected_total",
		"Requests from hosts that may not send to a socket answered with a stateless 403 (part of source_not_allowed drops).", []string{"socket"}, nil)
	descRTPLatch = prometheus.NewDesc("linkmanager_rtp_latch_events_total",
		"Media source decisions: refused (a source the latching rule never accepts, e.g. an injector or sprayer), takeover (the latched source replaced after its silence).", []string{"event"}, nil)
	descNATRepairs = prometheus.NewDesc("linkmanager_nat_race_repairs_total",
		"Calls whose provider-leg media never arrived (the far end's RTP won the NAT race) and that were moved to a fresh port and re-INVITEd.", nil, nil)
	descPorts = prometheus.NewDesc("linkmanager_port_pool_pairs",
		"RTP/RTCP port pairs of the relay pools, by pool and state.", []string{"pool", "state"}, nil)
	descLargeSent = prometheus.NewDesc("linkmanager_sip_large_sent_total",
		"SIP messages sent over UDP above 1300 bytes (RFC 3261 wants TCP there; IP fragments them), by socket.", []string{"socket"}, nil)
	descNATVerdict = prometheus.NewDesc("linkmanager_nat_verdict",
		"The last NAT self-test (RFC 5780): 1 for its verdict and behaviours; works is 1 when a remote that does not latch reaches the relay without a port forward.",
		[]string{"verdict", "mapping", "filtering", "hairpin"}, nil)
	descNATWorks = prometheus.NewDesc("linkmanager_nat_works",
		"1 when the last NAT self-test says inbound media works without a port forward, 0 when it needs one (absent before the first test).", nil, nil)
	descNATTests = prometheus.NewDesc("linkmanager_nat_tests_total",
		"NAT self-tests run (at start and after each public address change).", nil, nil)
	descRefusedAddrs = prometheus.NewDesc("linkmanager_media_addresses_refused_total",
		"SDP media addresses the relay refused to send to: loopback, link-local, multicast, broadcast, its own, or the LAN named from the Internet side.", nil, nil)
	descRouteFallbacks = prometheus.NewDesc("linkmanager_sip_route_fallbacks_total",
		"In-dialog requests sent to the dialog's first hop (the trunk's next hop, the PBX) because the peer's Record-Route or Contact named an address its side does not trust, or a name that did not resolve.", nil, nil)
	descOneWay = prometheus.NewDesc("linkmanager_calls_one_way",
		"Answered calls up now whose audio has flowed one way only (as /status one_way_audio).", nil, nil)
	descSIPALG = prometheus.NewDesc("linkmanager_sip_alg_detected",
		"1 while the trunk's registrar answers come back rewritten by a router's SIP ALG (switch it off on the router), 0 otherwise.", []string{"trunk"}, nil)
	descSIPALGRewrites = prometheus.NewDesc("linkmanager_sip_alg_rewrites_total",
		"Answers from the trunk's registrar whose Via or Contact came back other than sent.", []string{"trunk"}, nil)
	descLengthMismatch = prometheus.NewDesc("linkmanager_sip_content_length_mismatch_total",
		"SIP messages received whose Content-Length was not their body's length (a SIP ALG that edits bodies, or a broken sender), by socket.", []string{"socket"}, nil)
	descCapacity = prometheus.NewDesc("linkmanager_calls_capacity",
		"Calls the relay's port pools hold at once (alert on linkmanager_calls_active / linkmanager_calls_capacity).", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRegistered, descRegFailures, descAddrChanges, descSTUNRTT,
		descSTUNRequests, descSTUNFailures, descSIPDropped, descCallsActive, descCalls, descCallsFailed,
		descRTPPackets, descRTPBytes, descRTPDropped, descPorts, descSIPRejected, descRTPLatch, descNATRepairs, descCapacity, descLargeSent, descNATVerdict, descNATWorks, descNATTests, descRefusedAddrs, descOneWay, descSIPALG, descSIPALGRewrites, descLengthMismatch, descRouteFallbacks} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	s := c.src.Snapshot()
	for _, st := range s.Trunks {
		gauge(descRegistered, boolFloat(st.Registered), st.Trunk)
		gauge(descRegFailures, float64(st.Failures), st.Trunk)
		gauge(descSIPALG, boolFloat(st.ALG.Verdict == trunk.ALGDetected), st.Trunk)
		counter(descSIPALGRewrites, float64(st.ALG.Rewrites), st.Trunk)
	}
	counter(descAddrChanges, float64(s.STUN.Changes))
	gauge(descSTUNRTT, s.STUN.LastRTT.Seconds())
	counter(descSTUNRequests, float64(s.STUN.Requests))
	counter(descSTUNFailures, float64(s.STUN.Timeouts))
	counter(descNATTests, float64(s.NATTests))
	if r := s.NATTest; r != nil {
		gauge(descNATVerdict, 1, string(r.Verdict), string(r.Mapping), string(r.Filtering), string(r.Hairpin))
		gauge(descNATWorks, boolFloat(r.Works()))
	}
	for _, sc := range s.Sockets {
		counter(descSIPDropped, float64(sc.Source), sc.Name, "source_not_allowed")
		counter(descSIPDropped, float64(sc.Malformed), sc.Name, "malformed")
		counter(descSIPRejected, float64(sc.Rejected), sc.Name)
		counter(descLargeSent, float64(sc.LargeSent), sc.Name)
		counter(descLengthMismatch, float64(sc.LengthMismatch), sc.Name)
	}
	if s.Calls == nil || s.Media == nil {
		return
	}
	m := c.m
	m.mu.Lock()
	for dir, n := range m.calls {
		counter(descCalls, float64(n), dir)
	}
	for cause, n := range m.failed {
		counter(descCallsFailed, float64(n), cause)
	}
	counter(descNATRepairs, float64(m.natFix))
	m.mu.Unlock()
	sums := [2]rtpbridge.Direction{s.Calls.Media.AtoB, s.Calls.Media.BtoA}
	gauge(descCallsActive, float64(len(s.Calls.Calls)))
	oneWay := 0
	for _, c := range s.Calls.Calls {
		if !c.Answered.IsZero() && c.Media.OneWay() {
			oneWay++
		}
	}
	gauge(descOneWay, float64(oneWay))
	for i, dir := range []string{dirPBXToNet, dirNetToPBX} {
		counter(descRTPPackets, float64(sums[i].Packets), dir)
		counter(descRTPBytes, float64(sums[i].Bytes), dir)
	}
	counter(descRTPDropped, float64(sums[0].Foreign+sums[1].Foreign), "foreign_source")
	counter(descRTPDropped, float64(sums[0].Malformed+sums[1].Malformed), "malformed")
	counter(descRTPDropped, float64(s.Media.NoSession), "no_session")
	counter(descRTPLatch, float64(sums[0].Refused+sums[1].Refused), "refused")
	counter(descRTPLatch, float64(sums[0].Relatched+sums[1].Relatched), "takeover")
	for _, p := range []struct {
		name string
		c    rtpbridge.PoolCounts
	}{{"lan", s.Media.Pools.LAN}, {"internet", s.Media.Pools.WAN}} {
		gauge(descPorts, float64(p.c.InUse), p.name, "in_use")
		gauge(descPorts, float64(p.c.Quarantined), p.name, "quarantined")
		gauge(descPorts, float64(p.c.Free), p.name, "free")
	}
	gauge(descCapacity, float64(s.Media.Pools.MaxSessions()))
	counter(descRefusedAddrs, float64(s.Media.RefusedAddrs))
	counter(descRouteFallbacks, float64(s.Calls.RouteFallbacks))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registry is a Prometheus registry with the daemon's metrics and extra.
// Each call makes a new one: there is no global registry.
func registry(src Source, m *Metrics, extra ...prometheus.Collector) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collector{src: src, m: m}, m.loss, m.jitter)
	r.MustRegister(extra...)
	return r
}
