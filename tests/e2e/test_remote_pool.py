"""Training on a GPU pool that shares no disk with the pipeline, run as a team runs it.

A Prefect server, `prefect deploy --all`, an MLflow server with proxied artifacts (`--artifacts-destination`), a DVC
remote directory standing in for S3, and process workers for the pools `cpu` and `gpu`, each with its own
MSA_WORKDIR and HOME: no directory is shared between them. The retrain deployment (cpu) dispatches training to the
train-gpu deployment (gpu); they exchange the dataset through the DVC remote and the model through the tracking
server only.

While training runs, the pipeline's MLflow run is RUNNING and already shows epoch curves. Then the gpu worker is
killed mid-training, and a new one starts on an empty workdir: the pipeline notices the silence, dispatches the
training again, the new worker restores the stored checkpoint, resumes and the pipeline registers. The registered
model is the one the gpu worker trained, byte for byte, and the cpu worker's clone never trained. A second retrain
of the same commit ends without training.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient

from tests.e2e.pools import MODEL, kill_tree, make_repository, sha256, stored_checkpoint, tail
from tests.e2e.servers import free_port, serving
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.e2e

EPOCHS = 40  # the kill comes a checkpoint or two in: the replacement then trains the rest (each epoch logs and uploads)
SILENCE_S = 12  # pipeline.train_silence: how long the pipeline waits for a lost worker's heartbeat
RUN_TIMEOUT_S = 600


def test_training_on_a_pool_without_a_shared_disk_resumes_on_a_new_worker_and_registers(
    tmp_path: Path, tiny_text_model: Path, mlflow_server: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repository, logs = tmp_path / "msa", tmp_path / "logs"
    logs.mkdir()
    remote = tmp_path / "dvc-remote"
    commit = make_repository(
        repository, tiny_text_model, remote=str(remote), store=remote, epochs=EPOCHS, silence=SILENCE_S
    )

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api, "PREFECT_CLI_PROMPT": "false"}
    cli = str(BIN / "prefect")

    def prefect_cli(*args: str) -> str:
        return run([cli, *args], cwd=repository, env=prefect).stdout

    def machine(name: str) -> dict[str, str]:
        """The environment of a worker on a machine of its own: its own home and workdir, nothing shared."""
        home = tmp_path / "machines" / name
        return {
            "HOME": str(home),
            "PREFECT_HOME": str(home / ".prefect"),
            "PREFECT_API_URL": api,
            "MSA_REPOSITORY": str(repository),
            "MSA_WORKDIR": str(home / "work"),  # not created: the pull steps make it
            "MLFLOW_TRACKING_URI": mlflow_server,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
        }

    with ExitStack() as stack:
        # No scheduler: the deployment's Monday 03:00 schedule must not add a run to the ones this test starts.
        server = [cli, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler"]
        server += ["--analytics-off"]
        stack.enter_context(serving(server, f"{api}/health", logs / "server.log", cwd=tmp_path, env=prefect))
        for pool in ("cpu", "gpu"):
            prefect_cli("work-pool", "create", pool, "--type", "process")
        prefect_cli("deploy", "--all", "--no-prompt")

        def worker(pool: str, name: str):
            """`prefect worker start` for `pool` on a machine of its own; its process, stopped when the test ends."""
            health, env = free_port(), machine(name)
            args = [cli, "worker", "start", "--pool", pool, "--name", name, "--with-healthcheck"]
            env["PREFECT_WORKER_WEBSERVER_PORT"] = str(health)
            home = Path(env["HOME"])
            home.mkdir(parents=True)
            url = f"http://127.0.0.1:{health}/health"
            return stack.enter_context(serving(args, url, logs / f"{name}.log", cwd=home, env=env))

        def diagnostics() -> str:
            return "\n".join(f"--- {log.name}\n{tail(log)}" for log in sorted(logs.glob("*.log")))

        def start_retrain() -> UUID:
            started = prefect_cli("deployment", "run", "pipeline/retrain")
            found = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
            assert found, started
            return UUID(found.group(1))

        def wait(flow_run_id: UUID):
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                deadline = time.monotonic() + RUN_TIMEOUT_S
                while True:
                    flow_run = client.read_flow_run(flow_run_id)
                    if flow_run.state is not None and flow_run.state.is_final():
                        return flow_run
                    assert time.monotonic() < deadline, f"retrain still {flow_run.state_name}:\n{diagnostics()}"
                    time.sleep(1)

        def training_runs() -> list:
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])))

        worker("cpu", "cpu")
        first_gpu = worker("gpu", "gpu-1")
        mlflow = MlflowClient(mlflow_server)
        retrain = start_retrain()

        # While training runs on gpu-1: the pipeline's MLflow run is RUNNING with epoch curves, and the train run has
        # stored a checkpoint. Then gpu-1 dies, with no chance to say so.
        deadline = time.monotonic() + RUN_TIMEOUT_S
        train = stored_checkpoint(mlflow, deadline, diagnostics)
        parent = mlflow.get_run(train.data.tags["mlflow.parentRunId"])
        curve = mlflow.get_metric_history(parent.info.run_id, "epoch_valid_mae")
        assert parent.info.status == "RUNNING" and curve, "the pipeline run shows training while it goes on"
        assert train.info.status == "RUNNING"
        kill_tree(first_gpu)
        killed_at = len(mlflow.get_metric_history(parent.info.run_id, "epoch_valid_mae"))
        assert killed_at < EPOCHS, "training ended before the kill: raise EPOCHS"

        second_gpu_home = tmp_path / "machines" / "gpu-2"
        worker("gpu", "gpu-2")  # a replacement with an empty disk
        finished = wait(retrain)
        assert finished.state.is_completed(), f"retrain ended {finished.state_name}:\n{diagnostics()}"

        # Training was dispatched twice: the first flow run (on the dead worker) was marked Crashed, the second ran
        # on gpu-2 and continued from the checkpoint on the tracking server.
        states = sorted(r.state_name for r in training_runs())
        assert states == ["Completed", "Crashed"], f"{states}\n{diagnostics()}"
        gpu2 = tail(logs / "gpu-2.log", 200000)
        assert "restored the checkpoint of training run" in gpu2, diagnostics()
        resumed = re.search(r"resumed after epoch (\d+)", gpu2)
        assert resumed and 1 <= int(resumed.group(1)) <= killed_at, diagnostics()
        assert f"train: {EPOCHS} epochs" in gpu2

        champion = mlflow.get_model_version_by_alias(MODEL, "champion")
        assert champion.run_id == parent.info.run_id
        assert mlflow.get_run(parent.info.run_id).data.tags["git_commit"].startswith(commit)
        # The registered model is what gpu-2 trained, byte for byte; the cpu clone downloaded it and never trained.
        (cpu_clone,) = (tmp_path / "machines" / "cpu" / "work").iterdir()
        (gpu_clone,) = (second_gpu_home / "work").iterdir()
        cpu_model, gpu_model = cpu_clone / "models" / "trained", gpu_clone / "models" / "trained"
        assert sha256(cpu_model / "model.safetensors") == sha256(gpu_model / "model.safetensors")
        assert not (cpu_model / "checkpoints").exists(), "the cpu worker never trained"
        history = json.loads((cpu_model / "history.json").read_text())
        assert [e["epoch"] for e in history] == list(range(1, EPOCHS + 1))
        # Each attempt logged into a train run of its own: the lost one KILLED, its replacement FINISHED.
        attempts = {
            r.info.run_name: r
            for r in mlflow.search_runs(
                [parent.info.experiment_id],
                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`msa.kind` = 'train'",
            )
        }
        assert attempts["train"].info.status == "KILLED", {n: r.info.status for n, r in attempts.items()}
        replacement = attempts["train (attempt 2)"]
        assert replacement.info.status == "FINISHED" and "system/cpu_utilization_percentage" in replacement.data.metrics
        assert replacement.data.tags["msa.model_digest"] == champion.tags["msa.model_digest"]

        # Same commit, same data and params: the second retrain ends early, without training or registering.
        assert wait(start_retrain()).state.is_completed(), diagnostics()
        assert len(training_runs()) == 2, diagnostics()
        assert len(mlflow.search_model_versions(f"name = '{MODEL}'")) == 1
        assert "nothing to retrain" in tail(logs / "cpu.log", 50000)
