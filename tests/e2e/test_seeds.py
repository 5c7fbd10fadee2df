"""`msa run --seeds N` through the real pipeline flow: a nested MLflow run per seed, mean and std on the parent and
the heads, the best seed on valid registered and named."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.e2e.conftest import working_directory
from tests.e2e.servers import stop_ephemeral_prefect_server  # noqa: F401 - autouse: the flows' server
from tests.e2e.test_flow_faults import copy_project, edit_params, in_process_tracking, sqlite_store

pytestmark = pytest.mark.e2e


def test_each_seed_is_a_nested_run_and_the_best_on_valid_is_registered(
    tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline

    project = copy_project(tiny_project, tmp_path / "project")
    # What this test is about is training and its records: the shortest compression and robustness stages.
    edit_params(project, compress={"variants": ["int8"]}, robustness={"perturbations": {"missing_text": [1.0]}})
    store = sqlite_store(project)
    in_process_tracking(monkeypatch, store)
    with working_directory(project):
        registration = pipeline(params="params.yaml", seeds=2)
    assert registration.registered and str(registration.version) == "1"

    client = MlflowClient(store)
    version = client.get_model_version("raw", "1")
    seeds = json.loads((project / "reports" / "seeds.json").read_text())
    chosen = seeds["chosen"]
    assert seeds["seeds"] == [0, 1] and version.tags["msa.seeds"] == f"2 seeds (0, 1), chosen {chosen}"
    record = json.loads((project / "models" / "trained" / "seeds.json").read_text())
    assert str(chosen) == min(record["valid"], key=lambda s: record["valid"][s])  # MAE: the lowest valid wins

    parent = client.get_run(version.run_id)
    assert parent.data.params["train.seeds"] == "2"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=50
    )
    runs = {r.info.run_name: r for r in children if r.data.tags.get("msa.kind") == "seed"}
    assert set(runs) == {"seed 0", "seed 1"} and all(r.info.status == "FINISHED" for r in runs.values())
    for seed, run in runs.items():
        curve = client.get_metric_history(run.info.run_id, "epoch_valid_mae")
        assert [m.step for m in curve] == [1, 2, 3], seed
        assert run.data.metrics["test_mae"] == pytest.approx(seeds["runs"][seed.split()[1]]["test"]["fusion"]["mae"])
        assert run.data.tags["msa.chosen"] == str(seed == f"seed {chosen}").lower()
    # Mean and std over seeds beside the chosen model's own metrics, on the parent and on every head's run.
    maes = [seeds["runs"][s]["test"]["fusion"]["mae"] for s in ("0", "1")]
    assert parent.data.metrics["test_mae_mean"] == pytest.approx(sum(maes) / 2)
    # (two forward passes over the same weights: equal up to float rounding)
    assert parent.data.metrics["test_mae"] == pytest.approx(
        seeds["runs"][str(chosen)]["test"]["fusion"]["mae"], rel=1e-5
    )
    heads = [r for r in children if r.data.tags.get("msa.kind") == "head"]
    assert heads and all({"test_mae_mean", "test_mae_std", "valid_acc2_mean"} <= r.data.metrics.keys() for r in heads)
    # The head runs carry the chosen seed's curves, as after a single-seed training.
    fusion = next(r for r in heads if r.info.run_name == "fusion")
    assert len(client.get_metric_history(fusion.info.run_id, "epoch_valid_mae")) == 3
    card = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/model_card.md")
    assert f"this is seed {chosen}, the best by valid fusion mae (never by test)" in card
