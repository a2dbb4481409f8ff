#!/usr/bin/env bash
# linkmanager e2e lab: a NAT router, a LAN and an "Internet", built from
# network namespaces. Nothing is ever added to the root namespace: every veth
# pair is created directly between two lab namespaces.
#
#   lab.sh up PREFIX DIR [--no-stun] [--kam-nostun] [--kam-natping] [--kam-sdpdelay]
#                                  topology + Kamailio + coturn (background, pid files in DIR)
#   lab.sh down PREFIX [DIR]       stop the lab's processes and delete its namespaces
#   lab.sh net-up PREFIX           topology only
#   lab.sh net-down PREFIX         kill what runs in the lab namespaces, delete them
#   lab.sh prepare DIR             write Kamailio db_text tables + coturn config into DIR
#   lab.sh run-kamailio PREFIX DIR [NOSTUN] [NATPING] [SDPDELAY] [SECOND]   exec Kamailio in the foreground
#                                  (SECOND: the provider's second registrar on .51; give it a DIR of its own)
#   lab.sh run-dnsmasq PREFIX DIR  exec dnsmasq (the provider's DNS, .53) in the foreground; the daemon's
#                                  namespace gets /etc/netns/PREFIX-lm/resolv.conf pointing at it
#   lab.sh run-coturn PREFIX DIR IP [IP2]                 exec coturn in the foreground (two IPs: RFC 5780)
#   lab.sh run-miniupnpd PREFIX DIR [upnp-only|no-pcp]   exec miniupnpd (PCP/NAT-PMP + UPnP IGD) in the router, foreground
#   lab.sh redial PREFIX NEWIP     change the router's WAN address, flush conntrack + ARP
#   lab.sh nat-mode PREFIX preserve|random-fully   port-preserving MASQUERADE (default) or --random-fully
#   lab.sh sip-alg PREFIX on|off   attach Linux's SIP ALG (the sip conntrack helper) to the router's SIP flows, or not
#   lab.sh port-forward PREFIX PORTS   forward UDP PORTS (65002, 55000:56000) at the WAN address to the daemon host
#   lab.sh hairpin PREFIX          the router hairpins UDP from the LAN to its WAN address back to the daemon host
#   lab.sh exec PREFIX NS CMD...   run CMD inside PREFIX-NS
#   lab.sh status PREFIX           addresses, NAT rules, conntrack
#
# Namespaces (PREFIX-NAME): lan, inet (switches), router, lm (daemon host),
# pbx, provider (Kamailio), stun (one coturn on .60 and .61, RFC 5780), phone (sipp).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAMES=(lan inet router lm pbx provider stun phone)

# Contract addresses (other code relies on them).
LAN_NET=192.168.100
ROUTER_LAN=$LAN_NET.1
LM_IP=$LAN_NET.2
PBX_IP=$LAN_NET.20
INET_NET=198.51.100
ROUTER_WAN=$INET_NET.1
PROVIDER_IP=$INET_NET.50
PROVIDER2_IP=$INET_NET.51 # the second registrar (run-kamailio SECOND)
DNS_IP=$INET_NET.53       # the provider's DNS (run-dnsmasq)
STUN1_IP=$INET_NET.60
STUN2_IP=$INET_NET.61
PHONE_IP=$INET_NET.70
PHONE_GW=$INET_NET.254 # owned by nobody: the phone's default route (liblinphone needs one)
NAT_UDP_TIMEOUT=${LAB_NAT_UDP_TIMEOUT:-20}

# Kamailio credentials (contract).
SIP_DOMAIN=sip.provider.test
TRUNK_USER=4930123456
TRUNK_PASS=lab-secret
PHONE_USER=phone
PHONE_PASS=phone-secret

die() { echo "lab.sh: $*" >&2; exit 1; }
ns() { echo "$1-$2"; }
nsx() { local n; n="$(ns "$1" "$2")"; shift 2; ip netns exec "$n" "$@"; }

check_prefix() {
	[[ "$1" =~ ^[a-zA-Z0-9]{2,20}$ ]] || die "bad PREFIX '$1' (2-20 alphanumerics)"
}

net_up() {
	local p=$1 n
	check_prefix "$p"
	for n in "${NAMES[@]}"; do
		[ -e "/run/netns/$(ns "$p" "$n")" ] && die "namespace $(ns "$p" "$n") exists already"
	done
	for n in "${NAMES[@]}"; do
		ip netns add "$(ns "$p" "$n")"
		# No IPv6 in the lab (clean captures). Set before any link appears.
		nsx "$p" "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
		nsx "$p" "$n" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
		ip -n "$(ns "$p" "$n")" link set lo up
	done

	# Two switches: a bridge in each switch namespace.
	local sw
	for sw in lan inet; do
		ip -n "$(ns "$p" $sw)" link add br0 type bridge
		ip -n "$(ns "$p" $sw)" link set br0 up
	done
	# plug SWITCH PORTNAME HOSTNS HOSTIF: one veth pair, created between two lab namespaces.
	plug() {
		local sw=$1 port=$2 host=$3 hif=$4
		ip -n "$(ns "$p" "$sw")" link add "$port" type veth peer name "$hif" netns "$(ns "$p" "$host")"
		ip -n "$(ns "$p" "$sw")" link set "$port" master br0
		ip -n "$(ns "$p" "$sw")" link set "$port" up
		ip -n "$(ns "$p" "$host")" link set "$hif" up
	}
	plug lan router router lan
	plug lan lm lm eth0
	plug lan pbx pbx eth0
	plug inet router router wan
	plug inet provider provider eth0
	plug inet stun stun eth0
	plug inet phone phone eth0

	local r
	r="$(ns "$p" router)"
	ip -n "$r" addr add $ROUTER_LAN/24 dev lan
	ip -n "$r" addr add $ROUTER_WAN/24 dev wan
	ip -n "$(ns "$p" lm)" addr add $LM_IP/24 dev eth0
	ip -n "$(ns "$p" lm)" route add default via $ROUTER_LAN
	# The PBX talks only to the daemon: no default route.
	ip -n "$(ns "$p" pbx)" addr add $PBX_IP/24 dev eth0
	ip -n "$(ns "$p" provider)" addr add $PROVIDER_IP/24 dev eth0
	ip -n "$(ns "$p" stun)" addr add $STUN1_IP/24 dev eth0
	ip -n "$(ns "$p" stun)" addr add $STUN2_IP/24 dev eth0
	ip -n "$(ns "$p" phone)" addr add $PHONE_IP/24 dev eth0
	# liblinphone writes c=IN IP4 127.0.0.1 into its SDP when its namespace has no
	# default route: give the phone one, to an address nobody owns. Nothing beyond
	# 198.51.100.0/24 becomes reachable (the LAN stays behind the NAT).
	ip -n "$(ns "$p" phone)" route add default via $PHONE_GW dev eth0
	# Internet hosts get no route to 192.168.100.0/24: the LAN is reachable only through the NAT.

	# The router: MASQUERADE (port-preserving), stateful FORWARD.
	nsx "$p" router sysctl -qw net.ipv4.ip_forward=1
	nsx "$p" router iptables -P FORWARD DROP
	nsx "$p" router iptables -A FORWARD -i lan -o wan -j ACCEPT
	nsx "$p" router iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
	nsx "$p" router iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
	# INPUT stays ACCEPT like the measured lab: an unsolicited packet to the router's own
	# address then leaves an UNREPLIED conntrack entry (finding 3). Conntrack is active in
	# this namespace now (the rules above need it), so its sysctls exist; they are per-netns.
	nsx "$p" router sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$NAT_UDP_TIMEOUT"
	nsx "$p" router sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream="$NAT_UDP_TIMEOUT"
}

# kill_ns_pids PREFIX: every process that runs inside one of this lab's namespaces was
# started by this lab (the prefix is unique), so it is ours to stop.
kill_ns_pids() {
	local p=$1 n pids
	for sig in TERM KILL; do
		pids=""
		for n in "${NAMES[@]}"; do
			[ -e "/run/netns/$(ns "$p" "$n")" ] || continue
			pids="$pids $(ip netns pids "$(ns "$p" "$n")" 2>/dev/null | tr '\n' ' ')"
		done
		pids="$(echo $pids)"
		[ -z "$pids" ] && return 0
		local pid keep=""
		for pid in $pids; do
			# never the caller (e.g. a Go test binary with a thread in a lab namespace)
			if [ "$pid" = "$$" ] || [ "$pid" = "$PPID" ] || [ "$pid" = "${LAB_PROTECT_PID:-}" ]; then continue; fi
			keep="$keep $pid"
			kill -s $sig "$pid" 2>/dev/null || true
		done
		pids="$(echo $keep)"
		[ -z "$pids" ] && return 0
		# bounded wait
		local i
		for i in $(seq 1 30); do
			local alive=""
			for pid in $pids; do
				# a zombie is dead already (its parent reaps it)
				[ -e "/proc/$pid" ] && [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" != Z ] && alive=1
			done
			[ -z "$alive" ] && return 0
			sleep 0.1
		done
	done
}

net_down() {
	local p=$1 n
	check_prefix "$p"
	kill_ns_pids "$p"
	for n in "${NAMES[@]}"; do
		[ -e "/run/netns/$(ns "$p" "$n")" ] && ip netns del "$(ns "$p" "$n")" 2>/dev/null || true
		# run-dnsmasq's resolv.conf (a file, read by ip netns exec; no network config)
		rm -f "/etc/netns/$(ns "$p" "$n")/resolv.conf"
		[ -d "/etc/netns/$(ns "$p" "$n")" ] && rmdir "/etc/netns/$(ns "$p" "$n")" 2>/dev/null || true
	done
	return 0
}

prepare() {
	local d=$1
	mkdir -p "$d/db" "$d/run"
	local ha1t ha1bt ha1p ha1bp
	ha1t=$(printf '%s' "$TRUNK_USER:$SIP_DOMAIN:$TRUNK_PASS" | md5sum | cut -d' ' -f1)
	ha1bt=$(printf '%s' "$TRUNK_USER@$SIP_DOMAIN:$SIP_DOMAIN:$TRUNK_PASS" | md5sum | cut -d' ' -f1)
	ha1p=$(printf '%s' "$PHONE_USER:$SIP_DOMAIN:$PHONE_PASS" | md5sum | cut -d' ' -f1)
	ha1bp=$(printf '%s' "$PHONE_USER@$SIP_DOMAIN:$SIP_DOMAIN:$PHONE_PASS" | md5sum | cut -d' ' -f1)
	# db_text reads empty fields as NULL (and auth then fails): fill every column.
	cat >"$d/db/version" <<-EOF
	id(int,auto) table_name(string) table_version(int) 
	1:version:1
	2:subscriber:7
	3:location:9
	EOF
	cat >"$d/db/subscriber" <<-EOF
	id(int,auto) username(string) domain(string) password(string) ha1(string) ha1b(string) 
	1:$TRUNK_USER:$SIP_DOMAIN:$TRUNK_PASS:$ha1t:$ha1bt
	2:$PHONE_USER:$SIP_DOMAIN:$PHONE_PASS:$ha1p:$ha1bp
	EOF
	# An empty config file of our own, so coturn never reads /etc/turnserver.conf.
	: >"$d/turnserver.conf"
}

run_kamailio() {
	local p=$1 d=$2
	shift 2
	local defs=() a
	for a in "$@"; do
		case "$a" in
		NOSTUN | NATPING | SDPDELAY) defs+=(-A "$a") ;;
		SECOND)
			defs+=(-A "$a")
			ip -n "$(ns "$p" provider)" addr replace $PROVIDER2_IP/24 dev eth0
			;;
		*) die "unknown kamailio switch $a" ;;
		esac
	done
	[ -f "$d/db/subscriber" ] || prepare "$d"
	mkdir -p "$d/run"
	exec ip netns exec "$(ns "$p" provider)" kamailio -DD -E -f "$HERE/kamailio.cfg" \
		-Y "$d/run" -w "$d/run" -P "$d/run/kamailio.pid" -m 32 -M 8 \
		-A "DBURL=\"text://$d/db\"" -A "CTLSOCK=\"unix:$d/run/kamailio_ctl\"" "${defs[@]}"
}

# run_dnsmasq PREFIX DIR: the provider's DNS on $DNS_IP:53 in the provider
# namespace. It answers for provider.test only (no upstream): _sip._udp SRV
# of the domain to kam1 (.50, priority 10) and kam2 (.51, priority 20), and
# their A records. ip netns exec bind-mounts /etc/netns/NS/resolv.conf over
# /etc/resolv.conf, so what runs in the lm namespace after this asks it.
run_dnsmasq() {
	local p=$1 d=$2
	mkdir -p "$d/run" "/etc/netns/$(ns "$p" lm)"
	ip -n "$(ns "$p" provider)" addr replace $DNS_IP/24 dev eth0
	printf 'nameserver %s\noptions timeout:1 attempts:2\n' $DNS_IP >"/etc/netns/$(ns "$p" lm)/resolv.conf"
	exec ip netns exec "$(ns "$p" provider)" dnsmasq --keep-in-foreground --log-facility=- --log-queries \
		--conf-file=/dev/null --no-resolv --no-hosts --no-poll --user=root --group=root \
		--bind-interfaces --listen-address=$DNS_IP --port=53 --pid-file="$d/run/dnsmasq.pid" \
		--local=/provider.test/ \
		--srv-host=_sip._udp.$SIP_DOMAIN,kam1.provider.test,5060,10,10 \
		--srv-host=_sip._udp.$SIP_DOMAIN,kam2.provider.test,5060,20,10 \
		--host-record=kam1.provider.test,$PROVIDER_IP \
		--host-record=kam2.provider.test,$PROVIDER2_IP \
		--host-record=$SIP_DOMAIN,$PROVIDER_IP
}

# run_coturn PREFIX DIR IP [IP2]: with one IP a plain RFC 5389 server on IP:3478; with two
# an RFC 5780 server (NAT behaviour discovery) on both IPs, ports 3478 and 3479: it names
# the other address in OTHER-ADDRESS and answers CHANGE-REQUEST from it.
run_coturn() {
	local p=$1 d=$2 ip=$3 ip2=${4:-}
	[ -f "$d/turnserver.conf" ] || prepare "$d"
	local mode=(--no-rfc5780 --listening-ip "$ip")
	[ -n "$ip2" ] && mode=(--listening-ip "$ip" --listening-ip "$ip2" --alt-listening-port 3479)
	exec ip netns exec "$(ns "$p" stun)" turnserver -c "$d/turnserver.conf" \
		--stun-only --no-cli --no-tls --no-dtls --no-tcp \
		"${mode[@]}" --listening-port 3478 \
		--userdb "$d/run/turndb-$ip" --pidfile "$d/run/coturn-$ip.pid" \
		--no-stdout-log --log-file "$d/coturn-$ip.log" --simple-log \
		--realm lab.test --no-software-attribute
}

# run_miniupnpd PREFIX DIR: Debian's miniupnpd (the iptables build, which
# writes legacy x_tables rules next to the lab's nft-backed ones) serving
# NAT-PMP/PCP and UPnP IGD on the router's LAN side. Its WAN address is in a
# reserved range, which it refuses unless STUN (the lab's RFC 5780 coturn)
# shows it is not behind another NAT (nat-findings 11); for that test the
# router's own packets must leave un-NATed, so they skip MASQUERADE.
# Granted mappings are DNAT'ed in the legacy tables; the nft FORWARD chain
# lets DNAT'ed packets through, as a router's "port forwards" rule does.
#
# miniupnpd 2.3.1 has one switch for NAT-PMP and PCP (enable_natpmp; later
# versions call it enable_pcp_pmp) and answers both on port 5351, so a
# client that tries PCP first gets PCP. no-pcp makes it a NAT-PMP-only
# router: PCP requests (24 bytes and more; NAT-PMP's are 2 and 12) to 5351
# are dropped in the router's INPUT.
run_miniupnpd() {
	local p=$1 d=$2 natpmp=yes t c
	[ "${3:-}" = upnp-only ] && natpmp=no
	if [ "${3:-}" = no-pcp ]; then
		c=(-i lan -p udp --dport 5351 -m length --length 52:65535 -j DROP) # IP+UDP headers (28) + 24
		nsx "$p" router iptables -C INPUT "${c[@]}" 2>/dev/null || nsx "$p" router iptables -I INPUT 1 "${c[@]}"
	fi
	mkdir -p "$d"
	for t in nat mangle filter; do
		nsx "$p" router iptables-legacy -t $t -N MINIUPNPD 2>/dev/null || true
	done
	nsx "$p" router iptables-legacy -t nat -N MINIUPNPD-POSTROUTING 2>/dev/null || true
	nsx "$p" router iptables-legacy -t nat -C PREROUTING -i wan -j MINIUPNPD 2>/dev/null ||
		nsx "$p" router iptables-legacy -t nat -I PREROUTING -i wan -j MINIUPNPD
	nsx "$p" router iptables-legacy -t nat -C POSTROUTING -o wan -j MINIUPNPD-POSTROUTING 2>/dev/null ||
		nsx "$p" router iptables-legacy -t nat -I POSTROUTING -o wan -j MINIUPNPD-POSTROUTING
	nsx "$p" router iptables-legacy -t mangle -C PREROUTING -i wan -j MINIUPNPD 2>/dev/null ||
		nsx "$p" router iptables-legacy -t mangle -I PREROUTING -i wan -j MINIUPNPD
	nsx "$p" router iptables-legacy -t filter -C FORWARD -i wan ! -o wan -j MINIUPNPD 2>/dev/null ||
		nsx "$p" router iptables-legacy -t filter -I FORWARD -i wan ! -o wan -j MINIUPNPD
	c=(-o wan -m addrtype --src-type LOCAL -j RETURN)
	nsx "$p" router iptables -t nat -C POSTROUTING "${c[@]}" 2>/dev/null || nsx "$p" router iptables -t nat -I POSTROUTING 1 "${c[@]}"
	c=(-i wan -o lan -m conntrack --ctstate DNAT -j ACCEPT)
	nsx "$p" router iptables -C FORWARD "${c[@]}" 2>/dev/null || nsx "$p" router iptables -I FORWARD 1 "${c[@]}"
	cat >"$d/miniupnpd.conf" <<-EOF
	ext_ifname=wan
	listening_ip=lan
	port=0
	enable_natpmp=$natpmp
	enable_upnp=yes
	ext_perform_stun=yes
	ext_stun_host=$STUN1_IP
	ext_stun_port=3478
	min_lifetime=120
	max_lifetime=86400
	secure_mode=yes
	system_uptime=no
	notify_interval=60
	clean_ruleset_interval=0
	uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
	allow 1024-65535 $LAN_NET.0/24 1024-65535
	deny 0-65535 0.0.0.0/0 0-65535
	EOF
	exec ip netns exec "$(ns "$p" router)" miniupnpd -f "$d/miniupnpd.conf" -d -4 -P "$d/miniupnpd.pid"
}

# nat_mode PREFIX preserve|random-fully: the router's MASQUERADE keeps the source port
# where it can (the default, a port-restricted cone) or picks a random one per flow
# (--random-fully: symmetric, as carrier-grade NATs are). Conntrack is flushed so no
# old mapping survives the switch.
nat_mode() {
	local p=$1 mode=$2 flags=()
	case "$mode" in
	preserve) ;;
	random-fully) flags=(--random-fully) ;;
	*) die "nat-mode: want preserve or random-fully, not '$mode'" ;;
	esac
	# only the lab's own MASQUERADE rule is replaced; other POSTROUTING rules stay
	while nsx "$p" router iptables -t nat -D POSTROUTING -o wan -j MASQUERADE 2>/dev/null; do :; done
	while nsx "$p" router iptables -t nat -D POSTROUTING -o wan -j MASQUERADE --random-fully 2>/dev/null; do :; done
	nsx "$p" router iptables -t nat -A POSTROUTING -o wan -j MASQUERADE "${flags[@]}"
	nsx "$p" router conntrack -F >/dev/null 2>&1 || true
}

# sip_alg PREFIX on|off: a real SIP ALG in the router. Since kernel 4.7 conntrack helpers
# are attached by rule, not by port: this CT rule in the router's raw table gives every new
# flow to UDP 5060 (the provider's) the sip helper, and on a NATed flow nf_nat_sip then
# rewrites SIP both ways (nat-findings 10, 13). The flow's replies are the same conntrack,
# so one rule covers both directions. Only the router namespace's tables are touched.
# Conntrack is flushed so no flow from before keeps (or lacks) the helper.
sip_alg() {
	local p=$1 rule=(-p udp --dport 5060 -j CT --helper sip)
	case "$2" in
	on) nsx "$p" router iptables -t raw -C PREROUTING "${rule[@]}" 2>/dev/null ||
		nsx "$p" router iptables -t raw -A PREROUTING "${rule[@]}" ||
		die "sip-alg: cannot attach the sip helper (the kernel needs CONFIG_NF_CONNTRACK_SIP and CONFIG_NF_NAT_SIP, iptables the CT target)" ;;
	off) while nsx "$p" router iptables -t raw -D PREROUTING "${rule[@]}" 2>/dev/null; do :; done ;;
	*) die "sip-alg: want on or off, not '$2'" ;;
	esac
	nsx "$p" router conntrack -F >/dev/null 2>&1 || true
}

# port_forward PREFIX PORTS: a static port forward on the router, as an admin
# sets one: UDP to the WAN address on PORTS (iptables --dport syntax, e.g.
# 55000:56000) goes to the daemon host on the same port.
port_forward() {
	local p=$1 ports=$2 c
	c=(-i wan -d $ROUTER_WAN -p udp --dport "$ports" -j DNAT --to-destination $LM_IP)
	nsx "$p" router iptables -t nat -C PREROUTING "${c[@]}" 2>/dev/null || nsx "$p" router iptables -t nat -A PREROUTING "${c[@]}"
	c=(-i wan -o lan -m conntrack --ctstate DNAT -j ACCEPT)
	nsx "$p" router iptables -C FORWARD "${c[@]}" 2>/dev/null || nsx "$p" router iptables -I FORWARD 1 "${c[@]}"
}

# hairpin PREFIX: the router hairpins: UDP from the LAN to its own WAN
# address goes back into the LAN to the daemon host on the same port (with
# the port-preserving MASQUERADE that is the mapping a host's socket got),
# source-NATed to the router so the answer comes back through it.
hairpin() {
	local p=$1 c
	c=(-i lan -d $ROUTER_WAN -p udp -j DNAT --to-destination $LM_IP)
	nsx "$p" router iptables -t nat -C PREROUTING "${c[@]}" 2>/dev/null || nsx "$p" router iptables -t nat -A PREROUTING "${c[@]}"
	c=(-o lan -s $LAN_NET.0/24 -d $LM_IP -p udp -j MASQUERADE)
	nsx "$p" router iptables -t nat -C POSTROUTING "${c[@]}" 2>/dev/null || nsx "$p" router iptables -t nat -I POSTROUTING 1 "${c[@]}"
	c=(-i lan -o lan -j ACCEPT)
	nsx "$p" router iptables -C FORWARD "${c[@]}" 2>/dev/null || nsx "$p" router iptables -I FORWARD 1 "${c[@]}"
}

redial() {
	local p=$1 new=$2 r old
	r="$(ns "$p" router)"
	old=$(ip -n "$r" -4 -o addr show dev wan | awk '{print $4}' | head -1)
	[ "$old" = "$new/24" ] && return 0
	# delete first: removing a primary address also removes the secondaries of its subnet
	[ -n "$old" ] && ip -n "$r" addr del "$old" dev wan
	ip -n "$r" addr add "$new/24" dev wan
	ip netns exec "$r" conntrack -F >/dev/null 2>&1 || true
	local n
	for n in provider stun phone; do ip -n "$(ns "$p" $n)" neigh flush all 2>/dev/null || true; done
	ip -n "$r" neigh flush all 2>/dev/null || true
}

status() {
	local p=$1 n
	for n in "${NAMES[@]}"; do
		echo "== $(ns "$p" "$n")"
		ip -n "$(ns "$p" "$n")" -4 -o addr show | awk '$2!="lo"{print "  "$2, $4}'
	done
	echo "== router nat/filter"
	nsx "$p" router iptables -S FORWARD
	nsx "$p" router iptables -t nat -S POSTROUTING
	echo "== router conntrack"
	nsx "$p" router conntrack -L 2>/dev/null || true
}

up() {
	local p=$1 d=$2 stun=1 kam=()
	shift 2
	local a
	for a in "$@"; do
		case "$a" in
		--no-stun) stun=0 ;;
		--kam-nostun) kam+=(NOSTUN) ;;
		--kam-natping) kam+=(NATPING) ;;
		--kam-sdpdelay) kam+=(SDPDELAY) ;;
		*) die "unknown option $a" ;;
		esac
	done
	mkdir -p "$d"
	d="$(cd "$d" && pwd)"
	prepare "$d"
	net_up "$p"
	"$0" run-kamailio "$p" "$d" "${kam[@]}" >"$d/kamailio.log" 2>&1 &
	echo $! >"$d/kamailio.bgpid"
	if [ $stun = 1 ]; then
		# one coturn on both addresses, in RFC 5780 mode
		"$0" run-coturn "$p" "$d" $STUN1_IP $STUN2_IP >"$d/coturn-$STUN1_IP.out" 2>&1 &
		echo $! >"$d/coturn1.bgpid"
	fi
	# bounded wait for Kamailio's control socket
	local i
	for i in $(seq 1 100); do
		[ -S "$d/run/kamailio_ctl" ] && break
		sleep 0.1
	done
	[ -S "$d/run/kamailio_ctl" ] || { tail -20 "$d/kamailio.log" >&2; die "Kamailio did not start"; }
	echo "lab $p up; logs and sockets in $d"
	echo "  kamcmd -s unix:$d/run/kamailio_ctl ul.dump"
}

down() {
	local p=$1 d=${2:-} f pid
	if [ -n "$d" ] && [ -d "$d" ]; then
		for f in "$d"/*.bgpid; do
			[ -e "$f" ] || continue
			pid=$(cat "$f")
			kill "$pid" 2>/dev/null || true
			rm -f "$f"
		done
	fi
	net_down "$p"
}

cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,25p' "$0"; exit 2; }
shift
case "$cmd" in
up) [ $# -ge 2 ] || die "usage: up PREFIX DIR [options]"; up "$@" ;;
down) [ $# -ge 1 ] || die "usage: down PREFIX [DIR]"; down "$@" ;;
net-up) net_up "$1" ;;
net-down) net_down "$1" ;;
prepare) prepare "$1" ;;
run-kamailio) run_kamailio "$@" ;;
run-coturn) run_coturn "$@" ;;
run-dnsmasq) [ $# -eq 2 ] || die "usage: run-dnsmasq PREFIX DIR"; check_prefix "$1"; run_dnsmasq "$@" ;;
run-miniupnpd) [ $# -ge 2 ] || die "usage: run-miniupnpd PREFIX DIR [upnp-only|no-pcp]"; check_prefix "$1"; run_miniupnpd "$@" ;;
redial) redial "$1" "$2" ;;
sip-alg) [ $# -eq 2 ] || die "usage: sip-alg PREFIX on|off"; check_prefix "$1"; sip_alg "$1" "$2" ;;
port-forward) [ $# -eq 2 ] || die "usage: port-forward PREFIX PORTS"; check_prefix "$1"; port_forward "$1" "$2" ;;
hairpin) [ $# -eq 1 ] || die "usage: hairpin PREFIX"; check_prefix "$1"; hairpin "$1" ;;
nat-mode) [ $# -eq 2 ] || die "usage: nat-mode PREFIX preserve|random-fully"; check_prefix "$1"; nat_mode "$1" "$2" ;;
exec) p=$1 n=$2; shift 2; exec ip netns exec "$(ns "$p" "$n")" "$@" ;;
status) status "$1" ;;
*) die "unknown command $cmd" ;;
esac
