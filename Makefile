# Cell — build, set up and test. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin
GOFLAGS_BUILD := -trimpath

.PHONY: all build setup image demo test test-unit test-fuzz test-e2e test-sdk bench-serve bench-net bench-sdk lint proto clean

all: build

build:
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/cell ./cmd/cell
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -ldflags="-s -w" -o $(BIN)/envd ./cmd/envd

# Installs the Debian packages Cell needs (only those missing).
setup:
	./scripts/setup.sh

# Builds the guest image (cached by recipe hash under $$CELL_HOME).
image: build
	$(BIN)/cell image build

# The main job: install, build, build the image, run a demo sandbox.
demo: setup build image
	$(BIN)/cell doctor
	$(BIN)/cell run -- python3 -c 'print(6*7)'

# Everything: unit tests with -race (no VMs), every fuzz target briefly, the end-to-end tests with
# real VMs, then E2B's own JS SDK (pinned in test/e2b-sdk) against `cell serve`.
test: setup build image lint test-unit test-fuzz test-e2e test-sdk

test-unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/)

# Every fuzz target for FUZZTIME each (10s here; the long runs: make test-fuzz FUZZTIME=10m).
FUZZTIME ?= 10s
test-fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz.sh

test-e2e:
	CELL_BIN=$(CURDIR)/$(BIN)/cell $(GO) test -count=1 -timeout 30m -v ./test/e2e/... 2>&1 | tee $(BIN)/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+\S+_test.go)' ; exit $${PIPESTATUS[0]}

# E2B's JS SDK, unchanged, against a `cell serve` with a fresh data directory (the image is
# taken from $$CELL_HOME's cache).
test-sdk: build
	cd test/e2b-sdk && npm ci --no-audit --no-fund --loglevel=error && \
	  CELL_BIN=$(CURDIR)/$(BIN)/cell CELL_IMAGE_HOME="$${CELL_HOME:-$$HOME/.local/share/cell}" npm test

# Benchmarks (real VMs): Go client through the proxy, then E2B's SDK. Not part of `make test`.
bench-serve: build
	CELL_BIN=$(CURDIR)/$(BIN)/cell $(GO) test -run '^$$' -bench BenchmarkServe -benchtime 20x -count 1 ./test/e2e/
bench-net: build
	CELL_BIN=$(CURDIR)/$(BIN)/cell $(GO) test -run '^$$' -bench 'BenchmarkNet|BenchmarkPort' -benchtime 5x -count 1 ./test/e2e/
	$(GO) test -run '^$$' -bench BenchmarkSetup -count 5 ./internal/netstack/
bench-sdk: build
	cd test/e2b-sdk && npm ci --no-audit --no-fund --loglevel=error && \
	  CELL_BIN=$(CURDIR)/$(BIN)/cell CELL_IMAGE_HOME="$${CELL_HOME:-$$HOME/.local/share/cell}" npm run bench

lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# Regenerates proto code (checked in) with pinned generators.
proto:
	cd proto && PATH="$$($(GO) env GOPATH)/bin:$$PATH" sh -c '\
	  $(GO) install github.com/bufbuild/buf/cmd/buf@v1.50.0 && \
	  $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12 && \
	  $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.21.1 && \
	  buf generate'

clean:
	rm -rf $(BIN)
