"""A dataset written where a .dvc file tracks it goes into DVC's cache at once; anything else is left to the user."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.data.data_version import record_in_dvc
from components.data.demo import generate_demo

DVC = str(Path(sys.executable).parent / "dvc")


def dvc(root: Path, *args: str) -> str:
    return subprocess.run([DVC, *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repository whose data/raw.dvc tracks data/raw, with data/raw in its cache."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    generate_demo(tmp_path / "data" / "raw", size=30, seed=0)
    dvc(tmp_path, "add", "-q", "data/raw")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_rewritten_data_is_recorded_and_cached(repository):
    dvcfile = repository / "data" / "raw.dvc"
    recorded = dvcfile.read_text()
    shutil.rmtree(repository / ".dvc" / "cache")
    shutil.rmtree(repository / "data" / "raw")
    generate_demo(repository / "data" / "raw", size=30, seed=0)  # the same bytes again
    assert "not in cache" in dvc(repository, "status", "data/raw.dvc")

    same = record_in_dvc("data/raw")
    assert same is not None and not same.changed and same.dvcfile == Path("data/raw.dvc")
    assert dvcfile.read_text() == recorded
    assert "up to date" in dvc(repository, "status", "data/raw.dvc")

    shutil.rmtree(repository / "data" / "raw")
    generate_demo(repository / "data" / "raw", size=40, seed=1)  # other data
    other = record_in_dvc(repository / "data" / "raw")
    assert other is not None and other.changed and "git add data/raw.dvc" in other.summary()
    assert dvcfile.read_text() != recorded
    assert "up to date" in dvc(repository, "status", "data/raw.dvc")


def test_untracked_directories_and_plain_projects_are_left_alone(repository, tmp_path_factory):
    generate_demo(repository / "data" / "other", size=30, seed=0)
    assert record_in_dvc(repository / "data" / "other") is None
    assert not (repository / "data" / "other.dvc").exists()

    plain = tmp_path_factory.mktemp("plain")
    generate_demo(plain / "raw", size=30, seed=0)
    assert record_in_dvc(plain / "raw") is None


def test_a_dvc_project_outside_git_says_what_it_could_not_record(repository):
    shutil.rmtree(repository / ".git")
    shutil.rmtree(repository / "data" / "raw")
    generate_demo(repository / "data" / "raw", size=40, seed=1)
    recorded = record_in_dvc(repository / "data" / "raw")
    assert recorded is not None and recorded.problem and "not a git repository" in recorded.summary()
