# The two commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?=
STAMP := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export nnUNet_def_n_proc := 1
export nnUNet_compile := f

.PHONY: run test install clean-outputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## make run [PROFILE=smoke|quick|paper]: the whole pipeline of the active profile (dvc repro, two stages side by side)
run: $(STAMP)
	test -d .dvc || $(BIN)/dvc init --quiet
	$(if $(PROFILE),$(BIN)/stitch-ops profile $(PROFILE))
	$(BIN)/stitch-ops repro

## make test: the test suite (the slow end-to-end tests included, as in CI; the 25 slowest listed at the end),
## on two workers (pytest-xdist), one test file per worker at a time, the longest files first (tests/conftest.py)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

## remove everything the pipeline produced (data, models, predictions, metrics, MLflow store)
clean-outputs:
	rm -rf data models predictions metrics exports mlruns mlflow.db .dvc/cache .dvc/tmp
