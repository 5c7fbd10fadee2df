"""What a user sees of a pipeline run in the MLflow UI, on a real MLflow store (SQLite): the model-training view,
where each run comes from (user, source, git), the training settings on the train run, each head's settings and
dataset on its run, and runs that last as long as their own work."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.core.config import Params
from components.data.dataset import read_dataset
from components.models import store as model_store
from components.tracking import runs as tracking

DIGEST = "0123456789abcdef0123456789abcdef"  # stands in for data.dvc's md5


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A store in a project that is a git repository (one commit, a branch, a remote with credentials in its URL)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "first"],
                    ["remote", "add", "origin", "https://token@example.com/team/msa.git"]):  # fmt: skip
        subprocess.run([*git, *command], check=True, cwd=tmp_path)
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def open_run(client: MlflowClient):
    return tracking.pipeline_run(client, "ui", "pipeline test", {"dataset": "tiny"}, Params())


def test_links_open_the_model_training_view_and_runs_say_where_they_come_from(client, tmp_path):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    with open_run(client) as parent:
        child = tracking.child_run(client, parent, "head", "fusion", {tracking.HEAD: "fusion"})
    experiment = client.get_run(parent).info.experiment_id
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow 3.17's UI picks the view from the link, not from the tag: every link carries it.
    assert tracking.ui_url(experiment).endswith(f"/#/experiments/{experiment}?workflowType=machine_learning")
    assert tracking.ui_url(experiment, child).endswith(f"/runs/{child}?workflowType=machine_learning")
    for run_id in (parent, child):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["mlflow.source.git.branch"] == "main"
        assert tags["mlflow.source.git.repoURL"] == "https://example.com/team/msa.git", "no credentials"
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
        assert tags["mlflow.user"]


def test_train_and_head_runs_carry_their_settings_and_dataset_and_last_as_long_as_their_work(client, trained):
    spec = model_store.read_card(trained.model).spec
    history = model_store.read_history(trained.model)
    params = Params()
    with open_run(client) as parent:
        tracking.log_dataset(client, parent, read_dataset(trained.raw), DIGEST, {"path": "data/raw"})
        time.sleep(0.05)
        log = tracking.TrainingLog(client, parent, spec, trained.model, params=params)
        for record in history:
            log.on_epoch(record, improved=False)
        log.close("FINISHED")
        trained_until = log.trained_until
        time.sleep(0.05)
        report = Path("evaluation.json")
        report.write_text("{}")
        metrics = {"test": {h: {"mae": 1.0} for h in spec.heads}}
        tracking.log_evaluation(client, parent, spec, metrics, report, Path("none"), Path("none"))

    train = client.get_run(log.run_id)
    assert train.data.params["train.epochs"] == str(params.train.epochs)
    assert train.data.params["model.hidden"] == str(params.model.hidden)
    parent_start = client.get_run(parent).info.start_time
    for head, run_id in log.heads.items():
        run = client.get_run(run_id)
        assert run.data.params["head"] == head and "dropout" in run.data.params
        assert run.data.metrics["test_mae"] == 1.0, "evaluate's metrics land on the head's run"
        (given,) = run.inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.digest, given.dataset.source_type) == ("tiny", DIGEST, "dvc")
        assert "mlflow_colspec" in json.loads(given.dataset.schema)
        assert json.loads(given.dataset.profile)["num_rows"] == len(read_dataset(trained.raw).samples)
        # A head lasts as long as training: not the whole pipeline run before it, nor evaluate after it.
        assert run.info.status == "FINISHED"
        assert parent_start + 50 <= run.info.start_time and run.info.end_time == trained_until
    assert train.inputs.dataset_inputs[0].dataset.digest == DIGEST


def test_each_variant_run_lasts_as_long_as_its_own_work(client, tmp_path):
    figures = {
        "size_bytes": 1e6, "nonzero_params": 10, "latency_ms_p50": 1.0, "latency_ms_p95": 2.0,
        "throughput_per_s": 100.0, "metrics": {"acc2": 0.7}, "kept": True,
    }  # fmt: skip
    now = time.time()
    report = {
        "metric": "acc2",
        "variants": {
            "int8": {**figures, "seconds": 2.0, "started": now - 10},
            "prune_structured": {**figures, "seconds": 5.5},
            "onnx_fp32": figures,  # a report without its own time: the stage's
        },
    }
    path = tmp_path / "compression.json"
    path.write_text(json.dumps(report))
    with open_run(client) as parent:
        tracking.log_compression(client, parent, report, path, 1.0, started=now - 60)
    runs = {r.data.tags[tracking.VARIANT]: r.info for r in tracking.child_runs(client, parent, "variant")}
    assert runs["int8"].end_time - runs["int8"].start_time == 2000
    assert runs["int8"].start_time == int((now - 10) * 1000)
    assert runs["prune_structured"].end_time - runs["prune_structured"].start_time == 5500
    assert runs["onnx_fp32"].start_time == int((now - 60) * 1000)
    assert all(info.status == "FINISHED" for info in runs.values())
