# Two commands for a newcomer: `make run` (set up, then the pipeline on the demo data) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# The virtualenv's tools come first on PATH for every recipe: `msa`, and the `python` that DVC's stages run
# (`python -m flows.cli`); outside make, activate .venv before `dvc repro`.
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-all lint typecheck clean

# librosa compiles its numba kernels on first use into a cache inside the venv, shared by every process; first uses
# at once (test workers, the clip pool) race on it, and a process that loads a half-written entry crashes: the last
# step compiles them once.
# torch first and pinned: a bare `torch` requirement would pull several GB of CUDA wheels.
# constraints.txt pins the versions the demo data's DVC hash was made with (parquet records its writer).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "import numpy; from components.core.config import AudioClipParams; from components.data.media import \
	audio_features; audio_features(numpy.zeros(16000, numpy.float32), AudioClipParams())"
	touch $@

install: $(VENV)/.installed

# The whole pipeline as one Prefect flow on the ephemeral API (no server); `dvc repro` runs the same stages.
# Then `dvc commit` records what the flow wrote in dvc.lock and DVC's cache: `dvc status` is clean, `dvc push`
# uploads it, and dvc.lock describes the metrics/ on disk (the flow runs the stages' own functions and settings).
run: install
	msa data demo
	msa run
	dvc commit --force --quiet

# The README's test command, and what CI runs (.ci/run): lint and typecheck first (seconds), then the suite.
test: lint typecheck
	pytest

# Also the tests marked slow (the team-setup guide's block on PostgreSQL with authentication: about 4 minutes).
test-all: install
	pytest -m 'slow or not slow'

# ruff's rules and style, and import-linter's contracts in pyproject.toml: the layers of components/ (a module imports
# only its own layer and lower ones), the library never importing flows/, and only flows/ importing the featurize stage.
lint: install
	ruff check .
	ruff format --check .
	lint-imports

# mypy over components/ and flows/ (settings in pyproject.toml).
typecheck: install
	mypy

clean:
	rm -rf reports .pytest_cache

.PHONY: docs docs-serve

# The docs site (mkdocs.yml) into site/, strict: a broken link or anchor, or a page left out of the nav, fails it.
# The reference pages (CLI, params.yaml) and the benchmarks page are generated from the code and bench/results.
docs: install
	mkdocs build --strict

# The same site at http://127.0.0.1:8000, rebuilt on every change to docs/ or to the code it is generated from.
docs-serve: install
	mkdocs serve
