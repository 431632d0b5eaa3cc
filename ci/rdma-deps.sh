#!/usr/bin/env bash
# Installs, as root and only when missing, what the RDMA build and the
# soft-RoCE test guest need on Debian: libibverbs-dev (cgo build of rdma/),
# ibverbs-providers (the rxe provider), ibverbs-utils and perftest
# (ibv_devinfo, ib_read_lat), and for ci/rxe-run.sh qemu-system-x86,
# busybox-static, cpio, kmod and iproute2. Idempotent: a second run installs
# nothing. RDMA_DEPS_BUILD_ONLY=1 installs only the build packages.
set -euo pipefail

say() { echo "rdma-deps: $*" >&2; }

pkgs=(libibverbs-dev libibverbs1 ibverbs-providers)
if [ -z "${RDMA_DEPS_BUILD_ONLY:-}" ]; then
	pkgs+=(ibverbs-utils perftest qemu-system-x86 busybox-static cpio kmod iproute2)
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	say "present: ${pkgs[*]}"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	say "missing packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}"
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	say "missing packages: ${missing[*]}, and no apt-get to install them with"
	exit 1
fi
say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "installed ${missing[*]}"
