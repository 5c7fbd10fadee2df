"""What a user sees of a pipeline run in the MLflow UI, on a real MLflow store (SQLite): the model-training view,
where each run comes from (user, source, git), the training settings on the train run, each head's settings and
dataset on its run, and runs that last as long as their own work."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from components import tracking
from components.compression.logged import VARIANT, compression_logged
from components.compression.report import CompressionReport
from components.core.config import EvaluateParams, Params
from components.data.dataset import read_dataset
from components.evaluation.logged import HEAD, SEED, evaluation_logged
from components.evaluation.reports import EvaluationReport, SeedSummary
from components.models import store as model_store
from components.training.logged import training_input
from components.training.run_log import TrainingLog, seed_run

DIGEST = "0123456789abcdef0123456789abcdef"  # stands in for data.dvc's md5


@pytest.fixture
def client(client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """The shared store, in a project that is a git repository (one commit, a branch, a remote with credentials in
    its URL)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (
        ["init", "-q", "-b", "main"],
        ["commit", "-q", "--allow-empty", "-m", "first"],
        ["remote", "add", "origin", "https://token@example.com/team/msa.git"],
    ):
        subprocess.run([*git, *command], check=True, cwd=tmp_path)
    return client


def open_run(client: MlflowClient):
    return tracking.pipeline_run(client, "ui", "pipeline test", {"dataset": "tiny"}, Params())


def test_links_open_the_model_training_view_and_runs_say_where_they_come_from(client, tmp_path):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    with open_run(client) as parent:
        child = tracking.child_run(client, parent, "head", "fusion", {HEAD: "fusion"})
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
        tracking.log_dataset(client, parent, training_input(read_dataset(trained.raw), DIGEST, {"path": "data/raw"}))
        time.sleep(0.05)
        log = TrainingLog(client, parent, spec, trained.model, params=params)
        for record in history:
            log.on_epoch(record, improved=False)
        log.close("FINISHED")
        trained_until = log.trained_until
        time.sleep(0.05)
        report = Path("evaluation.json")
        report.write_text("{}")
        scores = EvaluationReport(splits={"test": {h: {"mae": 1.0} for h in spec.heads}})
        paths = EvaluateParams(report=report, plots=Path("no-plots"), figures=Path("no-figures"))
        tracking.log(client, parent, evaluation_logged(spec, paths, scores))

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


def test_several_seeds_log_their_spread_on_each_head_and_each_seed_s_scores_on_its_latest_run(client, tmp_path):
    spec = SimpleNamespace(heads=("lstm", "fusion"), label=SimpleNamespace(kind="regression"))
    scores = EvaluationReport(splits={"test": {"lstm": {"mae": 0.9}, "fusion": {"mae": 0.5, "samples": 3}}})
    seeds = SeedSummary(
        seeds=[3, 4],
        chosen=4,
        selected_by="valid fusion mae",
        mean={"test": {"fusion": {"mae": 0.55}}},
        std={"test": {"fusion": {"mae": 0.05}}},
        runs={"3": {"test": {"fusion": {"mae": 0.6}}}, "4": {"test": {"fusion": {"mae": 0.5}}}},
    )
    paths = EvaluateParams(report=tmp_path / "evaluation.json", seeds=tmp_path / "seeds.json")
    scores.write(paths.report)
    with open_run(client) as parent:
        first = seed_run(client, parent, 3, attempt=1)
        time.sleep(0.01)  # runs are ordered by their start (ms)
        retried = seed_run(client, parent, 3, attempt=2)
        tracking.log(client, parent, evaluation_logged(spec, paths, scores, seeds))
    metrics = client.get_run(parent).data.metrics
    assert (metrics["test_mae"], metrics["test_mae_mean"], metrics["test_mae_std"]) == (0.5, 0.55, 0.05)
    assert "test_mae_mean" not in client.get_run(runs(client, parent, "head")["lstm"]).data.metrics
    assert client.get_run(retried).data.metrics == {"test_mae": 0.6}, "the latest attempt's run"
    assert client.get_run(first).data.metrics == {}
    assert client.get_run(runs(client, parent, "seed")["seed 4"]).data.tags[SEED] == "4", "made when missing"
    assert [a.path for a in client.list_artifacts(parent, "reports")] == ["reports/evaluation.json"]


def runs(client: MlflowClient, parent: str, kind: str) -> dict[str, str]:
    return {r.info.run_name: r.info.run_id for r in tracking.child_runs(client, parent, kind)}


def test_each_variant_run_lasts_as_long_as_its_own_work(client, tmp_path):
    measured = {
        "size_bytes": 1_000_000,
        "params": 10,
        "nonzero_params": 10,
        "task_params": 10,
        "task_nonzero_params": 10,
        "latency_ms_p50": 1.0,
        "latency_ms_p95": 2.0,
        "throughput_per_s": 100.0,
        "batch_dependence": 0.0,
        "metrics": {"acc2": 0.7},
    }
    variant = {
        **measured,
        "delta": {"acc2": 0.0},
        "max_abs_diff": 0.0,
        "change": 0.0,
        "change_low": -0.5,
        "change_high": 0.5,
        "kept": True,
        "path": None,
        "sparsity": 0.0,
        "finetune_epochs": 0,
    }
    now = time.time()
    report = CompressionReport(
        model_digest="d",
        head="fusion",
        metric="acc2",
        tolerance=1.0,
        confidence=0.95,
        resamples=1000,
        batch_tolerance=1e-3,
        change_unit="points",
        split="test",
        baseline=measured,
        variants={
            "int8": {**variant, "seconds": 2.0, "started": now - 10},
            "prune_structured": {**variant, "seconds": 5.5, "started": now - 8, "sparsity": 0.123456, "kept": False},
        },
    )
    path = tmp_path / "compression.json"
    report.write(path)
    with open_run(client) as parent:
        tracking.log(client, parent, compression_logged(report, path, 1.0))
    runs = {r.data.tags[VARIANT]: r for r in tracking.child_runs(client, parent, "variant")}
    int8, pruned = runs["int8"].info, runs["prune_structured"].info
    assert (int8.start_time, int8.end_time - int8.start_time) == (int((now - 10) * 1000), 2000)
    assert pruned.end_time - pruned.start_time == 5500 and pruned.run_name == "structured prune"
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert runs["prune_structured"].data.params["sparsity"] == "0.1235"
    assert runs["prune_structured"].data.tags["msa.kept"] == "False"
    assert client.get_run(parent).data.metrics["size_mb"] == 1.0, "the uncompressed model's on the parent"
