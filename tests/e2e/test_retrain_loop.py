"""The loop the product exists for, run as a team runs it: scheduled retraining on new dataset versions.

A git repository whose data/raw (the media demo: text, images, WAV and MP4 clips) is tracked by data.dvc and pushed
to a DVC remote; a Prefect server with the repository's deployments; one process worker for the pool `cpu` on a
machine of its own (its own home and workdir: it clones the repository and pulls the data each run); an MLflow
server with proxied artifacts. Each step commits what a team commits, then runs the `retrain` deployment:

1. version A, a deliberately weak training: the first model is champion.
2. version B (`msa data demo --media --seed 1`, `dvc push`), a real training: the champion is re-scored on B's test
   split through its verified package (its signed score was measured on A's), and the better challenger is
   promoted. data.raw is relative, as in params.yaml.
3. version C with data.raw absolute and a weak training again: the champion is re-scored on C's test split, the
   worse challenger stays challenger.
4. the same commit again: nothing to retrain.

The gate's numbers are checked against the champion scored here, by MLflow's own loader, on the same rows.
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from uuid import UUID

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from components.data.dataset import read_dataset
from components.evaluation.metrics import metrics_for
from components.serving.values import raw_frame
from tests.e2e.conftest import write_params
from tests.e2e.pools import CLONE_FILES, DVC_YAML_PARAMS, tail
from tests.e2e.servers import free_port, serving
from tests.integration.conftest import REPO, copy_project
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.e2e

MODEL = "loop"
SIZE = 40  # samples per dataset version: every split has clips, images and both signs
RUN_TIMEOUT_S = 600
WEAK = {"epochs": 1, "lr": 1e-6, "batch_size": 8}  # barely moves from its initial weights
REAL = {"epochs": 12, "lr": 0.01, "batch_size": 8, "patience": 12}
GIT = ["git", "-c", "user.name=msa-test", "-c", "user.email=msa-test@example.invalid"]


def settings(root: Path, text_model: Path, train: dict, raw: str = "data/raw") -> None:
    """params.yaml as the team commits it: the paths dvc.yaml interpolates, a small model, `train` as given."""
    defaults, paths = yaml.safe_load((REPO / "params.yaml").read_text()), {}
    for section, key in DVC_YAML_PARAMS:
        paths.setdefault(section, {})[key] = defaults[section][key]
    paths["train"] |= train
    paths["data"] |= {"raw": raw}
    register = {"retries": 0, "timeout": 60, "model_name": MODEL, "experiment": MODEL}
    write_params(root, text_model, register=register, **paths)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["featurize"] |= {"workers": 1}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def commit(root: Path, message: str) -> None:
    """What a team does when a new dataset version or new settings arrive: record, push the data, commit."""
    run([str(BIN / "dvc"), "add", "-q", "data/raw"], cwd=root)
    run([str(BIN / "dvc"), "push", "-q"], cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run([*GIT, "commit", "-q", "--allow-empty", "-m", message], cwd=root)


def new_version(root: Path, seed: int) -> None:
    shutil.rmtree(root / "data" / "raw", ignore_errors=True)
    run([str(BIN / "msa"), "data", "demo", "--media", "--size", str(SIZE), "--seed", str(seed)], cwd=root)


def champion_mae(client: MlflowClient, version: str, raw: Path) -> float:
    """The MAE of a registered version on `raw`'s test split, scored here by MLflow's own loader (which verifies the
    package first) on the clips and images inline, as a caller would send them."""
    dataset = read_dataset(raw)
    frame = raw_frame(dataset, "test", inline_images=True)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    predicted = model.predict(frame.drop(columns=["id", "label"]))
    return float(metrics_for("regression", predicted["score"].to_numpy(), frame["label"].to_numpy())["mae"])


def test_new_data_retrains_rescores_the_champion_and_promotes_only_the_better_model(
    tmp_path: Path, tiny_text_model: Path, mlflow_server: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repository, logs, remote = tmp_path / "msa", tmp_path / "logs", tmp_path / "dvc-remote"
    logs.mkdir()
    copy_project(repository, CLONE_FILES)
    settings(repository, tiny_text_model, WEAK)
    run(["git", "init", "-q", "-b", "main"], cwd=repository)
    run([str(BIN / "dvc"), "remote", "add", "--default", "--force", "storage", str(remote)], cwd=repository)
    new_version(repository, seed=0)
    commit(repository, "dataset version A, weak settings")

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api, "PREFECT_CLI_PROMPT": "false"}
    cli = str(BIN / "prefect")
    home = tmp_path / "machines" / "cpu"
    home.mkdir(parents=True)
    clone = home / "work" / repository.name  # where the worker's pull steps clone to
    health = free_port()
    worker_env = {
        "HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_API_URL": api,
        "MSA_REPOSITORY": str(repository),
        "MSA_WORKDIR": str(home / "work"),
        "MLFLOW_TRACKING_URI": mlflow_server,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(health),
        "OMP_NUM_THREADS": "1",
    }

    def diagnostics() -> str:
        return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(logs.glob("*.log")))

    def retrain() -> str:
        """Run the retrain deployment once and wait for it; the worker's log of that run."""
        before = len(tail(logs / "cpu.log", 10**7))
        started = run([cli, "deployment", "run", "pipeline/retrain"], cwd=repository, env=prefect).stdout
        flow_run_id = UUID(re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1))
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (state := client.read_flow_run(flow_run_id).state) or not state.is_final():
                assert time.monotonic() < deadline, f"retrain still running:\n{diagnostics()}"
                time.sleep(1)
        assert state.is_completed(), f"retrain ended {state.name}:\n{diagnostics()}"
        return tail(logs / "cpu.log", 10**7)[before:]

    registry = MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    with ExitStack() as stack:
        server = [cli, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler"]
        server += ["--analytics-off"]
        stack.enter_context(serving(server, f"{api}/health", logs / "server.log", cwd=tmp_path, env=prefect))
        run([cli, "work-pool", "create", "cpu", "--type", "process"], cwd=repository, env=prefect)
        run([cli, "deploy", "--name", "retrain", "--no-prompt"], cwd=repository, env=prefect)
        worker = [cli, "worker", "start", "--pool", "cpu", "--name", "cpu", "--with-healthcheck"]
        stack.enter_context(
            serving(worker, f"http://127.0.0.1:{health}/health", logs / "cpu.log", cwd=home, env=worker_env)
        )

        # 1. Version A: the first model is champion.
        retrain()
        v1 = registry.get_model_version_by_alias(MODEL, "champion")
        assert v1.version == "1" and v1.tags["msa.decision"].startswith("first model"), diagnostics()

        # 2. Version B, real settings: the champion is re-scored on B's test split, and the better model promoted.
        new_version(repository, seed=1)
        settings(repository, tiny_text_model, REAL)
        commit(repository, "dataset version B, real settings")
        retrain()
        v2 = registry.get_model_version(MODEL, "2")
        assert v2.tags["msa.test_split"] != v1.tags["msa.test_split"]
        rescored = champion_mae(registry, "1", clone / "data" / "raw")
        assert float(v2.tags["msa.champion_score"]) == pytest.approx(rescored, rel=1e-4), "re-scored on B's split"
        assert float(v2.tags["msa.champion_score"]) != pytest.approx(float(v1.tags["msa.score"]), rel=1e-4)
        assert float(v2.tags["msa.score"]) < rescored, v2.tags["msa.decision"]
        assert "beats champion v1" in v2.tags["msa.decision"]
        assert registry.get_model_version_by_alias(MODEL, "champion").version == "2"

        # 3. Version C with data.raw absolute, weak settings: re-scored on C's split, the worse model not promoted.
        new_version(repository, seed=2)
        settings(repository, tiny_text_model, WEAK, raw=str(clone / "data" / "raw"))
        commit(repository, "dataset version C, weak settings, data.raw absolute")
        retrain()
        v3 = registry.get_model_version(MODEL, "3")
        rescored = champion_mae(registry, "2", clone / "data" / "raw")
        assert float(v3.tags["msa.champion_score"]) == pytest.approx(rescored, rel=1e-4), "re-scored on C's split"
        assert float(v3.tags["msa.score"]) > rescored and "does not beat champion v2" in v3.tags["msa.decision"]
        assert registry.get_model_version_by_alias(MODEL, "champion").version == "2"
        assert registry.get_model_version_by_alias(MODEL, "challenger").version == "3"

        # 4. Nothing new: the next scheduled run says so and registers nothing.
        assert "nothing to retrain" in retrain(), diagnostics()
        assert len(registry.search_model_versions(f"name = '{MODEL}'")) == 3
        assert np.isfinite(float(v3.tags["msa.score"]))
