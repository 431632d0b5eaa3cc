#!/usr/bin/env bash
# Installs what building and testing datenlord-node needs on a fresh Debian,
# as root, and only what is missing: FUSE tools, mountpoint(1), a C
# toolchain, CA certificates, the Go module dependencies and versitygw (the
# S3 server the tests run; ci/install-versitygw.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
say() { echo "deps: $*"; }

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v mountpoint >/dev/null 2>&1 || missing+=(util-linux)
command -v gcc >/dev/null 2>&1 || missing+=(build-essential)
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)

if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		say "missing packages: ${missing[*]}; run 'make deps' as root or install them with apt-get"
		exit 1
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		say "missing packages: ${missing[*]}, and no apt-get to install them with"
		exit 1
	fi
	say "installing ${missing[*]} (apt-get update first)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
	say "system packages present: fuse3 (fusermount3), util-linux (mountpoint), gcc, ca-certificates"
fi

if [ ! -c /dev/fuse ]; then
	say "/dev/fuse missing: loading the fuse module (best effort)"
	modprobe fuse 2>/dev/null || true
fi
if [ ! -c /dev/fuse ]; then
	if [ "$(id -u)" -eq 0 ]; then
		say "creating /dev/fuse (mknod c 10 229)"
		mknod -m 0666 /dev/fuse c 10 229
	else
		say "warning: no /dev/fuse and not root; the FUSE tests will be skipped"
	fi
else
	say "/dev/fuse present"
fi

if ! command -v "$GO" >/dev/null 2>&1; then
	say "Go not found (want the version in go.mod, e.g. /usr/local/go/bin/go); set GO=/path/to/go"
	exit 1
fi
say "downloading Go modules ($("$GO" version))"
"$GO" mod download

say "versitygw (S3 server for the S3 store tests): ci/install-versitygw.sh"
GO="$GO" ./ci/install-versitygw.sh

say "cluster test tools (nftables, iproute2, nsenter): ci/cluster-deps.sh"
./ci/cluster-deps.sh

say "S3 and KV clients (awscli, etcd-client, etcd-server, curl): ci/client-deps.sh"
./ci/client-deps.sh
