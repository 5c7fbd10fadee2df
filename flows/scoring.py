"""The `score` flow: a batch of raw inputs scored by a registered model (by alias), recorded as an MLflow run, with
a Prefect artifact saying what was scored by which version (the `score` deployment runs it on the CPU pool)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from components.core.config import DEFAULT_PARAMS, RegisterParams, load_params
from components.serving.score import ScoreResult
from components.serving.score_logged import score_and_record

__all__ = ["score"]


@flow(name="score", persist_result=True, result_serializer="json")
def score(model: str, input: str, output: str | None = None, params: str = str(DEFAULT_PARAMS)) -> ScoreResult:
    """Score `input` (a dataset directory, or a JSONL, CSV or parquet file of raw rows) with `model` (e.g.
    models:/<name>@champion) into the parquet file `output`; the same input and version again is a skip."""
    settings = load_params(params).registry if Path(params).exists() else RegisterParams()
    logger = get_run_logger()
    result, run_id = score_and_record(model, input, output, settings, progress=False)
    if run_id is not None:
        logger.info(f"MLflow run {run_id}")
    by = result.scored_by
    create_markdown_artifact(
        key="msa-score",
        markdown=f"**{by.rows} rows** of `{by.input}` scored by `{by.model}` (version {by.model_version or 'n/a'}, "
        f"run {by.run_id or 'n/a'}) into `{result.output}`" + (" (already there: skipped)" if result.skipped else ""),
        description="batch scoring",
    )
    logger.info(result.summary())
    return result
