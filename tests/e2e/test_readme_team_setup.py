"""README.md's "Team setup" block, run as written in a fresh clone: an MLflow server with proxied artifacts, a Prefect
server, a DVC remote holding the demo data, two pools and deployments, a worker per pool with a workdir of its own,
and a retrain that dispatches training to the gpu pool and registers. If the README drifts from what works, this
fails.

Only the project's settings are the test's own (a small demo dataset and tiny models, so that it runs in minutes):
the commands are the README's, on the ports and paths it names, under a temporary HOME.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.integration.conftest import PROJECT_FILES, REPO, copy_project
from tests.integration.shell import environment, run

pytestmark = pytest.mark.e2e

CLONE_FILES = (*PROJECT_FILES, ".gitignore", ".dvc/.gitignore", "prefect.yaml", "flows", "README.md")
BLOCK = re.compile(r"<!-- team-setup: begin -->\n```bash\n(.*?)```\n<!-- team-setup: end -->", re.S)
PORTS = (4200, 5000)  # the README's servers


def team_setup_block() -> str:
    found = BLOCK.search((REPO / "README.md").read_text())
    assert found, "README.md has no team-setup block"
    return found.group(1)


def port_free(port: int) -> bool:
    return all(c.laddr.port != port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN)


def stop_group(pgid: int) -> None:
    """Stop everything the block started in the background (servers, workers and their children): they outlive the
    shell, in its process group. TERM first, then KILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_in_group(p, pgid) for p in psutil.process_iter()):
            time.sleep(0.5)


def _in_group(process: psutil.Process, pgid: int) -> bool:
    with contextlib.suppress(psutil.Error, ProcessLookupError):
        return os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE
    return False


def test_the_readme_team_setup_block_runs_as_written(tmp_path: Path, tiny_text_model: Path) -> None:
    if not all(port_free(p) for p in PORTS):
        pytest.fail(f"the README's ports {PORTS} are taken on this machine: stop what listens there")
    clone, home = tmp_path / "msa", tmp_path / "home"
    home.mkdir()
    copy_project(clone, CLONE_FILES)
    small = {  # the repository's params.yaml, with a small demo and tiny models
        "data": {"demo": {"size": 60}},
        "featurize": {"text_model": str(tiny_text_model), "image_size": 8},
        "model": {"hidden": 8, "textcnn": {"feature_maps": 4}},
        "train": {"epochs": 3, "batch_size": 8},
        "compress": {"latency_runs": 3, "throughput_batch": 4, "finetune_epochs": 1},
    }
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in small.items():
        for key, value in values.items():
            params[section][key] = params[section][key] | value if isinstance(value, dict) else value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = {"GIT_AUTHOR_NAME": "msa", "GIT_AUTHOR_EMAIL": "msa@example.invalid"}
    git |= {"GIT_COMMITTER_NAME": "msa", "GIT_COMMITTER_EMAIL": "msa@example.invalid"}
    run(["git", "init", "-q", "-b", "main"], cwd=clone)
    run(["git", "add", "-A"], cwd=clone)
    run(["git", "commit", "-q", "-m", "clone"], cwd=clone, env=git)

    env = environment(HOME=str(home), OMP_NUM_THREADS="1", PREFECT_WORKER_QUERY_SECONDS="2", **git)
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(key, None)  # the block sets what it needs, as in a new user's shell
    log = tmp_path / "block.log"
    with log.open("w") as sink:
        shell = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", team_setup_block()],
            cwd=clone, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        code = shell.wait(timeout=900)
        team = home / "msa-team"
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(team.glob("*.log")))
        assert code == 0, f"the block exited {code}:\n{log.read_text()[-5000:]}\n{logs}"

        mlflow = MlflowClient("http://127.0.0.1:5000")
        champion = mlflow.get_model_version_by_alias("msa-demo", "champion")
        parent = mlflow.get_run(champion.run_id)
        assert parent.info.status == "FINISHED"
        trains = mlflow.search_runs([parent.info.experiment_id], "tags.`msa.kind` = 'train'")
        assert len(trains) == 1 and mlflow.list_artifacts(trains[0].info.run_id, "model")
        assert "training dispatched to deployment train/train-gpu" in (team / "cpu-worker.log").read_text()
        assert (team / "artifacts").is_dir() and any((team / "dvc-remote").rglob("*")), "artifacts and data stored"
        (gpu_clone,) = (team / "gpu-worker").iterdir()
        (cpu_clone,) = (team / "cpu-worker").iterdir()
        assert (gpu_clone / "models" / "checkpoints").is_dir() and not (cpu_clone / "models" / "checkpoints").exists()
    finally:
        stop_group(shell.pid)
