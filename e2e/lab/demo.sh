#!/usr/bin/env bash
# The demo: linkmanager behind a real Linux NAT router, registering with a
# real provider (Kamailio) and keeping the NAT open with STUN (coturn).
# It shows the registration and public address, a call from the Internet
# reaching the daemon, a DSL-style redial followed at once, and a clean
# unregister. Everything runs in network namespaces this script creates and
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

# call_did: the Internet phone calls the DID through the provider; prints
# the final response code the phone got.
call_did() {
	local msgs="$DIR/call-$1.msg"
	"$LAB" exec "$P" phone timeout 30 sipp -sf "$HERE/sipp/call.xml" -i 198.51.100.70 -p 5070 \
		-m 1 -s 4930123456 -d 1000 -timeout 25s -trace_msg -message_file "$msgs" \
		198.51.100.50:5060 >/dev/null 2>&1 || true
	grep -oE '^SIP/2\.0 [2-6][0-9][0-9]' "$msgs" 2>/dev/null | tail -1 | awk '{print $2}'
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

say "the phone calls the DID 4930123456 through the provider and the NAT"
code=$(call_did 1)
echo "phone got: ${code:-no answer}   (480 = the INVITE reached linkmanager; the B2BUA that bridges it to the PBX is the next milestone)"
wait_log "inbound call" 5

say "DSL redial: the router's public IP changes 198.51.100.1 -> 198.51.100.2, conntrack flushed"
from=$(($(wc -l <"$DIR/linkmanager.log") + 1))
start=$(date +%s.%N)
"$LAB" redial "$P" 198.51.100.2 >/dev/null
wait_log 'registered.*198\.51\.100\.2:65002' 20 "$from"
printf 're-registered with the new address %.1f s after the redial (STUN interval 10 s)\n' \
	"$(echo "$(date +%s.%N) - $start" | bc)"
code=$(call_did 2)
echo "phone got: ${code:-no answer} after the redial"

say "stopping linkmanager (SIGTERM): it unregisters, then exits"
from=$(($(wc -l <"$DIR/linkmanager.log") + 1))
kill -TERM "$DAEMON_PID"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=""
wait_log "unregistered" 1 "$from"
echo "exit status $rc"
