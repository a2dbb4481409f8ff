#!/usr/bin/env bash
# One command for the relay figures of bench/README.md: the C floor relay,
# rtpengine (userspace) and linkmanager's rtpbridge side by side, in the
# same rounds, driven by one generator (bench/sidebyside), all on
# 127.0.0.1. Arguments go to sidebyside (-rounds, -window, -calls,
# -ceiling, -relays); the default is 2 rounds of 10 s windows at 50, 200,
# 500 calls and the 1,200-call ceiling, about 5 minutes.
#
#   sudo bench/install-deps.sh   # rtpengine-daemon, gcc (once)
#   bench/run.sh
#   BENCH_NICE=-10 bench/run.sh   # as root: the generator and all three
#                                 # relays above other load, alike
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
if ! command -v rtpengine >/dev/null || ! command -v cc >/dev/null; then
	echo "bench/run.sh: rtpengine or cc missing: run bench/install-deps.sh as root" >&2
	exit 1
fi
out=$(mktemp -d /tmp/bench-run.XXXXXX)
trap 'rm -rf "$out"' EXIT
cc -O2 -Wall -Wextra -o "$out/floor" bench/floor/floor.c
go build -o "$out/sidebyside" ./bench/sidebyside
# 1,200 calls hold 2,400 generator sockets and up to 4,800 relay sockets.
ulimit -n "$(ulimit -Hn)"
echo "# uptime: $(uptime)"
# BENCH_NICE raises (negative, root only) the priority of the generator
# and of every relay alike: on a machine that others load, the relays
# then compete with each other's figures rather than with the load.
nice -n "${BENCH_NICE:-0}" "$out/sidebyside" -floor "$out/floor" "$@"
