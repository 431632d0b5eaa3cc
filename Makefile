# Targets mirror the CI jobs: what CI runs (.ci/run -> make test), a
# developer can run by name. Every target says what it does.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
export GO
export PATH := $(dir $(GO)):$(PATH)

BIN      := bin/datenlord-node
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# make run settings; the DATENLORD_* environment is honoured too.
MOUNT    ?= $(or $(DATENLORD_MOUNT),/mnt/datenlord)
DATA_DIR ?= $(or $(DATENLORD_DATA_DIR),/var/lib/datenlord)
ARGS     ?=
# make bench: extra go test flags, e.g. BENCHFLAGS='-benchtime 1x', and
# extra bench tiers flags, e.g. TIERSFLAGS='--duration 1s'.
BENCHFLAGS ?=
TIERSFLAGS ?=
# make bench-rdma: bench tiers flags for the soft-RoCE guest, an emulator
# (TCG) on a shared machine: short phases, a small working set.
RDMA_TIERSFLAGS ?= --duration 100ms --iterations 2000 --working-set 4MiB --parallel 2
RDMA_BENCH = /test/datenlord-node bench tiers --local --no-s3 --dir /var/tmp $(RDMA_TIERSFLAGS) \
	--json /test/out/tiers-rdma.json --plot /test/out/tiers-rdma.svg 2>&1 | tee /test/out/tiers-rdma.txt

.PHONY: deps build run test test-rdma bench bench-rdma clean

deps:
	@echo "==> deps: installing missing system packages (fuse3, util-linux, gcc, ca-certificates), checking /dev/fuse, downloading Go modules, installing versitygw"
	@./ci/deps.sh

build:
	@echo "==> build: $(BIN) (version $(VERSION), commit $(COMMIT))"
	@mkdir -p bin
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/datenlord-node

run: deps build
	@echo "==> run: serving $(DATA_DIR) at $(MOUNT) (Ctrl-C unmounts cleanly)"
	@mkdir -p $(MOUNT)
	@mkdir -p -m 0700 $(DATA_DIR)
	./$(BIN) serve --mount $(MOUNT) --data-dir $(DATA_DIR) $(ARGS)

test: deps
	@echo "==> test: gofmt, go vet, go test ./... (FUSE tests need root), the FUSE suites again on S3 (versitygw), RDMA tests in a soft-RoCE qemu guest, short fuzz runs"
	@./ci/test.sh

test-rdma:
	@echo "==> test-rdma: rdma/ and the two-node RDMA READ test on soft-RoCE (rdma_rxe) in a qemu guest, with ib_read_lat as the baseline (ci/rxe-run.sh)"
	@./ci/rxe-run.sh

bench: deps build
	@echo "==> bench: bench tiers --local (tiers.json, tiers.svg), bench cache (cache.json), go test -bench ./bench/... -> bench/results/"
	@mkdir -p bench/results
	./$(BIN) bench tiers --local --json bench/results/tiers.json --plot bench/results/tiers.svg $(TIERSFLAGS) 2>&1 | tee bench/results/tiers.txt
	./$(BIN) bench cache --json bench/results/cache.json 2>&1 | tee bench/results/cache.txt
	$(GO) test -run '^$$' -bench . -benchmem $(BENCHFLAGS) ./bench/... 2>&1 | tee bench/results/bench-$$(date -u +%Y%m%dT%H%M%SZ).txt

bench-rdma:
	@echo "==> bench-rdma: bench tiers --local inside the soft-RoCE qemu guest (ci/rxe-run.sh), adding neighbor/rdma and its ib_read_lat baseline -> bench/results/tiers-rdma.{txt,json,svg}"
	@mkdir -p bench/results
	RXE_TIMEOUT=$${RXE_TIMEOUT:-900} RXE_MEM=$${RXE_MEM:-2048} RXE_OUT=$(CURDIR)/bench/results ./ci/rxe-run.sh -- sh -c 'set -o pipefail; $(RDMA_BENCH)'

clean:
	@echo "==> clean: removing bin/, ci/out/ and the test cache"
	rm -rf bin ci/out
	$(GO) clean -testcache
