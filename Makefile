# The two commands of README.md: `make run` and `make test`. Both set up
# everything they need from a fresh clone, starting with the virtualenv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BENCH_VENV := .venv-bench

.PHONY: run test bench system-deps clean

run: $(VENV)/.installed-run
	$(BIN)/reverserd --foreground

test: $(VENV)/.installed-test $(BENCH_VENV)/.installed system-deps
	REVERSERD_BENCH_PYTHON=$(CURDIR)/$(BENCH_VENV)/bin/python $(BIN)/pytest

# Not part of make test (a smoke test runs it for a second): reverserd against
# twistd, both loops, one and two workers; see README's performance section.
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python scripts/bench.py

system-deps:
	@bash scripts/apt-ensure netcat-openbsd sh -c 'nc -h 2>&1 | grep -q OpenBSD'
	@bash scripts/apt-ensure telnet sh -c 'command -v telnet'
	@bash scripts/apt-ensure util-linux sh -c 'command -v setpriv'
	@bash scripts/apt-ensure procps sh -c 'command -v ps && command -v pgrep'

$(BIN)/python:
	@bash scripts/apt-ensure python3-venv $(PYTHON) -c 'import ensurepip, venv'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,uvloop]'
	touch $@ $(VENV)/.installed-run

$(BENCH_VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml scripts/bench-requirements.txt \
		scripts/bench_client.c
	@bash scripts/apt-ensure gcc sh -c 'command -v cc'
	@bash scripts/apt-ensure libc6-dev test -e /usr/include/stdio.h
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[uvloop]' \
		-r scripts/bench-requirements.txt
	cc -O2 -Wall -Wextra -o $(BENCH_VENV)/bin/bench_client scripts/bench_client.c
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) build src/*.egg-info .pytest_cache .hypothesis
