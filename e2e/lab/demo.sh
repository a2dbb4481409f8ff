#!/usr/bin/env bash
# The demo: linkmanager behind a real Linux NAT router, registering with a
# real provider (Kamailio) and keeping the NAT open with STUN (coturn).
# It shows the registration and public address, real calls in both
# directions with audio relayed through the NAT (and their RTP statistics),
# a DSL-style redial followed at once, and a clean unregister. Everything runs in network namespaces this script creates and
# removes again (trap); nothing touches the root namespace.
#
# Usage (as root): e2e/lab/demo.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LAB="$HERE/lab.sh"
export PATH="$PATH:/usr/local/go/bin"

[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (network namespaces, iptables)" >&2; exit 1; }
"$HERE/install-deps.sh"

P="demo$(printf '%04x' $((RANDOM % 65536)))"
DIR="$(mktemp -d /tmp/linkmanager-demo.XXXXXX)"
DAEMON_PID=""
cleanup() {
	if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill -TERM "$DAEMON_PID" 2>/dev/null || true
		wait "$DAEMON_PID" 2>/dev/null || true
	fi
	"$LAB" down "$P" "$DIR" >/dev/null 2>&1 || true
	echo "lab $P removed; logs kept in $DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# wait_log PATTERN SECONDS [FROM_LINE]: wait for a daemon log line.
wait_log() {
	local pat=$1 secs=$2 from=${3:-1} i
	for ((i = 0; i < secs * 10; i++)); do
		if tail -n +"$from" "$DIR/linkmanager.log" | grep -q -- "$pat"; then
			tail -n +"$from" "$DIR/linkmanager.log" | grep -- "$pat" | head -1
			return 0
		fi
		sleep 0.1
	done
	echo "demo.sh: no '$pat' in the daemon log after ${secs}s; last lines:" >&2
	tail -n 20 "$DIR/linkmanager.log" >&2
	return 1
}

# call A_NS A_IP B_NS B_IP TARGET NUMBER LABEL: B answers and echoes RTP
# (sipp -rtp_echo); A calls NUMBER via TARGET and plays ~7 s of G.711
# audio (236 packets). What A gets back proves both directions.
call() {
	local a_ns=$1 a_ip=$2 b_ns=$3 b_ip=$4 target=$5 number=$6 label=$7
	local cap="$DIR/$label.pcap" from
	from=$(($(wc -l <"$DIR/linkmanager.log") + 1))
	"$LAB" exec "$P" "$b_ns" timeout 40 sipp -sn uas -i "$b_ip" -p 5060 -mi "$b_ip" -rtp_echo -m 1 \
		>/dev/null 2>&1 &
	local uas=$!
	"$LAB" exec "$P" "$a_ns" timeout 40 tcpdump -i any -n -U -w "$cap" "udp and dst host $a_ip and dst port 6000" \
		>/dev/null 2>&1 &
	local cap_pid=$!
	sleep 0.5
	(cd "$DIR" && "$LAB" exec "$P" "$a_ns" timeout 40 sipp -sf "$HERE/sipp/uac-pcap.xml" -i "$a_ip" -p 5070 \
		-mi "$a_ip" -mp 6000 -m 1 -d 9000 -s "$number" "$target" >/dev/null 2>&1) ||
		echo "  (the caller's sipp reported a failed call; see $DIR)"
	wait "$uas" 2>/dev/null || true
	sleep 0.5
	kill "$cap_pid" 2>/dev/null || true
	wait "$cap_pid" 2>/dev/null || true
	local back
	back=$(tcpdump -n -r "$cap" 2>/dev/null | wc -l)
	local line
	line=$(tail -n +"$from" "$DIR/linkmanager.log" | grep "call ended" | head -1)
	echo "  caller got $back RTP packets back (it sent 236; the far end echoes them)"
	echo "  linkmanager's RTP statistics for the call:"
	for dir in a_to_b b_to_a; do
		echo "$line" | grep -oE "\"$dir\": \{[^}]*" | sed -E 's/"(a_to_b|b_to_a)": \{/    \1 (a = PBX leg, b = provider leg): /; s/"//g'
	done
	echo "$line" | grep -oE '"one_way": (true|false)' | sed 's/"//g; s/^/    /'
}
say "building linkmanager"
(cd "$ROOT" && go build -o "$DIR/linkmanager" ./cmd/linkmanager)
"$DIR/linkmanager" version

say "bringing up the NAT lab ($P): LAN 192.168.100.0/24 -> router (MASQUERADE, UDP timeout 20 s) -> 198.51.100.0/24"
"$LAB" up "$P" "$DIR" >/dev/null
echo "provider: Kamailio 198.51.100.50:5060   STUN: coturn 198.51.100.60/.61:3478   phone: 198.51.100.70"

say "starting linkmanager on 192.168.100.2:65002 (behind the NAT)"
"$LAB" exec "$P" lm "$DIR/linkmanager" run --config "$HERE/linkmanager-lab.yaml" >"$DIR/linkmanager.log" 2>&1 &
DAEMON_PID=$!
wait_log "public address learned" 15
wait_log $'\tregistered\t' 15

say "what the provider stored (Kamailio location table)"
ip netns exec "$P-provider" kamcmd -s "unix:$DIR/run/kamailio_ctl" ul.lookup location s:4930123456 |
	grep -E 'Address|Received|Expires' || true

say "inbound: the phone (198.51.100.70) calls the DID 4930123456; linkmanager bridges it to the PBX (192.168.100.20)"
call phone 198.51.100.70 pbx 192.168.100.20 198.51.100.50:5060 4930123456 inbound

say "outbound: the PBX calls 0301234567; linkmanager sends it to the provider, which rings the phone"
call pbx 192.168.100.20 phone 198.51.100.70 192.168.100.2:5060 0301234567 outbound

say "DSL redial: the router's public IP changes 198.51.100.1 -> 198.51.100.2, conntrack flushed"
from=$(($(wc -l <"$DIR/linkmanager.log") + 1))
start=$(date +%s.%N)
"$LAB" redial "$P" 198.51.100.2 >/dev/null
wait_log 'registered.*198\.51\.100\.2:65002' 20 "$from"
printf 're-registered with the new address %.1f s after the redial (STUN interval 10 s)\n' \
	"$(echo "$(date +%s.%N) - $start" | bc)"
say "inbound again, through the new public address"
call phone 198.51.100.70 pbx 192.168.100.20 198.51.100.50:5060 4930123456 after-redial

say "stopping linkmanager (SIGTERM): it unregisters, then exits"
from=$(($(wc -l <"$DIR/linkmanager.log") + 1))
kill -TERM "$DAEMON_PID"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=""
wait_log "unregistered" 1 "$from"
echo "exit status $rc"
