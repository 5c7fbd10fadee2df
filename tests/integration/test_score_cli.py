"""`msa score --model models:/<name>@champion` scores a file of raw rows with the version the alias names, records
an MLflow run with the input as a dataset, and skips the same input and version the second time (no second run);
the `score` flow does the same on Prefect and says so in an artifact."""

from __future__ import annotations

import json

import pandas as pd

from tests.hardening import msa


def test_score_by_alias_records_a_run_and_skips_the_same_input(demo_registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the registry defaults
    rows = tmp_path / "day.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": f"sample number {i} was good"}) + "\n" for i in range(7)))
    first = msa("score", "--model", "models:/demo@champion", "--input", rows, "--output", "scores/day.parquet")
    assert first.code == 0, first.stderr
    assert "7 rows of" in first.stdout and "models:/demo/2 (version 2)" in first.stdout
    scores = pd.read_parquet(tmp_path / "scores" / "day.parquet")
    assert list(scores["id"]) == [str(i) for i in range(7)] and set(scores["model_version"]) == {"2"}

    experiment = demo_registry.get_experiment_by_name("demo-scoring")
    runs = demo_registry.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.metrics["rows"] == 7 and run.data.metrics["rows_per_s"] > 0
    assert run.data.params["model"] == "models:/demo/2" and run.data.params["model_version"] == "2"
    assert run.data.tags["msa.kind"] == "scoring"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "day.jsonl" and json.loads(dataset.dataset.profile)["num_rows"] == 7
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "scoring"

    again = msa("score", "--model", "models:/demo@champion", "--input", rows, "--output", "scores/day.parquet")
    assert again.code == 0 and "skipped" in again.stdout, again.stderr
    assert len(demo_registry.search_runs([experiment.experiment_id])) == 1

    demo_registry.set_registered_model_alias("demo", "champion", "1")  # a new champion scores the same input again
    moved = msa("score", "--model", "models:/demo@champion", "--input", rows, "--output", "scores/day.parquet")
    assert moved.code == 0 and "version 1" in moved.stdout, moved.stderr
    assert set(pd.read_parquet(tmp_path / "scores" / "day.parquet")["model_version"]) == {"1"}


def test_an_unknown_alias_is_one_line_and_writes_nothing(demo_registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = tmp_path / "day.jsonl"
    rows.write_text(json.dumps({"text": "fine"}) + "\n")
    outcome = msa("score", "--model", "models:/demo@nobody", "--input", rows, "--output", "s.parquet")
    assert outcome.code == 1 and "models:/demo@nobody: no such registered model alias" in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr
    assert not (tmp_path / "s.parquet").exists()


def test_the_score_flow_scores_and_leaves_an_artifact(demo_registry, tmp_path, monkeypatch):
    from prefect import get_client

    from flows.scoring import score

    monkeypatch.chdir(tmp_path)
    rows = tmp_path / "day.jsonl"
    rows.write_text(json.dumps({"id": "a", "text": "a fine film"}) + "\n")
    result = score(model="models:/demo@champion", input=str(rows), output=str(tmp_path / "day.parquet"))
    assert result.scored_by.rows == 1 and result.scored_by.model_version == "2" and not result.skipped
    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_artifacts() if a.key == "msa-score"][-1:]
    assert "**1 rows**" in artifact.data and "version 2" in artifact.data
