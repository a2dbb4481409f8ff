#!/usr/bin/env bash
# bench/soak.sh [DURATION]: the long soak of issue 9 item 16 (e2e
# TestSoakLong) in the lab, as root. DURATION is how long calls are started
# (a Go duration, default 1h); the other knobs are LINKMANAGER_SOAK_LONG_*
# variables (bench/README.md). The daemon is built without -race, so its
# RSS means something. The table and the verdict go to stdout and to
# ${TMPDIR:-/tmp}/linkmanager-soak-DATE.log; the exit code is go test's.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
dur=${1:-${LINKMANAGER_SOAK_LONG:-1h}}
export LINKMANAGER_SOAK_LONG=$dur LINKMANAGER_E2E_RACE=off
# go test's bound: the duration, the longest hold, the drain and the
# build, with room (seconds from a Go duration such as 1h30m or 300s).
secs=$(awk -v d="$dur" 'BEGIN { s = 0; while (match(d, /^[0-9.]+(h|m|s)/)) {
	n = substr(d, 1, RLENGTH); u = substr(n, length(n)); n = substr(n, 1, length(n) - 1)
	s += n * (u == "h" ? 3600 : u == "m" ? 60 : 1); d = substr(d, RLENGTH + 1) }
	if (d != "" || s == 0) exit 1; print int(s) }') || { echo "soak.sh: $dur is not a duration like 1h or 30m" >&2; exit 2; }
log="${TMPDIR:-/tmp}/linkmanager-soak-$(date -u +%Y%m%dT%H%M%S).log"
go test -count=1 -v -run '^TestSoakLong$' -timeout "$((secs + 900))s" ./e2e/ 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
