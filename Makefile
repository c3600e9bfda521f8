# The two commands of README.md: `make run` and `make test`. Both set up
# everything they need from a fresh clone, starting with the virtualenv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BENCH_VENV := .venv-bench

SOAK_SECONDS ?= 60

.PHONY: run test soak bench system-deps clean

run: $(VENV)/.installed-run
	$(BIN)/reverserd --foreground

# ruff over src, tests and scripts, mypy --strict over src, the unit tests, and the
# end-to-end tests: every one runs, so one make test reports every finding, and any of them
# fails the target. The end-to-end tests mostly wait on processes and sockets, so the
# others run beside them, on the second core; their output follows.
test: $(VENV)/.installed-test $(BENCH_VENV)/.installed system-deps
	status=0; log=$$(mktemp); \
	( checks=0; \
	  $(BIN)/ruff check src tests scripts || checks=1; \
	  $(BIN)/mypy --strict src || checks=1; \
	  $(BIN)/pytest tests --ignore=tests/e2e -p no:cacheprovider || checks=1; \
	  exit $$checks ) > "$$log" 2>&1 & checks=$$!; \
	REVERSERD_BENCH_PYTHON=$(CURDIR)/$(BENCH_VENV)/bin/python $(BIN)/pytest tests/e2e \
		|| status=1; \
	wait $$checks || status=1; \
	cat "$$log"; rm -f "$$log"; \
	exit $$status

# A 15 s version runs in make test (tests/e2e/test_soak.py): hostile clients, signals and
# killed workers against a daemon with two workers, for SOAK_SECONDS; see README.
soak: $(VENV)/.installed-test
	$(BIN)/python scripts/soak.py --seconds $(SOAK_SECONDS)

# Not part of make test (a smoke test runs it for a second): reverserd against
# twistd, both loops, one and two workers; see README's performance section.
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python scripts/bench.py

system-deps:
	@bash scripts/apt-ensure netcat-openbsd sh -c 'nc -h 2>&1 | grep -q OpenBSD'
	@bash scripts/apt-ensure telnet sh -c 'command -v telnet'
	@bash scripts/apt-ensure util-linux sh -c 'command -v setpriv && command -v prlimit'
	@bash scripts/apt-ensure iproute2 sh -c 'command -v ss'
	@bash scripts/apt-ensure mount sh -c 'command -v mount && command -v umount'
	@bash scripts/apt-ensure procps sh -c 'command -v ps && command -v pgrep'
	@bash scripts/apt-ensure socat sh -c 'command -v socat'
	@bash scripts/apt-ensure openssl sh -c 'command -v openssl'
	@bash scripts/apt-ensure haproxy sh -c 'command -v haproxy || test -x /usr/sbin/haproxy'
	@bash scripts/apt-ensure systemd sh -c 'command -v systemd-socket-activate'
	@bash scripts/apt-ensure runit sh -c 'command -v runsv && command -v sv && command -v svlogd'
	@bash scripts/apt-ensure s6 sh -c 'command -v s6-supervise && command -v s6-svwait'
	@bash scripts/apt-ensure supervisor sh -c 'command -v supervisord && command -v supervisorctl'
	@bash scripts/apt-ensure logrotate sh -c 'command -v logrotate || test -x /usr/sbin/logrotate'
	@# Debian's own Python, whose re may be older: tests/test_graphemes.py segments with it too
	@bash scripts/apt-ensure python3 test -x /usr/bin/python3

$(BIN)/python:
	@bash scripts/apt-ensure python3-venv $(PYTHON) -c 'import ensurepip, venv'
	$(PYTHON) -m venv $(VENV)

# What pip needs to build the compiled parts (src/reverserd/_clusters.c, _lines.c): a C compiler
# and Python's headers. Without them pip still installs reverserd, with slower pure-Python paths.
define ENSURE_COMPILER
@bash scripts/apt-ensure gcc sh -c 'command -v cc'
@bash scripts/apt-ensure libc6-dev test -e /usr/include/stdio.h
@bash scripts/apt-ensure python3-dev $(PYTHON) -c 'import os, sysconfig; \
	assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))'
endef
INSTALLED_FROM := $(BIN)/python setup.cfg setup.py pyproject.toml src/reverserd/_clusters.c \
	src/reverserd/_lines.c

$(VENV)/.installed-run: $(INSTALLED_FROM)
	$(ENSURE_COMPILER)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(INSTALLED_FROM)
	$(ENSURE_COMPILER)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,uvloop]'
	touch $@ $(VENV)/.installed-run

$(BENCH_VENV)/.installed: $(INSTALLED_FROM) scripts/bench-requirements.txt scripts/bench_client.c
	$(ENSURE_COMPILER)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[uvloop]' \
		-r scripts/bench-requirements.txt
	cc -O2 -Wall -Wextra -o $(BENCH_VENV)/bin/bench_client scripts/bench_client.c
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) build src/*.egg-info .pytest_cache .hypothesis
