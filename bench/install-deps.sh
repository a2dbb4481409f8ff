#!/usr/bin/env bash
# Installs what bench/run.sh needs beyond the lab's packages, as root:
# rtpengine-daemon (Debian's 10.5, run by run.sh in userspace on loopback)
# and a C compiler for the floor relay. The packaged rtpengine service is
# kept from starting (policy-rc.d exits 101): run.sh starts its own
# instance with its own config, and a packaged one would hold ports.
set -euo pipefail
pkgs=(rtpengine-daemon gcc libc6-dev procps)
exec "$(dirname "$0")/../e2e/lab/apt-install.sh" "${pkgs[@]}"
