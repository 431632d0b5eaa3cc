#!/usr/bin/env bash
# Installs the third-party clients and servers the S3 and KV interface tests
# and benchmarks run against datenlord-node, as root, and only what is
# missing: the AWS CLI (Debian awscli, /usr/bin/aws; a pip-installed aws
# elsewhere in PATH is not used), etcdctl (etcd-client), an etcd server to
# compare with (etcd-server) and curl (presigned URL downloads). Idempotent.
set -euo pipefail

say() { echo "client-deps: $*"; }

missing=()
[ -x /usr/bin/aws ] || missing+=(awscli)
[ -x /usr/bin/etcdctl ] || missing+=(etcd-client)
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)

if [ ${#missing[@]} -eq 0 ]; then
	say "present: /usr/bin/aws (awscli), /usr/bin/etcdctl (etcd-client), /usr/bin/etcd (etcd-server), curl"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	say "missing packages: ${missing[*]}; run ci/client-deps.sh as root or install them with apt-get"
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	say "missing packages: ${missing[*]}, and no apt-get to install them with"
	exit 1
fi
say "installing ${missing[*]} (apt-get update first)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# etcd-server's package starts a system etcd on 2379; the tests start their
# own on free ports, so keep the packaged service from running.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq "${missing[@]}"
