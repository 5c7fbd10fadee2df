"""End-to-end fixtures: a tiny project that has run every stage, and a real MLflow tracking server on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_dataset
from tests.e2e.servers import free_port, serving


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def write_params(root: Path, text_model: Path, **sections: dict) -> Path:
    params = {
        "data": {"raw": "data/raw"},
        "featurize": {"text_model": str(text_model), "image_size": 8},
        "model": {"hidden": 8, "dropout": 0.0, "textcnn": {"feature_maps": 4, "dropout": 0.0}},
        "train": {"epochs": 3, "batch_size": 2, "patience": 10},
        "compress": {"latency_runs": 3, "throughput_batch": 4, "finetune_epochs": 1},
        "register": {"retries": 0, "timeout": 20},
    }
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Path:
    """A project directory where featurize, train, evaluate, robustness and compress have run on the tiny dataset."""
    from components.compression.compress import compress
    from components.core.config import load_params
    from components.evaluation.evaluate import evaluate
    from components.evaluation.robustness import robustness
    from components.features.featurize import featurize
    from components.training.train import train

    root = tmp_path_factory.mktemp("project")
    tiny_dataset(root / "data", name="raw")
    write_params(root, tiny_text_model)
    with working_directory(root):
        p = load_params()
        featurize(p.data.raw, p.featurize, progress=False)
        train(p.featurize.out, p.model, p.train, progress=False)
        evaluate(p.featurize.out, p.train.out, p.evaluate, progress=False)
        robustness(p.data.raw, p.featurize.out, p.train.out, p.robustness, progress=False)
        compress(p.featurize.out, p.train.out, p.compress, p.train, progress=False)
    return root


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts, as a team would run it."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    args = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    args += ["--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with serving(args, f"http://127.0.0.1:{port}/health", root / "server.log", cwd=root):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _forget_tracking_uri() -> Iterator[None]:
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI (for subprocesses): undo it after each test, so
    that no later test's `msa` talks to this module's server."""
    yield
    import mlflow

    mlflow.set_tracking_uri(None)
