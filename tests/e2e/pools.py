"""What the work-pool tests share: a git repository of the tiny project whose dataset sits on a DVC remote, as a
team's repository does, and the logs and processes of the workers they start."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import yaml

from tests.conftest import tiny_dataset
from tests.e2e.conftest import write_params
from tests.integration.conftest import PROJECT_FILES, REPO, copy_project
from tests.integration.shell import BIN, run

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "CLONE_FILES",
    "DVC_YAML_PARAMS",
    "MODEL",
    "kill_tree",
    "make_repository",
    "sha256",
    "stored_checkpoint",
    "tail",
]

# What a clone of the repository holds that a worker's flow run reads: the pipeline's files, the deployments and the
# flow code itself (a worker imports flows/ and components/ from its clone, not from an installed package).
CLONE_FILES = (*PROJECT_FILES, ".dvc/.gitignore", "prefect.yaml")
TEXT_MODEL = "text-model"
MODEL = "raw"  # the registered model is named after the dataset, and tiny_dataset(name="raw") names it so
# The params dvc.yaml interpolates (DVC parses it on `dvc add` and `dvc pull`): the values of the repository's own.
DVC_YAML_PARAMS = sorted(set(re.findall(r"\$\{(\w+)\.(\w+)\}", (REPO / "dvc.yaml").read_text())))


def make_repository(root: Path, text_model: Path, *, remote: str, store: Path, epochs: int, silence: int) -> str:
    """A git repository of the project whose data/raw is tracked by data.dvc, with training dispatched to the gpu
    pool (`epochs` epochs, the pipeline giving up on a silent worker after `silence` s); returns its commit. The
    committed DVC remote is `remote` (a URL, or the directory `store`); the dataset is pushed into `store`."""
    copy_project(root, CLONE_FILES)
    defaults, paths = yaml.safe_load((REPO / "params.yaml").read_text()), {}
    for section, key in DVC_YAML_PARAMS:
        paths.setdefault(section, {})[key] = defaults[section][key]
    paths["train"] |= {"epochs": epochs, "batch_size": 2, "patience": epochs}
    pipeline = {"training": "deployment", "retries": 1, "retry_delay": 1, "train_silence": silence}
    # The text encoder is committed with the project: a worker's clone is all it has on its disk.
    shutil.copytree(text_model, root / TEXT_MODEL)
    write_params(root, Path(TEXT_MODEL), pipeline=pipeline, **paths)
    tiny_dataset(root / "data", name="raw")
    dvc, git = str(BIN / "dvc"), ["git", "-c", "user.name=msa-test", "-c", "user.email=msa-test@example.invalid"]
    run(["git", "init", "-q", "-b", "main"], cwd=root)
    run([dvc, "remote", "add", "--default", "--force", "storage", remote], cwd=root)
    run([dvc, "remote", "add", "--local", "--force", "store", str(store)], cwd=root)  # .dvc/config.local: not committed
    run([dvc, "add", "-q", "data/raw"], cwd=root)
    run([dvc, "push", "-q", "--remote", "store"], cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run([*git, "commit", "-q", "-m", "tiny project"], cwd=root)
    return run(["git", "rev-parse", "HEAD"], cwd=root).stdout.strip()


def tail(path: Path, chars: int = 6000) -> str:
    """The end of a log, without progress bars."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(line for line in text[-chars:].splitlines() if not re.search(r"it/s|step/s", line))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_tree(process) -> None:
    """SIGKILL a worker and every process it started (its flow runs may sit in sessions of their own)."""
    parent = psutil.Process(process.pid)
    for child in [*parent.children(recursive=True), parent]:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait()


def stored_checkpoint(mlflow: MlflowClient, deadline: float, diagnostics: Callable[[], str]) -> Run:
    """The train run of the pipeline's training, once it has stored a checkpoint on the tracking server."""
    while True:
        assert time.monotonic() < deadline, f"no stored checkpoint:\n{diagnostics()}"
        experiment = mlflow.get_experiment_by_name(MODEL)
        trains = mlflow.search_runs([experiment.experiment_id], "tags.`msa.kind` = 'train'") if experiment else []
        if trains and mlflow.list_artifacts(trains[0].info.run_id, "checkpoints"):
            return trains[0]
        time.sleep(0.2)
