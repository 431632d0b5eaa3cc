#!/usr/bin/env bash
# ci/apt-install.sh WHO [--recommends] PKG... installs Debian packages that a
# caller found missing, as root with apt-get (an update first, non-
# interactive), prefixing its messages with WHO. It fails with a message
# naming the packages when not root or without apt-get. The *-deps.sh
# scripts decide what is missing and call it.
set -euo pipefail

who=$1
shift
recommends=(--no-install-recommends)
if [ "${1:-}" = --recommends ]; then
	recommends=()
	shift
fi
say() { echo "$who: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	say "missing packages: $*; run as root or install them with: apt-get install $*"
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	say "missing packages: $*, and no apt-get to install them with"
	exit 1
fi
say "installing $* (apt-get update first)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${recommends[@]}" "$@"
say "installed $*"
