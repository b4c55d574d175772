# Quick start: `make demo` runs the demo, `make test` runs the tests. Both create .venv first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.citybrain-installed
# The first Python >= 3.11 on PATH, unless PYTHON is given.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck bench bench-sumo dist openapi clean

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "citybrain needs Python >= 3.11 on PATH (or PYTHON=/path/to/python3.11)" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# `make demo DEMO_ARGS=--keep-running` leaves the live system up for the console until Ctrl-C.
demo: $(STAMP)
	$(BIN)/citybrain demo $(DEMO_ARGS)

# pytest exits 5 when it collected no test: that is a failure here, said plainly.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating that as a failure" >&2; fi; \
	exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) typecheck

# mypy cannot follow setuptools' editable-install import hook, and our folders map onto
# citybrain.* subpackages; so it checks a regular (non-editable) build of the package.
typecheck: $(STAMP)
	rm -rf build/typecheck
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --target build/typecheck .
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p citybrain
	MYPYPATH=build/typecheck $(BIN)/mypy --config-file pyproject.toml --explicit-package-bases tests
	MYPYPATH=build/typecheck:tests:benchmarks $(BIN)/mypy --config-file pyproject.toml --explicit-package-bases benchmarks

# The API's OpenAPI document, generated from the messages (a test fails when the copy drifts).
openapi: $(STAMP)
	$(BIN)/python -m citybrain.cloud.openapi > docs/openapi.json

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-only -p no:cacheprovider

# Our engine against SUMO micro and meso on the same grid, routes and signal timing.
bench-sumo: $(STAMP)
	$(BIN)/python benchmarks/sumo_compare.py --rows 20 --cols 20 --duration 600 --demand moderate

# The wheel each machine installs with its part's extra, e.g. 'dist/citybrain-*.whl[edge]'.
dist: $(STAMP)
	rm -rf dist build/lib  # setuptools would pack files left in build/lib by an older build
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .benchmarks
