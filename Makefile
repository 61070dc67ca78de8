# Warden developer tasks. `make test` is the one command CI runs.
GO      ?= go
PKGS    ?= ./...
FUZZTIME ?= 15s

.PHONY: all build test race deps vet fuzz clean

all: build

build:
	$(GO) build -o bin/warden ./cmd/warden

# deps installs the outside tools the integration tests drive for real.
# It needs root (or sudo) only when something is missing.
deps:
	@missing=""; \
	command -v mosquitto_pub >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	{ command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto"; \
	command -v sslscan >/dev/null 2>&1 || missing="$$missing sslscan"; \
	command -v testssl >/dev/null 2>&1 || command -v testssl.sh >/dev/null 2>&1 || missing="$$missing testssl.sh"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

test: deps vet
	CI=$${CI:-true} $(GO) test -count=1 -timeout 12m $(PKGS)

# race runs every test under the race detector, including warden serve
# itself in the integration tests (E2E_RACE=1 builds it with -race).
race: deps
	CI=$${CI:-true} E2E_RACE=1 $(GO) test -race -count=1 -timeout 20m $(PKGS)

# fuzz runs every fuzz target for FUZZTIME each (not part of `make test`;
# the committed seed corpora run as ordinary tests there).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf bin
