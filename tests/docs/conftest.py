"""The project a newcomer has after `make run`, built once per session with small settings, and a fresh copy of it
(and of its HOME) for each page or example that runs in it."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.shell import BIN, environment

REPO = Path(__file__).resolve().parents[2]
VENV = BIN.parent
# The repository's params.yaml with a small demo and tiny models (comments and layout kept): a few minutes in all.
SMALL = {
    "data.demo.size": 60,
    "featurize.image_size": 8,
    "model.hidden": 8,
    "model.textcnn.feature_maps": 4,
    "train.epochs": 2,
    "train.batch_size": 8,
    "compress.variants": "[prune_unstructured, onnx_int8]",
    "compress.finetune_epochs": 1,
    "compress.latency_runs": 3,
    "compress.throughput_batch": 4,
}
# A new user's shell has none of these; the tests' own process has some (tests/conftest.py's pytest_configure).
UNSET = (
    "PREFECT_HOME",
    "XDG_CONFIG_HOME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "MSA_SIGNING_KEY",
    "MSA_TRUSTED_KEYS",
    "MSA_TRUST_MODEL",
    "VIRTUAL_ENV",
    "PYTEST_CURRENT_TEST",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_TESTRUNUID",
)
GIT = {
    "GIT_AUTHOR_NAME": "newcomer",
    "GIT_AUTHOR_EMAIL": "newcomer@example.invalid",
    "GIT_COMMITTER_NAME": "newcomer",
    "GIT_COMMITTER_EMAIL": "newcomer@example.invalid",
}


@dataclass(frozen=True)
class Built:
    project: Path  # where it was built and where every copy goes: MLflow's database names its artifacts by path
    home: Path  # the HOME it was built with: the signing key registration made, Prefect's home
    snapshot: Path  # both, as they were when the build ended


def set_param(text: str, dotted: str, value: object) -> str:
    """`text` (a params.yaml) with the setting `dotted` (section.key[.key]) set to `value`, its comment kept."""
    keys, start, indent = dotted.split("."), 0, ""
    lines = text.splitlines(keepends=True)
    for depth, key in enumerate(keys):
        pattern = re.compile(rf"^{indent}{re.escape(key)}:(?P<rest>.*)$")
        for i in range(start, len(lines)):
            if found := pattern.match(lines[i].rstrip("\n")):
                break
            if i > start and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) < len(indent):
                raise KeyError(dotted)  # left the enclosing section
        else:
            raise KeyError(dotted)
        if depth == len(keys) - 1:
            rest = found.group("rest")
            comment = re.search(r"\s+#.*$", rest)
            lines[i] = f"{indent}{key}: {value}{comment.group(0) if comment else ''}\n"
        start, indent = i + 1, indent + "  "
    return "".join(lines)


def small_params(text: str, text_model: Path) -> str:
    for dotted, value in {**SMALL, "featurize.text_model": text_model}.items():
        text = set_param(text, dotted, value)
    return text


def tracked_files() -> list[str]:
    """What a clone holds: the repository's tracked files and those git would track (not ignored), e.g. pages and
    examples not committed yet."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listing.stdout.split("\0") if name and (REPO / name).is_file()]


def clone(target: Path) -> Path:
    for name in tracked_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    link_venv(target / ".venv")
    return target


def link_venv(venv: Path) -> None:
    """`.venv` of the copy: the environment's own entries linked, and a `.installed` of its own, newer than the
    copy's pyproject.toml, so that a `make` in the copy finds it installed and never reinstalls into the shared
    environment from the copy."""
    venv.mkdir()
    for entry in VENV.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()


def user_environment(built: Built, **extra: str) -> dict[str, str]:
    """A newcomer's shell in the built project: the venv first on PATH, HOME the build's, none of the test session's
    settings. `msa` runs the project's code, as in a clone installed with `pip install -e .` (the shared venv's
    editable install points at the repository, which may change while the session runs: the project's code is
    what its models were trained and hashed with)."""
    env = environment(HOME=str(built.home), PYTHONPATH=str(built.project), **GIT, **extra)
    for name in UNSET:
        env.pop(name, None)
    return env


def run_in(project: Path, env: dict[str, str], *args: str, timeout: float = 1800) -> str:
    result = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Built:
    """A clone where `make run`'s commands ran with small settings (committed with data.dvc, so that the clone's
    HEAD names the data it holds, as the repository's does for the full demo): the demo dataset (in DVC), every stage's
    outputs (models/, metrics/, reports/), the model registered as msa-demo@champion in ./mlflow.db, and `dvc
    commit` after it. Built in place, then snapshotted: `fresh_project` puts a copy back at the same path."""
    base = tmp_path_factory.mktemp("docs-project")
    project, home = clone(base / "msa-pipeline"), base / "home"
    home.mkdir()
    params = project / "params.yaml"
    params.write_text(small_params(params.read_text(), tiny_text_model))
    env = user_environment(Built(project, home, base / "snapshot"))
    run_in(project, env, "git", "init", "-q", "-b", "main")
    run_in(project, env, "git", "add", "-A")
    run_in(project, env, "git", "commit", "-q", "-m", "clone")
    started = time.monotonic()
    run_in(project, env, "msa", "data", "demo")
    # The clone's data.dvc records the small demo, as the repository's records the full one: what a Prefect
    # worker clones and `dvc pull`s is the dataset the pages push.
    run_in(project, env, "git", "commit", "-q", "-m", "the small demo", "data.dvc")
    run_in(project, env, "msa", "run")
    run_in(project, env, "dvc", "commit", "--force", "--quiet")
    print(f"docs project built in {time.monotonic() - started:.0f} s")
    snapshot = base / "snapshot"
    snapshot.mkdir()
    shutil.copytree(project, snapshot / "project", symlinks=True)
    shutil.copytree(home, snapshot / "home", symlinks=True)
    return Built(project, home, snapshot)


@pytest.fixture
def fresh_project(built_project: Built) -> Built:
    """The built project and its HOME as the build left them, whatever an earlier page did to them."""
    for path, saved in ((built_project.project, "project"), (built_project.home, "home")):
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(built_project.snapshot / saved, path, symlinks=True)
    return built_project


def loads_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())
