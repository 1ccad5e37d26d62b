# make demo: install and materialize the whole graph on the built-in demo dataset.
# make test: install and run the test suite.   make ui: the Dagster UI on the same instance.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: install demo ui test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The project-local instance: SQLite storage under .dagster_home, no telemetry (runs offline).
$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	@printf 'telemetry:\n  enabled: false\n' > $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/animal-assets run --config demo --json var/demo-run.json

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf var .dagster_home
