# The README's quick start is `make demo` and `make test`; each builds .venv when it is missing
# or older than pyproject.toml, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint typecheck unit bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(PY) -m kiosk_sim demo

# For terminal integrators: the demo ledger and a switch in the foreground, until Ctrl-C.
serve: $(STAMP)
	$(PY) -m kiosk_sim serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest

test: lint typecheck unit

bench: $(STAMP)
	$(PY) -m bench

soak: $(STAMP)
	$(PY) -m kiosk_sim soak

clean:
	rm -rf $(VENV) .var .mypy_cache .ruff_cache .pytest_cache .hypothesis
