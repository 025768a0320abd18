# Two commands for a newcomer:  `make serve`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

.PHONY: serve test quick lint bench clean image

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,redis,bench]"
	touch $(STAMP)

tests/compat/node_modules/.package-lock.json: tests/compat/package-lock.json
	cd tests/compat && npm ci --no-audit --no-fund
	touch $@

serve: $(STAMP)
	$(BIN)/pushwire serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund
	touch $@

test: $(STAMP) tests/compat/node_modules/.package-lock.json tests/browser/node_modules/.package-lock.json lint
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

quick: $(STAMP) lint  # the loop of under a minute: no test marked slow (README, "Quick start")
	$(BIN)/pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

# `make image [BASE=debian-with-python3.11+] [TAG=...] [ENGINE=podman|docker]`: podman when it
# is installed (it needs no daemon), else docker. A CONTAINERS_CONF in the environment is used
# as it is. With podman the build uses the host's network and its CA bundle (for pip).
BASE ?= python:3.12-slim
TAG ?= pushwire:latest
CA_BUNDLE ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt))
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)

image:
ifeq ($(ENGINE),podman)
	podman build --format docker --network host \
	  $(if $(CA_BUNDLE),--volume $(CA_BUNDLE):$(CA_BUNDLE):ro --build-arg PIP_CERT=$(CA_BUNDLE)) \
	  --build-arg BASE=$(BASE) -t $(TAG) -f Dockerfile .
else
	docker build --build-arg BASE=$(BASE) -t $(TAG) -f Dockerfile .
endif

bench: $(STAMP)  # make bench [SCENARIO=fanout] [ARGS="--soketi"]; python -m bench --help lists them
	$(BIN)/python -m bench $(or $(SCENARIO),fanout) $(ARGS)

clean:
	rm -rf $(VENV) tests/compat/node_modules
