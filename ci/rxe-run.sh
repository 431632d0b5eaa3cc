#!/usr/bin/env bash
# ci/rxe-run.sh - run the RDMA tests of datenlord-go on soft-RoCE (rdma_rxe)
# inside a throw-away qemu guest that boots Debian's own kernel. The host
# kernel needs no RDMA support: only qemu (TCG; nested KVM is not used).
#
# Usage: ci/rxe-run.sh            build the test binaries and run them all
#        ci/rxe-run.sh -- CMD...  run CMD in the guest instead (a path under
#                                 /test, e.g. "/test/rdma.test -test.run Verbs")
#
# When CMD names /test/datenlord-node, the node binary (built with cgo) is
# put there too (e.g. `-- /test/datenlord-node bench tiers --local`; make
# bench-rdma). Files the guest leaves in /test/out are copied out of the
# guest (printed base64 between RXE-FILE markers on the console) into
# $RXE_OUT (ci/out/rxe/files).
#
# What it does:
#  1. ci/rdma-deps.sh: apt-installs what is missing (qemu-system-x86,
#     busybox-static, ibverbs-providers, ibverbs-utils, perftest, cpio, kmod,
#     iproute2, libibverbs-dev).
#  2. go test -c: ci/out/rxe/rdma.test (./rdma/), rdmaslot.test
#     (./rdma/rdmaslot/: two cache nodes over tcpfallback + RDMA READs) and
#     rdmabench.test (./rdma/rdmabench/: the bench tiers RDMA rows); with
#     CMD naming it, datenlord-node (go build ./cmd/datenlord-node).
#  3. Fetches the kernel package linux-image-amd64 depends on, once, into
#     $RXE_CACHE (git-ignored ci/out/rxe-cache): vmlinuz and the modules
#     rdma_rxe needs are kept (~11 MB), the package is deleted.
#  4. Builds an initramfs: busybox, the modules in dependency order, iproute2,
#     the rxe provider (dlopen()ed by libibverbs, so copied explicitly),
#     perftest, the test binaries and their shared libraries.
#  5. Boots qemu (TCG); /init loads the modules, adds rxe0 on lo
#     (`rdma link add rxe0 type rxe netdev lo`), waits for the port, runs
#     ib_read_lat (the baseline) and the tests, prints RXE-EXIT=<rc>.
#  6. Prints the latency comparison (our READ p50 vs ib_read_lat's typical)
#     and exits with the guest's status (124: timeout, 125: no result).
#
# The guest kernel runs with tsc=reliable: under TCG it otherwise marks the
# TSC unstable and falls back to the emulated HPET, so that every
# clock_gettime (Go's runtime reads the clock often) becomes a syscall
# and an emulated device read; hardware uses the TSC. RXE_APPEND adds
# kernel parameters.
#
# Environment: RXE_CACHE (ci/out/rxe-cache), RXE_TIMEOUT (300 s), RXE_MEM
# (1024 MiB), RXE_SMP (2), RXE_OUT (ci/out/rxe/files), GO (go). The console
# log is kept in ci/out/rxe/console.log. Pitfalls this script handles are in the comments
# (crc32_generic, the dlopen()ed provider, busybox applets shadowing
# iproute2, the /tmp tmpfs, IPv4-mapped GIDs, no terminal in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
GO=${GO:-go}
CACHE=${RXE_CACHE:-$REPO/ci/out/rxe-cache}
OUTDIR=$REPO/ci/out/rxe
TIMEOUT=${RXE_TIMEOUT:-300}
FILES=${RXE_OUT:-$OUTDIR/files}
MEM=${RXE_MEM:-1024}
SMP=${RXE_SMP:-2}
log() { echo "[rxe +${SECONDS}s] $*" >&2; }

CMD=()
if [ "${1:-}" = -- ]; then
	shift
	CMD=("$@")
fi
WITH_NODE=""
for a in "${CMD[@]}"; do
	case $a in *datenlord-node*) WITH_NODE=1 ;; esac
done

# ---- 1. packages ------------------------------------------------------------
./ci/rdma-deps.sh

# ---- 2. test binaries (cgo: they link libibverbs) ---------------------------
mkdir -p "$OUTDIR" "$CACHE"
log "building test binaries"
CGO_ENABLED=1 "$GO" test -c -o "$OUTDIR/rdma.test" ./rdma/
for p in rdmaslot rdmabench; do
	rm -f "$OUTDIR/$p.test"
	if [ -d "rdma/$p" ]; then
		CGO_ENABLED=1 "$GO" test -c -o "$OUTDIR/$p.test" "./rdma/$p/"
	fi
done
rm -f "$OUTDIR/datenlord-node"
if [ -n "$WITH_NODE" ]; then
	log "building datenlord-node (cgo)"
	CGO_ENABLED=1 "$GO" build -o "$OUTDIR/datenlord-node" ./cmd/datenlord-node
fi

# ---- 3. kernel --------------------------------------------------------------
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$KPKG" ]; then
	apt-get update -qq
	KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
KV=${KPKG#linux-image-}
KROOT=$CACHE/kernel-$KV
MODDIR=$KROOT/lib/modules/$KV
VMLINUZ=$KROOT/boot/vmlinuz-$KV
# rdma_rxe asks the crypto API for "crc32" without a modules.dep entry:
# crc32_generic is loaded explicitly, before it.
WANT_MODS="kernel/crypto/crc32_generic.ko kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko"
deps_of() { awk -F': *' -v m="$1" '$1==m{print $2}' "$2/modules.dep"; }
if [ ! -f "$MODDIR/modules.dep" ] || [ ! -f "$VMLINUZ" ]; then
	log "fetching $KPKG (once; cached in $CACHE)"
	full=$KROOT.full
	rm -rf "$KROOT" "$full"
	mkdir -p "$full"
	(cd "$CACHE" && { apt-get download "$KPKG" >/dev/null 2>&1 ||
		{ apt-get update -qq && apt-get download "$KPKG" >/dev/null; }; })
	dpkg -x "$CACHE/${KPKG}"_*.deb "$full"
	rm -f "$CACHE/${KPKG}"_*.deb
	depmod -b "$full" "$KV" # the package ships no modules.dep (postinst makes it)
	mkdir -p "$KROOT/boot" "$MODDIR"
	cp "$full/boot/vmlinuz-$KV" "$VMLINUZ"
	keep=""
	closure() {
		local m=$1 d
		case " $keep " in *" $m "*) return ;; esac
		for d in $(deps_of "$m" "$full/lib/modules/$KV"); do closure "$d"; done
		keep="$keep $m"
	}
	for m in $WANT_MODS; do closure "$m"; done
	for m in $keep; do
		mkdir -p "$MODDIR/$(dirname "$m")"
		cp "$full/lib/modules/$KV/$m" "$MODDIR/$m"
	done
	echo "$keep" | tr ' ' '\n' | sed '/^$/d' > "$MODDIR/load.order" # dependencies first
	cp "$full/lib/modules/$KV/modules.dep" "$MODDIR/"
	rm -rf "$full"
fi

# ---- 4. initramfs -----------------------------------------------------------
ROOT=$(mktemp -d "$CACHE/initrd.XXXXXX")
INITRD=$ROOT.cpio.gz
trap 'rm -rf "$ROOT" "$INITRD"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,var/tmp,etc/libibverbs.d,lib/modules,test}
cp /bin/busybox "$ROOT/bin/busybox"
for a in $(/bin/busybox --list); do [ -e "$ROOT/bin/$a" ] || ln -s busybox "$ROOT/bin/$a"; done
put() { # put FILE [DEST]: copy a file and its shared-library closure
	local f=$1 dest=${2:-$1} l
	mkdir -p "$ROOT$(dirname "$dest")"
	cp -L "$f" "$ROOT$dest"
	ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | while read -r l; do
		[ -e "$ROOT$l" ] && continue
		mkdir -p "$ROOT$(dirname "$l")"
		cp -L "$l" "$ROOT$l"
	done
}
for b in /usr/bin/ip /usr/bin/rdma /usr/bin/ibv_devinfo /usr/bin/ib_read_lat /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so; do
	put "$b"
done
cp /etc/libibverbs.d/rxe.driver "$ROOT/etc/libibverbs.d/"
put "$OUTDIR/rdma.test" /test/rdma.test
for b in rdmaslot.test rdmabench.test datenlord-node; do
	if [ -f "$OUTDIR/$b" ]; then put "$OUTDIR/$b" "/test/$b"; fi
done
: > "$ROOT/modules.order"
while read -r m; do
	cp "$MODDIR/$m" "$ROOT/lib/modules/"
	echo "/lib/modules/$(basename "$m")" >> "$ROOT/modules.order"
done < "$MODDIR/load.order"

# The guest's test script (busybox sh). ib_read_lat runs first, on the same
# device in the same boot: the baseline our READ latency is compared with.
cat > "$ROOT/test/run.sh" <<'EOF'
#!/bin/sh
# GODEBUG=cpu.sse42=off: QEMU's TCG emulates the SSE4.2 crc32 instruction
# in a slow helper, so Go's CRC-32C is ~3x faster here with its table code
# (64 KiB: ~140 us vs ~415 us measured in this guest); on hardware the
# instruction is the fast one and Go picks it. Every page is still checked.
export DATENLORD_RDMA_REQUIRED=1 GOMAXPROCS=2 GODEBUG=${GODEBUG:-cpu.sse42=off}
ulimit -l unlimited
cd /test
mkdir -p /test/out
rc=0
# the IPv4-mapped GID of 127.0.0.1 (::ffff:7f00:1): what RoCE v2 on lo routes by
gidx=""
for f in /sys/class/infiniband/rxe0/ports/1/gids/*; do
	[ "$(cat "$f")" = "0000:0000:0000:0000:0000:ffff:7f00:0001" ] && gidx=${f##*/} && break
done
echo "RXE: GID index of ::ffff:127.0.0.1 is ${gidx:-missing}"
for s in 2 4096; do
	ib_read_lat -d rxe0 -x "$gidx" -s $s -n 1000 -F >/var/tmp/lat-srv.log 2>&1 &
	sleep 0.3
	ib_read_lat -d rxe0 -x "$gidx" -s $s -n 1000 -F 127.0.0.1 >/var/tmp/lat.log 2>&1 || echo "RXE: ib_read_lat -s $s failed"
	wait
	# columns: bytes iterations t_min t_max t_typical t_avg t_stdev p99 p99.9
	awk -v s=$s '$1==s && NF>=8 {printf "IB-READ-LAT size=%d typical_us=%s avg_us=%s p99_us=%s\n", s, $5, $6, $8}' /var/tmp/lat.log
done
if [ "$#" -gt 0 ]; then
	"$@" || rc=$?
else
	/test/rdma.test -test.v -test.count=1 -test.timeout 120s || rc=$?
	for t in rdmaslot.test rdmabench.test; do
		if [ -x /test/$t ]; then /test/$t -test.v -test.count=1 -test.timeout 120s || rc=$?; fi
	done
fi
# files for the host: base64 between markers on the console
for f in /test/out/*; do
	[ -f "$f" ] || continue
	echo "RXE-FILE-BEGIN ${f##*/}"
	base64 "$f"
	echo "RXE-FILE-END"
done
exit $rc
EOF
{
	printf '/bin/sh /test/run.sh'
	[ ${#CMD[@]} -gt 0 ] && printf ' %q' "${CMD[@]}"
	printf '\n'
} > "$ROOT/test/cmd.sh"

cat > "$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin TMPDIR=/tmp HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
echo "RXE: kernel $(uname -r) up at $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /modules.order); do insmod $m || echo "RXE: insmod $m failed"; done
# busybox sh runs its own applets before PATH lookup: iproute2 by path
/usr/bin/ip link set lo up
/usr/bin/rdma link add rxe0 type rxe netdev lo || echo "RXE: rdma link add failed"
i=0
while [ $i -lt 100 ]; do
	grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null && break
	sleep 0.1; i=$((i+1))
done
/usr/bin/rdma link show
echo "RXE: tests start at $(cut -d' ' -f1 /proc/uptime)s"
sh /test/cmd.sh
rc=$?
echo "RXE-EXIT=$rc at $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
EOF
chmod +x "$ROOT/init" "$ROOT/test/run.sh" "$ROOT/test/cmd.sh"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1 > "$INITRD")
log "initramfs $(du -h "$INITRD" | cut -f1), kernel $KV"

# ---- 5. boot ----------------------------------------------------------------
CONSOLE=$OUTDIR/console.log
log "booting qemu (TCG, ${MEM} MiB, ${SMP} vCPUs, timeout ${TIMEOUT}s); console: $CONSOLE"
set +e
# no terminal in CI: the serial console on stdio with signal=off, stdin closed
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m "$MEM" -smp "$SMP" \
	-nodefaults -no-user-config -display none -no-reboot \
	-chardev stdio,id=con,signal=off -serial chardev:con \
	-kernel "$VMLINUZ" -initrd "$INITRD" \
	-append "console=ttyS0 quiet panic=-1 mitigations=off tsc=reliable ${RXE_APPEND:-}" </dev/null | tr -d '\r' | tee "$CONSOLE"
qrc=${PIPESTATUS[0]}
set -e

# ---- 6. result ----------------------------------------------------------------
if [ "$qrc" = 124 ]; then
	log "TIMEOUT after ${TIMEOUT}s"
	exit 124
fi
rc=$(sed -n 's/^RXE-EXIT=\([0-9]*\).*/\1/p' "$CONSOLE" | tail -1)
if [ -z "$rc" ]; then
	log "the guest ended without a test result (qemu exit $qrc)"
	exit 125
fi
# files the guest left in /test/out
if grep -q '^RXE-FILE-BEGIN ' "$CONSOLE"; then
	mkdir -p "$FILES"
	awk -v dir="$FILES" '
/^RXE-FILE-BEGIN / { name = $2; gsub(/[^A-Za-z0-9._-]/, "_", name); out = dir "/" name ".b64"; printf "" > out; next }
/^RXE-FILE-END/    { if (out != "") close(out); out = ""; next }
out != ""          { print > out }
' "$CONSOLE"
	for b in "$FILES"/*.b64; do
		[ -f "$b" ] || continue
		base64 -d -i "$b" > "${b%.b64}" && rm -f "$b"
		log "copied out of the guest: ${b%.b64}"
	done
fi
echo "== RDMA READ latency in this guest run (TCG soft-RoCE: compare ratios, not absolute values)"
awk '
/^IB-READ-LAT/ { split($2,a,"="); split($3,b,"="); ib[a[2]] = b[2]; print }
/^RDMA-LAT/    { print; for (i = 3; i <= NF; i++) { split($i,kv,"="); f[kv[1]] = kv[2] }
                 if (f["size"] == 2 && ib[2] > 0) printf "  ratio %s p50 / ib_read_lat typical (2 B): %.2f\n", $2, f["p50_us"] / ib[2]
                 if (f["size"] >= 4096 && ib[4096] > 0) printf "  ratio %s p50 / ib_read_lat typical (4096 B): %.2f\n", $2, f["p50_us"] / ib[4096] }
' "$CONSOLE"
log "guest test exit status $rc"
exit "$rc"
