#!/usr/bin/env bash
# The daemon's own figures (issue 10), through its SIP sockets on loopback:
#
#   bench/daemon.sh memory   # idle RSS, and RSS per active call with CALLS up (default 500)
#   bench/daemon.sh rate     # call setup at RATE calls/s (default 600) for SECS s (default 30), 1 s hold
#
# It builds linkmanager without -race and runs it with its own config in a
# temp dir: the PBX side on 127.0.0.2 (a sipp UAC), the provider a sipp UAS
# on 127.0.0.1:5080, no registration, no STUN, no port mapping. Every call
# is anchored: the daemon opens a relay session per call whatever the SDP.
# The calls carry no media. Every load is bounded (sipp -m, timeout) and
# every process is stopped by its PID. Needs sipp (sip-tester) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
mode=${1:-}
[[ $mode == memory || $mode == rate ]] || { echo "usage: bench/daemon.sh memory|rate" >&2; exit 2; }
dir=$(mktemp -d /tmp/bench-daemon.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$dir"
}
trap cleanup EXIT
go build -o "$dir/linkmanager" ./cmd/linkmanager
cat >"$dir/lm.yaml" <<YAML
log: {level: warn, format: console}
sip: {listen: 127.0.0.1:65002}
stun: {servers: []}
trunks:
  - name: provider
    registrar: 127.0.0.1:5080
    username: "4930123456"
    password: "bench"
    register: false
    keepalive: "off"
    dids: ["4930123456"]
pbx: {listen: 127.0.0.2:5060, address: 127.0.0.2:5070, allow: ["127.0.0.2/32"], max_call_rate: 0}
rtp: {port_min: 50000, port_max: 53999, lan_port_min: 44000, lan_port_max: 47999}
admin: {listen: 127.0.0.1:9165}
nat: {portmap: "off"}
YAML
"$dir/linkmanager" run -config "$dir/lm.yaml" >"$dir/lm.log" 2>&1 &
lm=$!
pids+=("$lm")
status() { curl -sf --max-time 2 http://127.0.0.1:9165/status; }
for _ in $(seq 50); do status >/dev/null 2>&1 && break; sleep 0.2; done
status >/dev/null || { echo "daemon did not come up:" >&2; cat "$dir/lm.log" >&2; exit 1; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$lm/status"; }
up() { status | grep -o '"calls": [0-9]*' | tail -1 | grep -o '[0-9]*$'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# sipp UAS (the provider) and UAC (the PBX): n calls, hold ms, rate/s, bound s.
sipp_pair() {
	local n=$1 hold=$2 rate=$3 bound=$4
	timeout "$bound" sipp -sn uas -i 127.0.0.1 -p 5080 -m "$n" -nostdin >"$dir/uas.log" 2>&1 &
	pids+=("$!")
	uas=$!
	timeout "$bound" sipp -sn uac 127.0.0.2:5060 -i 127.0.0.2 -p 5070 -s 4930123456 -d "$hold" \
		-l "$n" -m "$n" -r "$rate" -nostdin -trace_stat -stf "$dir/uac.csv" -fd 1 >"$dir/uac.log" 2>&1 &
	pids+=("$!")
	uac=$!
}

if [[ $mode == memory ]]; then
	calls=${CALLS:-500}
	((calls >= 1 && calls <= 1900)) || { echo "CALLS: 1..1900" >&2; exit 1; }
	sleep 3
	idle=$(rss)
	echo "idle RSS: $idle kB"
	hold_ms=$((calls * 10 + 45000)) # set-up at 100/s, then 45 s to sample
	sipp_pair "$calls" "$hold_ms" 100 $((hold_ms / 1000 + 60))
	for _ in $(seq $((calls / 10 + 100))); do
		[[ $(up) == "$calls" ]] && break
		sleep 0.5
	done
	[[ $(up) == "$calls" ]] || { echo "only $(up) of $calls calls came up" >&2; exit 1; }
	# RSS climbs for a while as the heap grows to its GC goal: sample 30 s.
	max=0
	for _ in $(seq 15); do
		sleep 2
		r=$(rss)
		((r > max)) && max=$r
		[[ $(up) == "$calls" ]] || { echo "calls dropped to $(up) while sampling" >&2; exit 1; }
	done
	echo "RSS with $calls calls up: last $r kB, highest $max kB"
	echo "per call: $(((r - idle) / calls)).$(((r - idle) * 10 / calls % 10)) kB (last), $(((max - idle) / calls)).$(((max - idle) * 10 / calls % 10)) kB (highest)"
	curl -sf http://127.0.0.1:9165/metrics | grep -E '^go_(goroutines|memstats_(heap_inuse|stack_inuse|sys)_bytes) ' || true
	exit 0
fi

rate=${RATE:-600}
secs=${SECS:-30}
((rate >= 1 && rate <= 2000 && secs >= 1 && secs <= 120)) || { echo "RATE 1..2000, SECS 1..120" >&2; exit 1; }
n=$((rate * secs))
sleep 1
c0=$(ticks "$lm")
t0=$(date +%s.%N)
sipp_pair "$n" 1000 "$rate" $((secs + 60))
wait "$uac" || true
t1=$(date +%s.%N)
c1=$(ticks "$lm")
sleep 2 # the UAS's last BYEs
tail -1 "$dir/uac.csv" >/dev/null 2>&1 || true
# sipp's final statistics: successful and failed calls.
ok=$(awk -F';' 'NR==1 {for (i=1;i<=NF;i++) if ($i=="SuccessfulCall(C)") s=i; else if ($i=="FailedCall(C)") f=i} END {print $s, $f}' "$dir/uac.csv")
read -r succ fail <<<"$ok"
elapsed=$(echo "$t1 - $t0" | bc)
echo "offered $n calls at $rate/s; successful $succ, failed $fail, in ${elapsed}s"
# Why calls failed, by sipp's counters, and what the daemon warned of.
awk -F';' 'NR==1 {for (i=1;i<=NF;i++) h[i]=$i} END {for (i in h) if (h[i] ~ /^Failed.*\(C\)$/ && $i > 0) print "  " h[i], $i}' "$dir/uac.csv"
grep -v 'trusted by its address' "$dir/lm.log" | awk -F'\t' '{print "  daemon:", $2, $3, $4}' | sort | uniq -c | sort -rn | head -5 || true
echo "achieved: $(echo "scale=0; $succ / ($elapsed - 1)" | bc) calls/s (1 s hold)"
echo "daemon CPU per call: $(echo "scale=3; ($c1 - $c0) * 10 / $succ" | bc) ms"
