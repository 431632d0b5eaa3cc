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
# etcd-server's package starts a system etcd on 2379 where an init system
# runs; the tests start their own on free ports, so keep the packaged
# service from starting.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d 2>/dev/null && chmod +x /usr/sbin/policy-rc.d &&
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT || true
fi
"$(dirname "$0")/apt-install.sh" client-deps --recommends "${missing[@]}"
