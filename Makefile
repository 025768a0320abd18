# Two commands for a newcomer:  `make serve`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

.PHONY: serve test lint bench clean

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

bench: $(STAMP)  # make bench [SCENARIO=fanout] [ARGS="--soketi"]; python -m bench --help lists them
	$(BIN)/python -m bench $(or $(SCENARIO),fanout) $(ARGS)

clean:
	rm -rf $(VENV) tests/compat/node_modules
