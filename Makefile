# Two entry points: `make demo` (the demo pipeline) and `make test` (the test suite).
# Both install what they need: a virtualenv with the package, Debian packages
# (redis-server; chromium for the dashboard tests) and Kafka's jars (on first `up`).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := redis-server chromium

.PHONY: demo test setup system-deps lint bench clean

$(BIN)/tierflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/tierflow

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/tierflow demo

test: setup system-deps
	$(BIN)/tierflow up
	$(BIN)/ruff check pipeline agents schemas infra tests bench examples
	$(BIN)/pytest -q --timeout 1800

lint: setup
	$(BIN)/ruff check pipeline agents schemas infra tests bench examples

# Quix Streams pins an older confluent-kafka, so it lives in its own venv (bench/README.md),
# with tierflow installed there without its dependencies for the pure code it reuses.
QUIX_VENV := $(VENV)/quix
BENCH_ARGS ?=

$(QUIX_VENV)/bin/quix-ready: pyproject.toml
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/pip install --quiet quixstreams msgspec orjson 'redis[hiredis]'
	$(QUIX_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/bench-ready: pyproject.toml $(BIN)/tierflow
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

# The full run takes about 15 minutes; BENCH_ARGS=--quick about 4 (bench/README.md).
bench: setup $(VENV)/bench-ready $(QUIX_VENV)/bin/quix-ready
	$(BIN)/tierflow up
	$(BIN)/python -m bench --readme --quix-python $(QUIX_VENV)/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
