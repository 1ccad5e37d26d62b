# make demo: install and materialize the whole graph on the built-in demo dataset.
# make test: install (Chromium too, as root) and run the test suite.   make ui: the Dagster UI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
# Python caches the bytecode of what it imports (__pycache__, in the venv and the project); where
# the shell asks it not to, every process compiles torch, dagster and the rest again: about 8 s
# before a run or a test's subprocess starts. The venv and the caches are this project's own.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo ablation ui test chromium clean

# --no-compile: byte-compiling every installed module (torch, sympy, dagster: tens of thousands
# of files) costs most of a minute; Python compiles the few it imports on first use instead.
# The venv's own pip is recent enough for an editable pyproject install, so it is not upgraded.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The project-local instance: SQLite storage under .dagster_home, no telemetry (runs offline).
$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	@printf 'telemetry:\n  enabled: false\n' > $@

# PRECISION=fp32 (or bf16) overrides the demo config's "auto" for the encoder and the trainer.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/animal-assets run --config demo --json var/demo-run.json $(if $(PRECISION),--precision $(PRECISION))

# The demo's ablation at seeds 0 and 1 (three more trainings), after `make demo`.
ablation: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/animal-assets run --config demo-ablation --select ablation_report --json var/ablation-run.json

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# One pytest-xdist worker per core; each test module stays on one worker, so its fixtures are
# built once (tests/conftest.py gives each worker its share of the cores' threads).
test: install chromium
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# tests/test_browser.py drives Debian's headless Chromium: installed here when missing and run
# as root; otherwise say how (the test fails without it unless ANIMAL_ASSETS_SKIP_BROWSER=1).
chromium:
	@if [ "$$ANIMAL_ASSETS_SKIP_BROWSER" != 1 ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "make test: Chromium is missing; install it (sudo apt-get install -y chromium)" \
	      "or set ANIMAL_ASSETS_SKIP_BROWSER=1 to skip the browser test" >&2; \
	  fi; \
	fi

clean:
	rm -rf var .dagster_home
