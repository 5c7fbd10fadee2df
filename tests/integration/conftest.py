"""Integration fixtures: the real `msa` and `dvc` executables of this environment, run as a user would."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.shell import BIN, run

REPO = Path(__file__).resolve().parents[2]
# What a fresh clone holds that the pipeline's commands read: `python -m flows.cli` runs the copy's code.
PROJECT_FILES = (
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    "data.dvc",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    "data/.gitignore",
    "components",
    "flows",
    "metrics",
)


@pytest.fixture
def msa() -> Callable[..., subprocess.CompletedProcess[str]]:
    def call(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(BIN / "msa"), *args], cwd=cwd, check=check)

    return call


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git + DVC checkout of the project's pipeline files, as a fresh clone has them."""
    root = copy_project(tmp_path / "project", PROJECT_FILES)
    run(["git", "init", "-q"], cwd=root)
    return root


def copy_project(root: Path, names: tuple[str, ...]) -> Path:
    """Copy these files and directories of the repository to `root` (those it has: dvc.lock appears with the
    first `dvc repro`)."""
    for name in names:
        source, target = REPO / name, root / name
        if not source.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return root
