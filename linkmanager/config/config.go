// Package config reads the linkmanager YAML file into typed values.
//
// The work is split into pure steps so each can be tested alone and so
// check-config can report every problem in one run: Parse (YAML to structs,
// strict about keys and types), SetDefaults (fill what was left out) and
// Validate (check every rule, fill the parsed netip fields). Load runs all
// three and is the only code that touches the disk or the environment, to
// read the file and resolve "${VAR}" and password_file passwords.
//
// Nothing here opens sockets or resolves names: "0.0.0.0" listen addresses
// and registrars without a port are passed on as such for cmd and the SIP
// code to resolve.
package config

import (
	"net/netip"
	"runtime"
	"time"
)

// Defaults and limits. A key left out (or set to its zero value) gets the
// Default value.
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "console"

	DefaultSIPListen = "0.0.0.0:65002"
	DefaultSIPPort   = 65002

	DefaultSTUNPort     = 3478
	DefaultSTUNInterval = 10 * time.Second
	MinSTUNInterval     = 1 * time.Second
	// NAT UDP mappings are often dropped after 30s idle; 60s is already
	// only safe on generous routers.
	MaxSTUNInterval = 60 * time.Second

	DefaultExpires = 300 * time.Second
	MinExpires     = 60 * time.Second
	MaxExpires     = 3600 * time.Second
	// DefaultRefreshMax caps the time between two REGISTERs whatever the
	// registrar granted: a provider that restarts and forgets its
	// registrations answers OPTIONS as before, so only the next REGISTER
	// brings inbound calls back (214 s of 480s once, measured).
	DefaultRefreshMax   = 120 * time.Second
	MinRefreshMax       = 30 * time.Second
	DefaultKeepalive    = KeepaliveAuto
	DefaultNumberFormat = NumberAsIs

	DefaultPBXPort = 5060

	DefaultRTPPortMin   = 55000
	DefaultRTPPortMax   = 56000
	DefaultLANPortMin   = 40000
	DefaultLANPortMax   = 41000
	MinRTPPort          = 1024
	MaxRTPPort          = 65535
	MinRTPPorts         = 4 // two RTP/RTCP pairs: one call's two legs
	DefaultMediaTimeout = 60 * time.Second
	DefaultHoldTimeout  = time.Hour
	DefaultDSCP         = 46 // EF, what voice gear expects
	// A latched media source must be silent this long before another may
	// replace it: live audio sends every 20-60 ms, so 1s never mistakes a
	// live stream for a dead one, and a real move loses about 1s of audio.
	DefaultRelatchAfter = 1 * time.Second
	MinRelatchAfter     = 100 * time.Millisecond
	MaxRelatchAfter     = 10 * time.Second

	DefaultAdminListen = "127.0.0.1:9065"
	DefaultAdminPort   = 9065
	AdminOff           = "off"

	DefaultShutdownGrace = 30 * time.Second

	// A call rings this long before the caller gets 408: sipgo's Timer B
	// stops at the first 1xx, so nothing else would end it.
	DefaultRingTimeout = 120 * time.Second
	// New calls per second per PBX address: above a busy office's peak,
	// far below what a hijacked PBX dials.
	DefaultMaxCallRate = 10.0
)

// DefaultEmergencyNumbers is pbx.emergency_numbers' default (see
// policy.DefaultEmergency).
var DefaultEmergencyNumbers = []string{"112", "110", "911", "999"}

// Values of trunks[].keepalive.
const (
	KeepaliveAuto    = "auto"
	KeepaliveSTUN    = "stun"
	KeepaliveOptions = "options"
	KeepaliveCRLF    = "crlf"
	KeepaliveOff     = "off"
)

// Values of rtp.latching, rtp.lan_latching and trunks[].rtp_latching: which
// sources the relay accepts media from (see rtpbridge.Latching).
const (
	LatchingStrict = "strict" // only the exact SDP address
	LatchingIP     = "ip"     // the SDP's IP, any port (NAT may rewrite ports)
	LatchingAny    = "any"    // any source: peers whose SDP address is useless
	// The Internet default: provider SBCs and media servers advertise their
	// public IP, but a NAT on the way (or a router-granted mapping under
	// symmetric NAT) may rewrite the port, and strict would drop that
	// audio. ip still refuses every other host, which is what RTP bleed
	// attacks come from.
	DefaultLatching = LatchingIP
	// The LAN default: nothing translates between the PBX and us, so its
	// SDP address is exact and strict costs nothing.
	DefaultLANLatching = LatchingStrict
)

// rtp.io: how the relay reads its sockets (rtpbridge.Config.IO).
const (
	IOGoroutines = "goroutines" // a reader goroutine per socket; portable
	IOEpoll      = "epoll"      // a reactor with epoll, recvmmsg, sendmmsg; Linux only
)

// DefaultIO is rtp.io's default: epoll where the relay has it (Linux),
// which costs a quarter less CPU per packet at 50 to 500 calls
// (bench/README.md); goroutines elsewhere.
func DefaultIO() string {
	if runtime.GOOS == "linux" {
		return IOEpoll
	}
	return IOGoroutines
}

// Values of trunks[].number_format and trunks[].caller_id.number_format.
const (
	NumberE164       = "e164"         // +4930123456
	NumberE164NoPlus = "e164-no-plus" // 4930123456: E.164 digits without the +
	NumberNational   = "national"     // 030123456
	NumberAsIs       = "as-is"        // as the PBX sent it
)

// Values of trunks[].caller_id.from_user: who the From header names.
const (
	FromUserAccount = "account" // the trunk's username, as today
	FromUserNumber  = "number"  // the PBX's calling number
	DefaultFromUser = FromUserAccount
)

// Values of trunks[].caller_id.asserted: which header carries the PBX's
// calling number to the provider (RFC 3325).
const (
	AssertedNone    = "none"
	AssertedPAI     = "pai" // P-Asserted-Identity: the provider trusts us
	AssertedPPI     = "ppi" // P-Preferred-Identity: the provider checks it
	DefaultAsserted = AssertedNone
)

// Values of trunks[].did_from: where an inbound INVITE names the number
// called. A header is written DIDFromHeader + its name.
const (
	DIDFromAuto    = "auto" // the Request-URI user, else the To user
	DIDFromRURI    = "ruri"
	DIDFromTo      = "to"
	DIDFromHeader  = "header:" // e.g. header:P-Called-Party-ID
	DefaultDIDFrom = DIDFromAuto
)

// Config is the whole file. Fields tagged yaml:"-" are filled by Validate
// from the raw strings, which are kept for messages.
type Config struct {
	Log      Log      `yaml:"log"`      // how much to log and how
	SIP      SIP      `yaml:"sip"`      // the Internet-facing SIP+STUN socket
	STUN     STUN     `yaml:"stun"`     // public address discovery and NAT keepalive
	Trunks   []Trunk  `yaml:"trunks"`   // SIP providers; at least one
	PBX      PBX      `yaml:"pbx"`      // the LAN-side PBX
	RTP      RTP      `yaml:"rtp"`      // media relay ports and timers
	Admin    Admin    `yaml:"admin"`    // local health/metrics HTTP endpoint
	Shutdown Shutdown `yaml:"shutdown"` // graceful stop
	NAT      NAT      `yaml:"nat"`      // help from the router

	lines map[string]int // field path -> line, so Validate can point into the file
}

// Log selects verbosity and encoding.
type Log struct {
	Level  string `yaml:"level"`  // debug|info|warn|error; default info
	Format string `yaml:"format"` // console (humans) | json (journald, Loki); default console
}

// SIP is the socket that faces the providers. It also carries STUN so the
// NAT mapping we learn is the one SIP actually uses.
type SIP struct {
	// IP[:port]; port defaults to 65002. 0.0.0.0 means "the IP of the
	// default-route interface", which cmd resolves. Default 0.0.0.0:65002.
	Listen string `yaml:"listen"`

	ListenAddr netip.AddrPort `yaml:"-"` // Listen parsed; set by Validate
}

// STUN finds our public address and keeps the NAT mapping open.
type STUN struct {
	// host[:port] tried in order; port defaults to 3478. May be empty: then
	// the public address comes from the registrar's Via received/rport.
	Servers []string `yaml:"servers"`
	// Send a Binding request whenever the socket was idle this long.
	// Default 10s, 1s..60s.
	Interval Duration `yaml:"interval"`

	ServerAddrs []HostPort `yaml:"-"` // Servers parsed, Port filled in; set by Validate
}

// Trunk is one provider account.
type Trunk struct {
	Name string `yaml:"name"` // required, unique, [a-z0-9_-]+; used in logs and metrics
	// host[:port] of the registrar. Without a port the SIP code looks up
	// _sip._udp SRV, then falls back to 5060, so no port is filled in here.
	Registrar string `yaml:"registrar"`
	Proxy     string `yaml:"proxy"`    // outbound proxy host[:port]; default = registrar
	Domain    string `yaml:"domain"`   // AOR/From/To domain and realm hint; default = registrar host
	Username  string `yaml:"username"` // required; account user, usually the phone number
	// Digest user when the provider's differs from username; default = username.
	AuthUsername string `yaml:"auth_username"`
	// Literal password or "${ENV_VAR}". Exactly one of password and
	// password_file. After Load it holds the resolved secret.
	Password string `yaml:"password"`
	// File holding the password; one trailing newline is trimmed. Relative
	// paths are relative to the config file. Load reads it into Password and
	// clears this field, so a loaded Config still passes Validate.
	PasswordFile string   `yaml:"password_file"`
	Expires      Duration `yaml:"expires"`     // registration lifetime we ask for; default 300s, 60s..3600s
	RefreshMax   Duration `yaml:"refresh_max"` // at most this between two REGISTERs; default 120s, 30s..expires
	Register     *bool    `yaml:"register"`    // send REGISTER; default true. Never nil after SetDefaults.
	Keepalive    string   `yaml:"keepalive"`   // auto|stun|options|crlf|off; default auto
	// Request-URI/To users routed to the PBX: digits with an optional
	// leading "+"; a trailing "*" makes it a prefix (extension digits follow).
	DIDs []string `yaml:"dids"`
	// Dialled-number prefixes that select this trunk for outbound calls;
	// empty means every number.
	OutboundPrefixes []string `yaml:"outbound_prefixes"`
	NumberFormat     string   `yaml:"number_format"` // e164|e164-no-plus|national|as-is; default as-is
	// Country calling code, digits only (e.g. "49"); needed for e164 and
	// national so numbers can be converted between the two.
	CountryCode string `yaml:"country_code"`
	// Media source rule for this trunk's calls: strict|ip|any; default
	// rtp.latching. any only for a provider whose media comes from
	// addresses its SDP does not name.
	RTPLatching string `yaml:"rtp_latching"`
	// How outbound calls present the PBX's caller to the provider.
	CallerID CallerID `yaml:"caller_id"`
	// Where an inbound INVITE names the DID: auto|ruri|to|header:NAME;
	// default auto (the Request-URI user, else the To user).
	DIDFrom string `yaml:"did_from"`
	// Outbound number rules, patterns like dids (digits, optional leading
	// "+", optional trailing "*"), matched against the number as the PBX
	// dialled it and as this trunk sends it. A deny match refuses (403);
	// with an allow list, only its numbers go out. Emergency numbers are
	// exempt. Default: no rules.
	OutboundAllow []string `yaml:"outbound_allow"`
	OutboundDeny  []string `yaml:"outbound_deny"`
	// At most this many calls on the trunk at once, both ways; an outbound
	// call beyond it gets 503 (the PBX can try another trunk). 0: no cap.
	MaxCalls int `yaml:"max_calls"`
	// IPs or CIDRs of the provider's other SBCs, which may send requests
	// and responses for this trunk besides every address of the
	// registrar and proxy (SRV targets included); default none.
	Allow []string `yaml:"allow"`

	RegistrarAddr HostPort       `yaml:"-"` // Registrar parsed; Port 0 = use SRV. Set by Validate.
	ProxyAddr     HostPort       `yaml:"-"` // Proxy parsed; Port 0 = use SRV. Set by Validate.
	AllowPrefixes []netip.Prefix `yaml:"-"` // Allow parsed and masked; set by Validate
}

// CallerID is how a trunk's outbound calls present the caller. The
// calling number is the one the PBX asserts (its P-Asserted-Identity,
// else P-Preferred-Identity, else its From user); a call the PBX withholds
// (anonymous From or Privacy) always leaves with an anonymous From and
// Privacy: id, whatever is set here.
type CallerID struct {
	// account|number: the From user is the trunk's username, or the
	// calling number; default account.
	FromUser string `yaml:"from_user"`
	// none|pai|ppi: send the calling number in no header, in
	// P-Asserted-Identity or in P-Preferred-Identity; default none.
	Asserted string `yaml:"asserted"`
	// e164|e164-no-plus|national|as-is for the calling number and the
	// forwarding numbers of Diversion and History-Info; default the
	// trunk's number_format.
	NumberFormat string `yaml:"number_format"`
}

// PBX is the LAN side.
type PBX struct {
	Listen  string `yaml:"listen"`  // IP[:port] where the PBX sends calls; required, port defaults to 5060
	Address string `yaml:"address"` // IP[:port] of the PBX for inbound calls; required, port defaults to 5060
	// IPs or CIDRs allowed to place calls; default = pbx.address IP only.
	Allow []string `yaml:"allow"`
	// Optional digest credentials the PBX must present; both or neither.
	// Password may be "${ENV_VAR}", resolved by Load.
	Username string `yaml:"username"`
	Password string `yaml:"password"`

	ListenAddr netip.AddrPort `yaml:"-"` // Listen parsed; set by Validate
	Addr       netip.AddrPort `yaml:"-"` // Address parsed; set by Validate
	// How long an unanswered call may ring; default 120s, 5s..10m.
	RingTimeout Duration `yaml:"ring_timeout"`
	// Numbers that always go out: exempt from every deny rule, cap, rate
	// limit and the shutdown drain. Exact digits. Default 112, 110, 911, 999.
	EmergencyNumbers []string `yaml:"emergency_numbers"`
	// New calls per second one source (a PBX address) may place, in
	// bursts of twice that; more get 503. 0: no limit. Default 10.
	MaxCallRate *float64 `yaml:"max_call_rate"`

	AllowPrefixes []netip.Prefix `yaml:"-"` // Allow parsed and masked; set by Validate
}

// RTP sizes the relay port pools. Each call leg takes an even RTP port and
// the odd RTCP port above it.
type RTP struct {
	PortMin      int      `yaml:"port_min"`      // Internet-side pool start, even; default 55000
	PortMax      int      `yaml:"port_max"`      // Internet-side pool end, inclusive; default 56000
	LANPortMin   int      `yaml:"lan_port_min"`  // LAN-side pool start, even; default 40000
	LANPortMax   int      `yaml:"lan_port_max"`  // LAN-side pool end, inclusive; default 41000
	MediaTimeout Duration `yaml:"media_timeout"` // hang up after this long without media; default 60s
	HoldTimeout  Duration `yaml:"hold_timeout"`  // same while on hold; default 1h
	// DSCP for relayed media, 0..63; default 46 (EF). A pointer because 0
	// (best effort) is a legitimate choice.
	DSCP *int `yaml:"dscp"`
	// Which sources may send a call's media, Internet side:
	// strict|ip|any; default ip. Each trunk may override it.
	Latching string `yaml:"latching"`
	// The same for the LAN side (the PBX): default strict.
	LANLatching string `yaml:"lan_latching"`
	// How long a latched source must be silent before another accepted
	// source replaces it; default 1s, 100ms..10s.
	RelatchAfter Duration `yaml:"relatch_after"`
	// How the relay reads its sockets: goroutines|epoll; default
	// goroutines. epoll (Linux) serves every ready socket per wake-up.
	IO string `yaml:"io"`
}

// Admin is the local HTTP endpoint for health and metrics.
type Admin struct {
	// IP[:port]; default 127.0.0.1:9065, port defaults to 9065. "" or "off"
	// disables it. A pointer so an explicit "" differs from leaving it out.
	Listen *string `yaml:"listen"`

	ListenAddr netip.AddrPort `yaml:"-"` // Listen parsed; zero (!IsValid) when off. Set by Validate.
}

// Values of nat.portmap.
const (
	PortmapAuto = "auto" // ask the router (PCP, NAT-PMP, UPnP IGD); go on without if none answers
	PortmapOff  = "off"  // never ask
)

// DefaultPortmap is nat.portmap's default (off when nat.port_forward is
// set).
const DefaultPortmap = PortmapAuto

// NAT is what the daemon asks of the router, and what it is told of it.
type NAT struct {
	// Ask the router for mappings of sip.listen's port and of each call's
	// RTP pair: auto|off; default auto, or off with port_forward.
	Portmap string `yaml:"portmap"`
	// PortForward declares a static port forward on the router of
	// sip.listen's port and the Internet RTP pool (rtp.port_min–port_max)
	// to this host, on the same ports: `linkmanager firewall` lists them.
	// The NAT self-test cannot see a forward (its probes leave from
	// ephemeral ports), so without this a symmetric NAT is reported as
	// needing one. Default false.
	PortForward bool `yaml:"port_forward"`
}

// Shutdown controls the drain on SIGTERM.
type Shutdown struct {
	// How long to let calls finish before hanging them up; default 30s.
	// 0 also means the default: use 1s for a near-immediate stop.
	Grace Duration `yaml:"grace"`
}

// SetDefaults fills every key that was left out. It never fails: values it
// cannot interpret are left for Validate to report.
func (c *Config) SetDefaults() {
	setString(&c.Log.Level, DefaultLogLevel)
	setString(&c.Log.Format, DefaultLogFormat)
	setString(&c.SIP.Listen, DefaultSIPListen)
	setDuration(&c.STUN.Interval, DefaultSTUNInterval)
	setString(&c.RTP.Latching, DefaultLatching)
	setString(&c.RTP.LANLatching, DefaultLANLatching)
	for i := range c.Trunks {
		c.Trunks[i].setDefaults()
		// A trunk inherits only a usable value, so a bad rtp.latching is
		// reported once, not again for every trunk.
		if validLatching(c.RTP.Latching) {
			setString(&c.Trunks[i].RTPLatching, c.RTP.Latching)
		}
	}
	if len(c.PBX.Allow) == 0 {
		if ap, problem := parseIPPort(c.PBX.Address, DefaultPBXPort); problem == "" {
			c.PBX.Allow = []string{netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()).String()}
		}
	}
	if c.PBX.EmergencyNumbers == nil {
		c.PBX.EmergencyNumbers = append([]string(nil), DefaultEmergencyNumbers...)
	}
	if c.PBX.MaxCallRate == nil {
		r := DefaultMaxCallRate
		c.PBX.MaxCallRate = &r
	}
	setInt(&c.RTP.PortMin, DefaultRTPPortMin)
	setInt(&c.RTP.PortMax, DefaultRTPPortMax)
	setInt(&c.RTP.LANPortMin, DefaultLANPortMin)
	setInt(&c.RTP.LANPortMax, DefaultLANPortMax)
	setDuration(&c.RTP.MediaTimeout, DefaultMediaTimeout)
	setDuration(&c.RTP.HoldTimeout, DefaultHoldTimeout)
	setDuration(&c.RTP.RelatchAfter, DefaultRelatchAfter)
	setString(&c.RTP.IO, DefaultIO())
	if c.RTP.DSCP == nil {
		d := DefaultDSCP
		c.RTP.DSCP = &d
	}
	if c.Admin.Listen == nil {
		s := DefaultAdminListen
		c.Admin.Listen = &s
	}
	setDuration(&c.Shutdown.Grace, DefaultShutdownGrace)
	if c.NAT.PortForward {
		setString(&c.NAT.Portmap, PortmapOff) // the forward already does what a mapping would
	}
	setString(&c.NAT.Portmap, DefaultPortmap)
	setDuration(&c.PBX.RingTimeout, DefaultRingTimeout)
}

func (t *Trunk) setDefaults() {
	// Only derive from the registrar when it parses; otherwise proxy and
	// domain would repeat the registrar's error.
	if hp, problem := parseHostPort(t.Registrar); problem == "" {
		setString(&t.Proxy, t.Registrar)
		setString(&t.Domain, hp.Host)
	}
	setString(&t.AuthUsername, t.Username)
	setDuration(&t.Expires, DefaultExpires)
	setDuration(&t.RefreshMax, DefaultRefreshMax)
	if t.Register == nil {
		r := true
		t.Register = &r
	}
	setString(&t.Keepalive, DefaultKeepalive)
	setString(&t.NumberFormat, DefaultNumberFormat)
	setString(&t.CallerID.FromUser, DefaultFromUser)
	setString(&t.CallerID.Asserted, DefaultAsserted)
	// Only a usable number_format is inherited, so a bad one is
	// reported once.
	if needsCountry(t.NumberFormat) || t.NumberFormat == NumberAsIs {
		setString(&t.CallerID.NumberFormat, t.NumberFormat)
	}
	setString(&t.DIDFrom, DefaultDIDFrom)
}

func validLatching(s string) bool {
	return s == LatchingStrict || s == LatchingIP || s == LatchingAny
}

func setString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func setDuration(p *Duration, v time.Duration) {
	if *p == 0 {
		*p = Duration(v)
	}
}
