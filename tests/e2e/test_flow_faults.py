"""Faults around the Prefect flows, each on the real flow: a tracking server that comes up late, a worker killed
mid-training, a dataset that fails validation, and two runs of the same inputs started together."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from devtools.servers import stop_group
from tests.conftest import tiny_dataset
from tests.e2e.conftest import working_directory, write_params
from tests.e2e.servers import free_port, stop_ephemeral_prefect_server  # noqa: F401 - autouse: the flows' server
from tests.integration.shell import BIN, environment, run

pytestmark = pytest.mark.e2e

# One OpenMP thread per `msa run`: on a small machine that other processes share, torch's default (one per core)
# makes these tiny models' steps over ten times slower, spinning threads against each other.
THREADS = {"OMP_NUM_THREADS": "1"}


def copy_project(tiny_project: Path, to: Path) -> Path:
    """A private copy of the session's project (featurize, train, evaluate, compress ran), without an MLflow store."""
    shutil.copytree(tiny_project, to, ignore=shutil.ignore_patterns("mlflow.db", "mlruns"))
    return to


def edit_params(project: Path, **sections: dict) -> Path:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values}
    path.write_text(yaml.safe_dump(params))
    return path


def sqlite_store(project: Path) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"


def in_process_tracking(monkeypatch: pytest.MonkeyPatch, uri: str, retries: int = 0, timeout: int = 20) -> None:
    """Point this process at `uri`. `connected` exports MLflow's request settings (setdefault): set them here, with
    the params' values, so that they are undone after the test instead of leaking into later tests' subprocesses."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@pytest.fixture
def prefect_database() -> None:
    """This session's Prefect database, created and migrated (by this process's ephemeral server) before a test's
    `msa run` subprocesses each start their own ephemeral server on it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.hello()


def registered_versions(uri: str) -> list:
    """Every model version in the store, of any registered model."""
    return MlflowClient(uri).search_model_versions()


def msa_run(project: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`msa run` in its own process group (so that the ephemeral Prefect server it starts dies with it)."""
    with log.open("w") as sink:
        return subprocess.Popen(
            [str(BIN / "msa"), "run", *args],
            cwd=project,
            env=environment(**THREADS, **(env or {})),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise AssertionError(f"msa run did not finish within {timeout} s:\n{tail(log)}") from None
    return log.read_text()


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text()[-chars:] if log.exists() else "(no log)"


def quiet(text: str) -> str:
    """Output without progress-bar lines."""
    return "\n".join(line for line in text.splitlines() if not re.search(r"it/s|step/s", line))


# ---------------------------------------------------------------------------------------------------------------
# 1. A tracking server that is not up yet: the register task fails, Prefect retries it, it registers once.


@pytest.fixture
def late_mlflow_server(tmp_path: Path) -> Iterator[tuple[str, threading.Event]]:
    """(URI, start): the URI of a tracking server on a free port that starts only once `start` is set."""
    root = tmp_path / "mlflow-server"
    root.mkdir()
    port = free_port()
    start, stop = threading.Event(), threading.Event()
    processes: list[subprocess.Popen] = []

    def serve() -> None:
        while not start.wait(0.2):
            if stop.is_set():
                return
        args = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        args += ["--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
        with (root / "server.log").open("w") as sink:
            processes.append(
                subprocess.Popen(
                    args, cwd=root, env=environment(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", start
    finally:
        stop.set()
        thread.join(timeout=10)
        for process in processes:
            stop_group(process)


def test_the_lineage_check_retries_until_a_late_tracking_server_answers(
    tiny_project: Path, tmp_path: Path, late_mlflow_server, monkeypatch: pytest.MonkeyPatch
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.context import FlowRunContext

    from components.core.config import load_params
    from components.training.lineage import lineage
    from flows import tasks

    uri, start_server = late_mlflow_server
    project = copy_project(tiny_project, tmp_path / "project")
    # One request per attempt (register.retries 0), then Prefect's retries 2, 4, 8, 16 and 32 s apart: about a minute
    # for the server to come up after the first attempt failed (it usually answers by the third).
    params = edit_params(project, register={"retries": 0, "timeout": 10}, pipeline={"retries": 5, "retry_delay": 2})
    in_process_tracking(monkeypatch, uri, retries=0, timeout=10)

    def start_after_first_failure(flow_run_id) -> None:
        """Start the server once Prefect has recorded the lineage task's failed attempt, never before."""
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and not start_server.is_set():
                if any(r.state_name == "AwaitingRetry" for r in client.read_task_runs(flow_run_filter=runs)):
                    break
                time.sleep(0.2)
        start_server.set()  # late at worst: then the assertions below say the task never failed

    @flow(name="lineage-with-late-server")
    def lineage_only(path: str) -> object:
        threading.Thread(
            target=start_after_first_failure, args=(FlowRunContext.get().flow_run.id,), daemon=True
        ).start()
        p = load_params(path)
        return tasks.with_retries(tasks.already_registered, p, p.pipeline.timeouts.register_)(p, lineage(p))

    with working_directory(project):
        state = lineage_only(str(params), return_state=True)
    assert state.is_completed(), f"{state}: {state.result(raise_on_failure=False)}"
    assert state.result() is None, "an empty registry: nothing registered with this lineage"

    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        (task_run,) = [r for r in client.read_task_runs(flow_run_filter=runs) if r.name.startswith("lineage")]
        history = [s.name for s in client.read_task_run_states(task_run.id)]
    assert task_run.state_name == "Completed" and task_run.run_count >= 2, (task_run.run_count, history)
    assert "AwaitingRetry" in history and "Retrying" in history and history[-1] == "Completed", history


# ---------------------------------------------------------------------------------------------------------------
# 2. The worker is killed mid-training: nothing is registered; the next run continues the checkpoint.


def test_run_killed_mid_training_resumes_from_its_checkpoint(tiny_project: Path, tmp_path: Path, prefect_database):
    epochs = 15
    project = copy_project(tiny_project, tmp_path / "project")
    shutil.rmtree(project / "models")
    edit_params(project, train={"epochs": epochs, "patience": epochs})
    store = {"MLFLOW_TRACKING_URI": sqlite_store(project)}
    model = project / "models" / "trained"
    checkpoint, history = model / "checkpoints" / "last.pt", model / "history.json"

    first = msa_run(project, tmp_path / "first.log", env=store)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.is_file():  # written (atomically) after each finished epoch
            assert first.poll() is None, (
                f"msa run ended {first.returncode} before a checkpoint:\n{tail(tmp_path / 'first.log')}"
            )
            assert time.monotonic() < deadline, f"no checkpoint after 240 s:\n{tail(tmp_path / 'first.log')}"
            time.sleep(0.05)
    finally:
        kill_group(first)  # SIGKILL to msa and the ephemeral Prefect server it started: no cleanup runs
    assert first.returncode == -signal.SIGKILL
    before = json.loads(history.read_text())
    assert registered_versions(store["MLFLOW_TRACKING_URI"]) == []

    second = run([str(BIN / "msa"), "run"], cwd=project, env=THREADS | store, check=False)
    logs = quiet(second.stdout + second.stderr)
    assert second.returncode == 0, logs[-4000:]
    resumed = re.search(r"resumed after epoch (\d+)", logs)
    assert resumed, logs[-4000:]
    done = int(resumed.group(1))
    assert 1 <= done < epochs and done <= len(before), (done, len(before))
    assert f"train: {epochs} epochs" in logs, logs[-4000:]
    assert "raw version 1 is champion" in second.stdout, logs[-4000:]

    after = json.loads(history.read_text())
    assert [e["epoch"] for e in after] == list(range(1, epochs + 1))
    assert after[:done] == before[:done]  # the epochs before the kill are kept, not trained again
    versions = registered_versions(store["MLFLOW_TRACKING_URI"])
    assert [(v.name, str(v.version)) for v in versions] == [("raw", "1")]


# ---------------------------------------------------------------------------------------------------------------
# 3. A dataset that breaks a rule: the flow fails at validate, says which expectation, registers nothing.


def label_out_of_range(samples, sequences, images) -> None:
    samples.loc[4, "label"] = 7.5


def test_failed_validation_fails_the_flow_with_an_artifact_and_registers_nothing(
    tmp_path: Path, tiny_text_model: Path, monkeypatch: pytest.MonkeyPatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.pipeline import pipeline

    project = tmp_path / "project"
    tiny_dataset(project / "data", edit=label_out_of_range, name="raw")
    write_params(project, tiny_text_model)
    store = sqlite_store(project)
    in_process_tracking(monkeypatch, store)

    with working_directory(project):
        state = pipeline(params="params.yaml", return_state=True)
    assert state.is_failed(), state
    assert "label within [-3, 3]" in state.message and "Nothing was trained or registered" in state.message, state

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["msa-validation"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert len(artifacts) == 1, artifacts
    assert "Data validation: FAILED" in artifacts[0].data and "label within [-3, 3]" in artifacts[0].data
    assert "s04" in artifacts[0].data, artifacts[0].data
    ran = {r.name.rsplit("-", 1)[0]: r.state_name for r in task_runs}
    assert ran.get("validate") == "Failed" and not {"featurize", "train", "register"} & ran.keys(), ran
    assert not (project / "models").exists() and not (project / "data" / "features").exists()
    assert registered_versions(store) == []
    (parent,) = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("raw").experiment_id], "tags.`msa.kind` = 'pipeline'"
    )
    assert parent.info.status == "FAILED", "a failed stage fails the MLflow run"
    assert parent.inputs.dataset_inputs and "validation_failed" in parent.data.metrics

    # The same through `msa run`: exit 1, the summary of the failed expectation on stderr.
    cli = run([str(BIN / "msa"), "run"], cwd=project, env=THREADS | {"MLFLOW_TRACKING_URI": store}, check=False)
    assert cli.returncode == 1, quiet(cli.stdout + cli.stderr)[-4000:]
    assert "error:" in cli.stderr and "label within [-3, 3]" in cli.stderr and "s04" in cli.stderr, cli.stderr[-4000:]
    assert "Nothing was trained or registered" in cli.stderr
    assert registered_versions(store) == []


# ---------------------------------------------------------------------------------------------------------------
# 4. Two runs of the same inputs started together: the registry lock and the lineage re-check register one version.


def test_two_runs_started_together_register_one_version(
    tiny_project: Path, tmp_path: Path, mlflow_server: str, prefect_database
):
    name = "concurrent"  # its own model on the session's server
    projects = [copy_project(tiny_project, tmp_path / f"project-{i}") for i in (1, 2)]
    for project in projects:
        edit_params(project, register={"model_name": name, "experiment": name})
    assert (projects[0] / "params.yaml").read_bytes() == (projects[1] / "params.yaml").read_bytes()
    # Both `msa run` start an ephemeral Prefect server on this session's PREFECT_HOME (prefect_database): one
    # database, so one registry lock.

    logs = [tmp_path / f"run-{i}.log" for i in (1, 2)]
    processes = [
        msa_run(p, log, env={"MLFLOW_TRACKING_URI": mlflow_server}) for p, log in zip(projects, logs, strict=True)
    ]
    try:
        outputs = [quiet(finish(p, log)) for p, log in zip(processes, logs, strict=True)]
    finally:
        for process in processes:
            if process.poll() is None:
                kill_group(process)
    codes = [p.returncode for p in processes]
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)

    client = MlflowClient(mlflow_server)
    versions = client.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == ["1"], "\n\n".join(o[-3000:] for o in outputs)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    registered = [o for o in outputs if f"run: {name} version 1 is champion" in o]
    skipped = [o for o in outputs if "run: nothing registered" in o]
    assert len(registered) == 1 and len(skipped) == 1, "\n\n".join(o[-3000:] for o in outputs)
    assert f"{name} version 1 (champion) was trained from the same" in skipped[0]
    # Both passed the first lineage check (nothing was registered yet) and trained: the second found version 1 when
    # it re-checked the lineage under the registry lock, inside its register task.
    assert re.search(rf"Task run 'register-\w+' - skipped: {name} version 1", skipped[0]), skipped[0][-3000:]
