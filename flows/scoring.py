"""The `score` flow: a batch of raw inputs scored by a registered model (by alias), recorded as an MLflow run, with
a Prefect artifact saying what was scored by which version and whether the batch drifted from the model's training
data (the `score` deployment runs it on the CPU pool).

Each scoring emits a Prefect event: `msa.batch.drifted` when the drift report says so, else `msa.batch.scored`
(a skip emits none: nothing new was scored). The resource is the model (`msa.model.<name>`), the payload the
report's verdict and p-values. The `retrain` deployment's trigger in prefect.yaml (an automation `prefect deploy`
creates) runs the pipeline on `msa.batch.drifted`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from components.core.config import DEFAULT_PARAMS, Params, load_params
from components.monitoring.drift import DriftReport
from components.serving.score import ScoreResult
from components.serving.score_logged import registered_name, score_and_record

__all__ = ["DRIFTED", "SCORED", "score"]

DRIFTED = "msa.batch.drifted"  # what the retrain deployment's trigger expects
SCORED = "msa.batch.scored"


@flow(name="score", persist_result=True, result_serializer="json")
def score(model: str, input: str, output: str | None = None, params: str = str(DEFAULT_PARAMS)) -> ScoreResult:
    """Score `input` (a dataset directory, or a JSONL, CSV or parquet file of raw rows) with `model` (e.g.
    models:/<name>@champion) into the parquet file `output`, and compare it with the model's drift reference; the
    same input and version again is a skip."""
    settings = load_params(params) if Path(params).exists() else Params()
    logger = get_run_logger()
    result, run_id = score_and_record(model, input, output, settings.registry, settings.drift, progress=False)
    if run_id is not None:
        logger.info(f"MLflow run {run_id}")
    create_markdown_artifact(key="msa-score", markdown=_markdown(result), description="batch scoring and its drift")
    logger.info(result.summary())
    if result.drift is not None:
        logger.info(result.drift.summary())
    if not result.skipped:
        _emit(result, run_id)
    return result


def _emit(result: ScoreResult, run_id: str | None) -> None:
    by, drift = result.scored_by, result.drift
    name = registered_name(by.model) or Path(by.model).name
    payload: dict = {"input": by.input, "output": str(result.output), "rows": by.rows, "mlflow_run_id": run_id}
    if drift is not None:
        payload |= {"verdict": drift.verdict, "p_values": {m: d.p_value for m, d in drift.modalities.items()}}
    related = []
    if by.model_version:
        version = f"msa.model-version.{name}.{by.model_version}"
        related.append({"prefect.resource.id": version, "prefect.resource.role": "model-version"})
    emit_event(
        event=DRIFTED if drift is not None and drift.drifted else SCORED,
        resource={"prefect.resource.id": f"msa.model.{name}", "prefect.resource.name": name},
        related=related,
        payload=payload,
    )


def _markdown(result: ScoreResult) -> str:
    by = result.scored_by
    lines = [
        f"**{by.rows} rows** of `{by.input}` scored by `{by.model}` (version {by.model_version or 'n/a'}, run "
        f"{by.run_id or 'n/a'}) into `{result.output}`" + (" (already there: skipped)" if result.skipped else ""),
        "",
    ]
    return "\n".join(lines + _drift_table(result.drift))


def _drift_table(drift: DriftReport | None) -> list[str]:
    if drift is None:
        return ["Drift: not measured (the model was registered without a drift reference)."]
    lines = [
        f"**Drift: {drift.verdict}** ({drift.compared} of the rows against {drift.reference_rows} of "
        f"{drift.dataset} v{drift.dataset_version}, level {drift.level:g})",
        "",
    ]
    if drift.modalities:
        lines += ["| modality | p-value | drifted below | drifted |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {m.p_value:.3g} | {m.threshold:.3g} | {'yes' if m.drifted else 'no'} |"
            for name, m in drift.modalities.items()
        ]
    return lines
