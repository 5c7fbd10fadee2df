# Two commands for a newcomer: `make run` (set up, then the pipeline on the demo data) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# The virtualenv's tools come first on PATH for every recipe: `msa`, and the `python` that DVC's stages run
# (`python -m flows.cli`); outside make, activate .venv before `dvc repro`.
export PATH := $(BIN):$(PATH)

.PHONY: install run test test-all lint typecheck clean wheelhouse image base-image

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

# The pipeline's image (Dockerfile; docs/how-to/containers.md). BASE: the base image, by default the slim Python
# image of the wheelhouse's Python. TORCH and TORCH_INDEX: the torch build (a CUDA index for GPU pools). CA_CERTS:
# the CA certificates pip trusts inside the build, a build secret that no layer keeps (a TLS-intercepting proxy's).
IMAGE ?= msa-pipeline
TAG ?= latest
# The wheelhouse is resolved for the Python that makes it, to the patch release; the default base has that Python.
PYTHON_VERSION = $(shell $(PYTHON) -c 'import platform; print(platform.python_version())')
BASE ?= python:$(PYTHON_VERSION)-slim-bookworm
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
CA_CERTS ?= /etc/ssl/certs/ca-certificates.crt
DOCKER ?= docker
REVISION = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

# Every wheel the image installs, made here with this machine's indexes and certificates, so that the build reaches
# no index: torch (from TORCH_INDEX when set), then the project's requirements at constraints.txt's versions.
wheelhouse:
	$(PYTHON) -m devtools.images wheelhouse --out build/wheels --torch "$(TORCH)" --torch-index "$(TORCH_INDEX)"

image: wheelhouse
	DOCKER_BUILDKIT=1 $(DOCKER) build --secret id=ca,src=$(CA_CERTS) --build-arg BASE=$(BASE) \
	  --build-arg TORCH="$(TORCH)" --build-arg PIP_NO_INDEX=1 --build-arg REVISION=$(REVISION) -t $(IMAGE):$(TAG) .
	$(DOCKER) image ls $(IMAGE):$(TAG)

# A base image made from Debian's packages (debootstrap, as root) for a Docker that reaches no image registry:
# `make image BASE=<its tag> PYTHON=/usr/bin/python3` then builds on it (the wheelhouse from Debian's Python).
base-image:
	$(PYTHON) -m devtools.images base

.PHONY: docs docs-serve

# The docs site (mkdocs.yml) into site/, strict: a broken link or anchor, or a page left out of the nav, fails it.
# The reference pages (CLI, params.yaml) and the benchmarks page are generated from the code and bench/results.
docs: install
	mkdocs build --strict

# The same site at http://127.0.0.1:8000, rebuilt on every change to docs/ or to the code it is generated from.
docs-serve: install
	mkdocs serve
