# tfkit developer commands. Every target creates .venv and installs what it
# needs, so each works from a fresh clone with only Python and PyPI access.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Tests run on both cores; override with `make test PYTEST_ARGS=...`.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: demo test test-full test-compat test-oldest test-newest install-check lint bench format clean help

help:
	@echo "make demo       train the quickstart example on offline digits data"
	@echo "make test       ruff + the whole test suite (CI runs this)"
	@echo "make test-full  also the full composition matrix and every schedule variant (TFKIT_FULL=1)"
	@echo "make test-compat  the non-slow suite under the oldest supported TensorFlow/Keras"
	@echo "                  (.venv-oldest, constraints-oldest.txt) and under the pinned newest"
	@echo "make install-check  pip install . into a clean venv, then import tfkit and run tfkit --version"
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

# The oldest supported TensorFlow/Keras (the minimums of pyproject.toml) in a
# venv of its own, pinned by constraints-oldest.txt.
OLDEST := .venv-oldest
$(OLDEST)/.installed: pyproject.toml constraints-oldest.txt
	@test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	@echo "installing tfkit[test,examples,tuner] into $(OLDEST) (pinned by constraints-oldest.txt) ..."
	@$(OLDEST)/bin/python -m pip install -q -c constraints-oldest.txt -e ".[test,examples,tuner]" || \
	  { echo "make: installing the oldest supported versions failed (see pip's error above)" >&2; exit 1; }
	@touch $@

# Compatibility: the non-slow suite under the oldest and the newest versions.
COMPAT_ARGS ?= $(PYTEST_ARGS) -m "not slow"
test-compat: test-oldest test-newest

test-oldest: $(OLDEST)/.installed
	TFKIT_COMPAT=oldest $(OLDEST)/bin/python -m pytest $(COMPAT_ARGS)

test-newest: $(VENV)/.installed-test+examples+tuner+tensorboard
	TFKIT_COMPAT=newest $(BIN)/python -m pytest $(COMPAT_ARGS)

# What a user gets from `pip install .`: a clean venv, no editable install, run
# from outside the source tree so that the installed copy is the one imported.
CHECK_VENV := build/install-check
install-check:
	rm -rf $(CHECK_VENV)
	$(PYTHON) -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/python -m pip install -q -c constraints.txt .
	cd $(CHECK_VENV) && bin/python -c "import tfkit, tfkit.schedules, pathlib; \
	  assert 'site-packages' in tfkit.__file__, tfkit.__file__; \
	  assert (pathlib.Path(tfkit.__file__).parent / 'py.typed').exists(); \
	  print('import tfkit', tfkit.__version__, 'from', tfkit.__file__)"
	$(CHECK_VENV)/bin/tfkit --version

demo: $(VENV)/.installed-examples
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.installed-test+examples+tuner+tensorboard
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-full: $(VENV)/.installed-test+examples+tuner+tensorboard
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
