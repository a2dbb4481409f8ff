#!/usr/bin/env bash
# Installs what the e2e lab and the demo need on a Debian machine (as root).
# The packaged kamailio and coturn services (and any other) are kept from starting: the lab
# runs its own instances inside its namespaces, and a packaged one in the
# root namespace would hold ports and confuse captures.
set -euo pipefail
# baresip (the PBX) and linphone-cli (linphone-daemon, the remote phone): the real
# user agents of realua_test.go. miniupnpd-iptables: the router that grants NAT-PMP/PCP/UPnP
# mappings (portmap_test.go); its service is kept from starting like the others.
# dnsmasq-base (no service): the provider's DNS with _sip._udp SRV records (srv_test.go).
pkgs=(iproute2 procps kamailio coturn sip-tester conntrack iptables nftables tcpdump buildah systemd make baresip linphone-cli miniupnpd-iptables dnsmasq-base)
"$(dirname "$0")/apt-install.sh" "${pkgs[@]}"
# Go 1.26 or newer builds the daemon; Debian's golang package is older.
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
	echo "install-deps.sh: Go 1.26+ not found (looked in PATH and /usr/local/go/bin): install it from go.dev/dl" >&2
	exit 1
fi
