# simx: `make demo` runs the example batch on a local stack; `make test` runs the whole suite.
# Both set everything up first: a .venv made from pyproject.toml (remade when it changes)
# and, for the tests, the Debian packages in DEBS.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests need (installed by `make deps-deb` when run as root):
# procps (ps/pkill in ops tests), postgresql (runq on a throwaway PostgreSQL cluster),
# chromium (the dashboard tests drive it through Playwright), curl (HTTPS to runweb in tests/test_tls.py),
# openssh-server + iproute2 (remote ops tests: private sshd hosts, network namespaces).
DEBS   := procps postgresql chromium curl openssh-server iproute2
# Debian packages the benchmarks need: wrk (P6), redis-server (the peers' broker), openssl (TLS runs).
BENCH_DEBS := wrk redis-server openssl procps
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

.PHONY: all demo test bench bench-peers bench-deps chaos deps-deb clean $(VENV)

all: test

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# KEEP=1 leaves the demo stack running (it prints how to stop it).
demo: $(STAMP)
	$(BIN)/fab demo $(if $(filter-out 0,$(KEEP)),--keep)

test: deps-deb $(STAMP)
	$(BIN)/python -m pytest -q

# The benchmark extra (peers, py-spy) and Debian tools; never runtime dependencies.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)
	@$(MAKE) --no-print-directory deps-deb DEBS="$(BENCH_DEBS)"

# Every simx benchmark (targets P1-P9 of issue 10, runq's ceiling, profiles) and one table,
# about 10 minutes.  BENCH_ARGS: --quick (about 3 minutes), --no-secure, --only p1,p5, --no-profile
bench: bench-deps
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

# simx beside huey, dramatiq, celery and RQ on a private redis-server, same run, one table.
# PEERS_ARGS: --counts 1,2,4,8,16, --repeat N, --peers huey,rq, --redis none
bench-peers: bench-deps
	$(BIN)/python bench/peers.py $(PEERS_ARGS)

# runq and workers killed at random for CHAOS_SECONDS (300); prints runs, finished, duplicates, lost
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py --seconds $(or $(CHAOS_SECONDS),300)

deps-deb:
	@missing=""; \
	for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	else \
	  echo "missing Debian packages the tests need:$$missing" >&2; \
	  echo "install them (as root: apt-get install$$missing) or run make as root" >&2; \
	  exit 1; \
	fi

clean:
	@if [ -x $(BIN)/fab ] && [ -d var/demo ]; then SIMX_VAR=$(CURDIR)/var/demo $(BIN)/fab shutdown || true; fi
	rm -rf $(VENV) .pytest_cache build *.egg-info var/demo
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
