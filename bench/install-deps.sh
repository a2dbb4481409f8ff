#!/usr/bin/env bash
# Installs what bench/run.sh needs beyond the lab's packages, as root:
# rtpengine-daemon (Debian's 10.5, run by run.sh in userspace on loopback)
# and a C compiler for the floor relay. The packaged rtpengine service is
# kept from starting (policy-rc.d exits 101): run.sh starts its own
# instance with its own config, and a packaged one would hold ports.
set -euo pipefail
pkgs=(rtpengine-daemon gcc libc6-dev procps)
if [[ $(id -u) -ne 0 ]]; then
	echo "bench/install-deps.sh: run as root (apt-get install)" >&2
	exit 1
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
created_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	created_policy=1
fi
trap 'if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
