#!/usr/bin/env bash
# Installs versitygw, the S3-compatible gateway the store/s3test harness
# runs as a real S3 server in tests. Idempotent: does nothing when the
# binary is already at $VERSITYGW_BIN or $(go env GOPATH)/bin/versitygw.
# Building it from source takes a few minutes on a busy machine.
set -euo pipefail

GO=${GO:-go}
VERSION=${VERSITYGW_VERSION:-v1.8.0}
say() { echo "install-versitygw: $*"; }

if [ -n "${VERSITYGW_BIN:-}" ] && [ -x "${VERSITYGW_BIN}" ]; then
	say "present at ${VERSITYGW_BIN}"
	exit 0
fi
gobin=$("${GO}" env GOBIN)
if [ -z "${gobin}" ]; then
	gobin="$("${GO}" env GOPATH)/bin"
fi
if [ -x "${gobin}/versitygw" ]; then
	say "present at ${gobin}/versitygw"
	exit 0
fi

say "building github.com/versity/versitygw/cmd/versitygw@${VERSION} into ${gobin} (go install; a few minutes)"
start=$(date +%s)
# -mod=mod: run outside this module's vendor/mod settings; versitygw brings
# its own go.mod.
GOFLAGS=-mod=mod "${GO}" install "github.com/versity/versitygw/cmd/versitygw@${VERSION}"
say "installed ${gobin}/versitygw in $(($(date +%s) - start))s"
