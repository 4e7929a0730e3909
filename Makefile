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
BENCH_ARGS ?=

.PHONY: all demo test bench chaos deps-deb clean $(VENV)

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

bench: $(STAMP)
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/submit.py

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
