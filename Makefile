# tfkit developer commands. Every target creates .venv and installs what it
# needs, so each works from a fresh clone with only Python and PyPI access.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Tests run on both cores; override with `make test PYTEST_ARGS=...`.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: demo test test-full lint bench format clean help

help:
	@echo "make demo       train the quickstart example on offline digits data"
	@echo "make test       ruff + the whole test suite (CI runs this)"
	@echo "make test-full  also the full composition matrix and every schedule variant (TFKIT_FULL=1)"
	@echo "make bench      ratio benchmarks (side by side, medians of repeats)"
	@echo "make lint       ruff check"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "tfkit needs Python >= 3.10 (found: $$($(PYTHON) --version 2>&1))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# One stamp per extras set: re-installs only when pyproject/constraints change.
$(VENV)/.installed-%: pyproject.toml constraints.txt | $(BIN)/python
	@$(PIP) install -q --upgrade pip >/dev/null 2>&1 || true
	@echo "installing tfkit[$*] into $(VENV) (pinned by constraints.txt) ..."
	@$(PIP) install -q -c constraints.txt -e ".[$(subst +,$(comma),$*)]" || \
	  { echo "make: installing tfkit[$*] failed -- is PyPI reachable from this machine? (see pip's error above)" >&2; exit 1; }
	@touch $@

comma := ,

demo: $(VENV)/.installed-examples
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.installed-test+examples+tuner
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-full: $(VENV)/.installed-test+examples+tuner
	$(BIN)/ruff check .
	TFKIT_FULL=1 $(BIN)/python -m pytest $(PYTEST_ARGS)  # full matrix and variants

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed-test+examples
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache .ruff_cache build *.egg-info
