# The two commands of README.md: `make run` and `make test`. Both set up
# everything they need from a fresh clone, starting with the virtualenv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test system-deps clean

run: $(VENV)/.installed-run
	$(BIN)/reverserd --foreground

test: $(VENV)/.installed-test system-deps
	$(BIN)/pytest

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
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-run

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
