# Capsule — see README.md. The two set-up commands are `make run` and
# `make test`; everything else here is for developers.
SHELL := /bin/bash
.DEFAULT_GOAL := build

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w 
GOSRC     := $(shell find cmd internal gen -name '*.go' 2>/dev/null) go.mod go.sum
# Files capsule embeds besides Go code: the OpenAPI document and the /docs
# page; APIDOCS stands for the Swagger UI assets scripts/apidocs.sh copies
# from npm swagger-ui-dist (gitignored, so a fresh clone makes them here).
EMBED     := internal/api/openapi.yaml internal/api/apidocs/index.html internal/api/apidocs/capsule-docs.js
APIDOCS   := internal/api/apidocs/dist/swagger-ui-bundle.js
# The dashboard (web/app) that internal/webui embeds, built by
# scripts/webui.sh (cached by the content hash of its inputs).
WEBUI     := internal/webui/dist/index.html
WEBSRC    := $(shell find web/app/src web/app/static -type f 2>/dev/null) web/app/package.json \
             web/app/package-lock.json web/app/svelte.config.js web/app/vite.config.js scripts/webui.sh

.PHONY: deps build run test lint gotest fuzz sdktest sdkfull webtest bench generate check-generated clean

deps:
	@scripts/deps.sh

# envd runs inside guests: static, no cgo.
$(BIN)/envd: $(GOSRC)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/envd

$(APIDOCS): scripts/apidocs.sh web/apidocs/package.json web/apidocs/package-lock.json
	@scripts/apidocs.sh
	@touch $@

$(WEBUI): $(WEBSRC)
	@scripts/webui.sh
	@touch $@

$(BIN)/capsule: $(GOSRC) $(EMBED) $(APIDOCS) $(WEBUI)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/capsule

build: $(BIN)/envd $(BIN)/capsule

# The platform on this machine, in the foreground: the control plane (API on
# :8080) with its embedded PostgreSQL and host agent. Ctrl-C stops it.
run: deps build
	$(BIN)/capsule serve

lint:
	@out=$$(gofmt -l cmd internal gen sdk); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

gotest:
	@scripts/gotest.sh

# Every Go fuzz target for FUZZTIME each (default 2s); a crash fails.
fuzz:
	@scripts/fuzz.sh

sdktest: $(BIN)/envd
	@ENVD_BIN=$(CURDIR)/$(BIN)/envd tests/e2b-sdk/run.sh

# The unmodified E2B SDK against a real `capsule serve` (real VMs).
sdkfull: build
	@tests/e2b-sdk/fullstack/run.sh

# The dashboard in Debian's chromium (playwright-core) against a real
# `capsule serve` (real VMs): its flows, axe-core scans, screenshots in
# .ci-artifacts/screenshots.
webtest: build
	@tests/web/run.sh

test: deps build lint gotest fuzz sdktest sdkfull webtest

bench: build
	$(BIN)/capsule bench envd
	$(BIN)/capsule bench vm
	$(BIN)/capsule bench api
	$(BIN)/capsule bench density
	$(BIN)/capsule bench proxy
	$(BIN)/capsule bench hosts
	@tests/web/run.sh bench

generate:
	@scripts/generate.sh

# Fails when the committed generated code is not what `make generate` makes.
check-generated:
	@scripts/check-generated.sh

clean:
	rm -rf $(BIN) .cache
