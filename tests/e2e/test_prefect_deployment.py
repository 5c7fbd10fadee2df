"""The Prefect deployments of prefect.yaml, run as a team runs them: a Prefect server, `prefect deploy --all`, one
process worker per pool (`cpu`, `gpu`) that clones the repository and pulls its data with DVC, and a real MLflow
tracking server. The retrain flow dispatches training to the GPU pool's deployment and registers the model; a second
retrain of the same commit finds that version and ends without training."""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import tiny_dataset
from tests.e2e.conftest import write_params
from tests.e2e.servers import free_port, serving
from tests.integration.conftest import PROJECT_FILES, REPO, copy_project
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.e2e

# What a clone of the repository holds that a worker's flow run reads: the pipeline's files, the deployments and the
# flow code itself (a worker imports flows/ and components/ from its clone, not from an installed package).
CLONE_FILES = (*PROJECT_FILES, ".gitignore", ".dvc/.gitignore", "prefect.yaml", "flows")
MODEL = "raw"  # the registered model is named after the dataset, and tiny_dataset(name="raw") names it so
RUN_TIMEOUT_S = 480
# The params dvc.yaml interpolates (DVC parses it on `dvc add` and `dvc pull`): the values of the repository's own.
DVC_YAML_PARAMS = (("validate", "report"), ("featurize", "out"), ("train", "out"), ("evaluate", "metrics"),
                   ("evaluate", "plots"), ("compress", "out"), ("compress", "report"))  # fmt: skip


def make_repository(root: Path, text_model: Path, remote: Path) -> str:
    """A git repository of the project whose data/raw is tracked by data.dvc and pushed to the DVC remote `remote`;
    returns its commit."""
    copy_project(root, CLONE_FILES)
    defaults, paths = yaml.safe_load((REPO / "params.yaml").read_text()), {}
    for section, key in DVC_YAML_PARAMS:
        paths.setdefault(section, {})[key] = defaults[section][key]
    write_params(root, text_model, pipeline={"training": "deployment", "retries": 1, "retry_delay": 1}, **paths)
    tiny_dataset(root / "data", name="raw")
    git = ["git", "-c", "user.name=msa-test", "-c", "user.email=msa-test@example.invalid"]
    run(["git", "init", "-q", "-b", "main"], cwd=root)
    run([str(BIN / "dvc"), "remote", "add", "--default", "--force", "local", str(remote)], cwd=root)
    run([str(BIN / "dvc"), "add", "-q", "data/raw"], cwd=root)
    run([str(BIN / "dvc"), "push", "-q"], cwd=root)
    run(["git", "add", "-A"], cwd=root)
    run([*git, "commit", "-q", "-m", "tiny project"], cwd=root)
    return run(["git", "rev-parse", "HEAD"], cwd=root).stdout.strip()


def tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(line for line in text[-chars:].splitlines() if not re.search(r"it/s|step/s", line))


def test_retrain_deployment_trains_on_the_gpu_pool_registers_and_then_skips(
    tmp_path: Path, tiny_text_model: Path, mlflow_server: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repository, workdir, logs = tmp_path / "msa", tmp_path / "workdir", tmp_path / "logs"
    for folder in (workdir, logs):
        folder.mkdir()
    commit = make_repository(repository, tiny_text_model, tmp_path / "dvc-remote")

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    # The server's SQLite database lives in this home, apart from the session's (which the ephemeral API uses).
    prefect = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api, "PREFECT_CLI_PROMPT": "false"}
    worker_env = {
        **prefect,
        "MSA_REPOSITORY": str(repository),
        "MSA_WORKDIR": str(workdir),  # both workers: the GPU worker trains in the clone the pipeline evaluates
        "MLFLOW_TRACKING_URI": mlflow_server,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
    }
    cli = str(BIN / "prefect")

    def prefect_cli(*args: str) -> str:
        return run([cli, *args], cwd=repository, env=prefect).stdout

    with ExitStack() as stack:
        # No scheduler: the deployment's Monday 03:00 schedule must not add a run to the ones this test starts.
        server = [cli, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler",
                  "--analytics-off"]  # fmt: skip
        stack.enter_context(serving(server, f"{api}/health", logs / "server.log", cwd=tmp_path, env=prefect))
        for pool in ("cpu", "gpu"):
            prefect_cli("work-pool", "create", pool, "--type", "process")
        prefect_cli("deploy", "--all", "--no-prompt")
        for pool in ("cpu", "gpu"):
            health = free_port()
            worker = [cli, "worker", "start", "--pool", pool, "--name", f"test-{pool}", "--with-healthcheck"]
            env = worker_env | {"PREFECT_WORKER_WEBSERVER_PORT": str(health)}
            log = logs / f"worker-{pool}.log"
            stack.enter_context(serving(worker, f"http://127.0.0.1:{health}/health", log, cwd=tmp_path, env=env))

        def diagnostics() -> str:
            return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(logs.glob("worker-*.log")))

        def retrain() -> None:
            """Start a run of the retrain deployment, wait for it to end and check that it completed."""
            started = prefect_cli("deployment", "run", "pipeline/retrain")
            found = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
            assert found, started
            flow_run_id = UUID(found.group(1))
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                deadline = time.monotonic() + RUN_TIMEOUT_S
                while True:
                    flow_run = client.read_flow_run(flow_run_id)
                    if flow_run.state is not None and flow_run.state.is_final():
                        break
                    assert time.monotonic() < deadline, f"retrain still {flow_run.state_name}:\n{diagnostics()}"
                    time.sleep(2)
            assert flow_run.state.is_completed(), f"retrain ended {flow_run.state_name}:\n{diagnostics()}"
            assert flow_run.work_pool_name == "cpu"

        def training_runs() -> list:
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])))

        retrain()

        # Training ran as its own flow run, from the train-gpu deployment on the gpu pool.
        (training,) = training_runs()
        assert training.state is not None and training.state.is_completed(), diagnostics()
        assert training.work_pool_name == "gpu"

        mlflow = MlflowClient(mlflow_server)
        versions = mlflow.search_model_versions(f"name = '{MODEL}'")
        assert len(versions) == 1, diagnostics()
        champion = mlflow.get_model_version_by_alias(MODEL, "champion")
        assert champion.version == versions[0].version
        parent = mlflow.get_run(champion.run_id)
        assert parent.data.tags["git_commit"].startswith(commit)  # trained and registered in the workers' clone
        children = mlflow.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=50
        )
        assert {"head", "compressed"} <= {r.data.tags.get("msa.kind") for r in children}
        assert (workdir / repository.name / "models").is_dir()

        # Same commit, same data and params: the second retrain ends early, without training or registering.
        retrain()
        assert len(training_runs()) == 1, diagnostics()
        assert len(mlflow.search_model_versions(f"name = '{MODEL}'")) == 1
        assert "nothing to retrain" in tail(logs / "worker-cpu.log", 20000)
