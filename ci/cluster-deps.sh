#!/usr/bin/env bash
# Installs what the cluster tests (cluster/, cluster/clustertest) need beyond
# ci/deps.sh, as root, and only what is missing: nft(8) from Debian's
# nftables package (partitions are nftables drop rules inside network
# namespaces), ip(8) from iproute2 (namespaces, veth pairs, the bridge) and
# nsenter(1) from util-linux. Idempotent; safe to run on every make test.
set -euo pipefail

say() { echo "cluster-deps: $*"; }

missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
	say "present: nft (nftables), ip (iproute2), nsenter (util-linux)"
	exit 0
fi
"$(dirname "$0")/apt-install.sh" cluster-deps "${missing[@]}"
