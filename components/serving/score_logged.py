"""What a batch scoring records in MLflow: a run in the experiment `<model name>-scoring` (`scoring` for a model
directory) that lasts as long as the scoring, with the model and input as params, the row count and rows/s as
metrics, the input as a dataset (its columns, sha256 and row count), and the drift report: its verdict as the tag
`msa.drifted`, each modality's p-value as a metric, the JSON and its figure as artifacts (`drift/`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from components.core.config import DriftParams, RegisterParams
from components.serving.score import ScoreResult, score_input
from components.tracking.connection import connected, experiment_id, source_tags
from components.tracking.inputs import InputDataset
from components.tracking.payload import Artifact, Logged, log
from components.tracking.runs import KIND

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["record_scoring", "registered_name", "score_and_record", "scoring_experiment", "scoring_logged"]

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)")


def registered_name(model_uri: str) -> str | None:
    """The registered model a models:/ URI names (by alias or version); None for any other URI."""
    match = _REGISTERED.match(model_uri)
    return match["name"] if match else None


def scoring_experiment(model_uri: str) -> str:
    """Where a model's scorings go: beside its training experiment in the UI's list, never inside it."""
    name = registered_name(model_uri)
    return f"{name}-scoring" if name else "scoring"


def scoring_logged(result: ScoreResult) -> Logged:
    by = result.scored_by
    dataset = InputDataset(
        samples=pd.DataFrame(columns=list(result.columns)),
        name=Path(by.input).name,
        digest=by.input_sha256[:16],
        source={"path": str(Path(by.input).absolute()), "sha256": by.input_sha256},
        profile={"num_rows": by.rows},
        targets=None,
        context="scoring",
    )
    metrics: dict[str, float] = {"rows": by.rows, "rows_per_s": result.rows_per_s, "seconds": result.seconds}
    tags = {}
    if (drift := result.drift) is not None:
        tags = {"msa.drifted": str(drift.drifted).lower(), "msa.drift": drift.verdict}
        metrics |= {"drift_compared_rows": drift.compared}
        metrics |= {f"drift_{name}_p_value": m.p_value for name, m in drift.modalities.items()}
    return Logged(
        inputs=(dataset,),
        metrics=metrics,
        tags=tags,
        artifacts=tuple(Artifact(path, "drift") for path in result.drift_files),
        params={
            "model_uri": by.model_uri,
            "model": by.model,
            "model_version": by.model_version or "",
            "registration_run_id": by.run_id or "",
            "input": by.input,
            "input_sha256": by.input_sha256,
            "output": str(result.output),
        },
    )


def record_scoring(client: MlflowClient, result: ScoreResult) -> str:
    """`result` as a FINISHED run spanning the scoring; its id."""
    by = result.scored_by
    start = int(result.started * 1000)
    tags = {**source_tags(), KIND: "scoring", "msa.model": by.model, "msa.model_version": by.model_version or ""}
    run = client.create_run(
        experiment_id(client, scoring_experiment(by.model_uri)),
        run_name=f"score {Path(by.input).name}",
        start_time=start,
        tags=tags,
    )
    log(client, run.info.run_id, scoring_logged(result))
    client.set_terminated(run.info.run_id, "FINISHED", end_time=start + int(result.seconds * 1000))
    return run.info.run_id


def score_and_record(
    model_uri: str,
    input_path: str | Path,
    output: str | Path | None,
    settings: RegisterParams,
    drift: DriftParams,
    *,
    progress: bool = True,
) -> tuple[ScoreResult, str | None]:
    """`score_input`, then its MLflow run (none for a skip): what `msa score` and the `score` flow do. The registry
    that resolves the alias is the tracking server the run goes to, checked to answer first."""
    with connected(settings) as client:
        result = score_input(model_uri, input_path, output, progress=progress, drift=drift)
        return result, None if result.skipped else record_scoring(client, result)
