#!/usr/bin/env bash
# apt-install.sh PKG...: installs those of the Debian packages PKG that are
# missing, as root, with every packaged service kept from starting
# (a policy-rc.d that exits 101, removed again afterwards): the lab and the
# bench run their own instances (kamailio, coturn, miniupnpd, rtpengine)
# inside their namespaces or on loopback, and a packaged one in the root
# namespace would hold ports and confuse captures. Shared by
# e2e/lab/install-deps.sh and bench/install-deps.sh.
set -euo pipefail
if [[ $(id -u) -ne 0 ]]; then
	echo "apt-install.sh: run as root (apt-get install)" >&2
	exit 1
fi
missing=()
for p in "$@"; do
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
