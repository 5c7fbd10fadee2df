"""Prefect tasks: each stage's component function plus what orchestration adds: retries with backoff on the tasks
that talk to the tracking server, timeouts, the featurize cache, artifacts and logs. No ML logic lives here.

Results are persisted as JSON (small summaries, never pickles). Every task takes the loaded `Params`;
`configured(task, params)` applies the retry and timeout settings of `params.yaml`'s `pipeline` section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from components.config import ConfigError, Params
from components.errors import DataError
from components.featurize import featurize as featurize_dataset
from components.featurize import input_key, is_current
from components.validation import validate_dataset

SHOW_PROGRESS = sys.stderr.isatty()  # progress bars for a person at a terminal, not in a worker's log
IO_TASKS = {"lineage", "register"}  # the tasks that talk to the tracking server: their failures may pass
LOCK_LEASE_S = 60  # a run killed while holding the registry lock frees it after this long


def configured(stage_task: Task, params: Params) -> Task:
    """`stage_task` with the timeout of its stage and, for tracking-server tasks, the retries of params.yaml."""
    settings, stage = params.pipeline, stage_task.name
    timeout = settings.timeouts.model_dump(by_alias=True)["register" if stage in IO_TASKS else stage]
    if stage not in IO_TASKS:
        return stage_task.with_options(timeout_seconds=timeout)
    return stage_task.with_options(
        timeout_seconds=timeout,
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_delay),
        retry_condition_fn=_may_pass,
    )


def _may_pass(task: Task, task_run: Any, state: Any) -> bool:
    """Retry what may pass (a server that does not answer yet), not what fails the same way again."""
    try:
        state.result()
    except (DataError, ConfigError):
        return False
    except Exception:  # noqa: BLE001 - any other failure of a tracking request is worth another try
        return True
    return False


@task(name="validate")
def validate(params: Params) -> dict:
    report = validate_dataset(params.data.raw, params.validation)
    create_markdown_artifact(
        key="msa-validation",
        markdown=f"# Data validation: {'passed' if report.success else 'FAILED'}\n\n```\n{report.summary()}\n```\n",
        description=f"Great Expectations suite on {params.data.raw}",
    )
    if not report.success:
        raise DataError(params.validation.report, f"{report.summary()}\nNothing was trained or registered.")
    get_run_logger().info(report.summary())
    return report.to_dict() | {"expectations": report.evaluated}


def _features_key(context: Any, arguments: dict[str, Any]) -> str:
    params: Params = arguments["params"]
    return f"featurize-{input_key(params.data.raw, params.featurize)}"


def features_current(params: Params) -> bool:
    """Whether featurize.out holds the features of the current inputs: when not, a cached result is stale."""
    return is_current(params.featurize.out, input_key(params.data.raw, params.featurize))


@task(name="featurize", cache_key_fn=_features_key, persist_result=True, result_serializer="json")
def featurize(params: Params) -> dict:
    """Cached on the content hash of the dataset, the text model and the settings: unchanged inputs skip it."""
    result = featurize_dataset(params.data.raw, params.featurize, progress=SHOW_PROGRESS)
    get_run_logger().info(result.summary())
    return {"out": str(result.out), "key": result.state.key, "samples": len(result.state.ids)}


@task(name="train")
def train(params: Params) -> dict:
    """Multi-task training; continues a checkpoint of the same inputs (a run killed mid-training) if there is one."""
    from components.training import resume_point
    from components.training import train as train_model

    logger = get_run_logger()
    epoch = resume_point(params.featurize.out, params.model, params.train)
    if epoch is not None:
        logger.info(f"resuming from {params.train.out / 'checkpoints'} after epoch {epoch}")
    result = train_model(
        params.featurize.out, params.model, params.train, resume=epoch is not None, progress=SHOW_PROGRESS
    )
    logger.info(result.summary())
    return {
        "monitor": result.monitor,
        "best_epoch": result.best_epoch,
        "best_value": result.best_value,
        "epochs_run": result.epochs_run,
        "resumed_from": result.resumed_from,
        "seconds": result.seconds,
    }


@task(name="evaluate")
def evaluate(params: Params) -> list[dict]:
    from components.evaluation import evaluate as evaluate_model

    result = evaluate_model(params.featurize.out, params.train.out, params.evaluate, progress=SHOW_PROGRESS)
    rows = [
        {"split": split, "head": head} | {k: round(v, 4) for k, v in values.items() if isinstance(v, int | float)}
        for split, heads in result.metrics.items()
        for head, values in heads.items()
    ]
    create_table_artifact(
        key="msa-metrics", table=rows, description=f"Every head on every split ({params.evaluate.metrics})"
    )
    get_run_logger().info(result.summary())
    return rows


@task(name="compress")
def compress(params: Params) -> list[dict]:
    from components.compression import compress as compress_model

    result = compress_model(
        params.featurize.out, params.train.out, params.compress, params.train, progress=SHOW_PROGRESS
    )
    base = result.baseline
    rows = [_compression_row("fp32", base, base)] + [_compression_row(n, v, base) for n, v in result.variants.items()]
    create_table_artifact(
        key="msa-compression",
        table=rows,
        description=f"Each variant against the trained model: test {result.head} {result.metric} "
        f"({params.compress.report})",
    )
    get_run_logger().info(result.summary())
    return rows


def _compression_row(name: str, variant: dict, base: dict) -> dict:
    return {
        "variant": name,
        "size_mb": round(variant["size_bytes"] / 1e6, 1),
        "x_smaller": round(base["size_bytes"] / variant["size_bytes"], 2),
        "p50_ms_batch1": round(variant["latency_ms_p50"], 1),
        "x_faster": round(base["latency_ms_p50"] / variant["latency_ms_p50"], 2),
        "samples_per_s": round(variant["throughput_per_s"]),
        "drop_points": round(variant.get("drop_points", 0.0), 2),
        "kept": variant.get("kept", "baseline"),
    }


@task(name="lineage")
def already_registered(params: Params) -> str | None:
    """Which registered version was trained from the same data, settings and code, if any."""
    from components.tracking import registered_with_same_lineage

    return registered_with_same_lineage(params)


def report_skip(reason: str) -> None:
    get_run_logger().info(f"skipped: {reason}")
    create_markdown_artifact(
        key="msa-registration",
        markdown=f"# Nothing to retrain\n\n{reason}.\n\nRun with `force=True` (`msa run --force`) to train anyway.\n",
        description="Data, params and code are unchanged since that version was trained",
    )


@task(name="register")
def register(params: Params, force: bool = False) -> dict:
    """Log and register under the registry lock. The lineage is checked again while holding it: of two runs of the
    same inputs started together, the second finds the first's version and skips instead of registering twice."""
    from components.tracking import register as register_model
    from components.tracking import registered_with_same_lineage

    ensure_registry_lock(params.pipeline.registry_lock)
    with concurrency(params.pipeline.registry_lock, occupy=1, strict=True, lease_duration=LOCK_LEASE_S):
        same = None if force else registered_with_same_lineage(params)
        if same is not None:
            report_skip(same)
            return {"registered": False, "reason": same}
        registration = register_model(params)
    get_run_logger().info(registration.summary())
    champion = (
        "none" if registration.champion_before is None
        else f"v{registration.champion_before} ({registration.champion_score:.4g})"
        if registration.champion_score is not None else f"v{registration.champion_before}"
    )  # fmt: skip
    create_markdown_artifact(
        key="msa-registration",
        markdown=(
            f"# {registration.name} version {registration.version}: "
            f"{'champion' if registration.promoted else 'challenger'}\n\n"
            f"| | |\n|---|---|\n| metric | {registration.metric} |\n| score | {registration.score:.4g} |\n"
            f"| champion before | {champion} |\n| decision | {registration.decision} |\n"
            f"| MLflow run | `{registration.run_id}` (experiment `{registration.experiment}`) |\n"
        ),
        description="The champion/challenger gate's decision",
    )
    return {"registered": True} | dataclasses.asdict(registration)


def ensure_registry_lock(name: str) -> None:
    """Create the one-slot global concurrency limit the first time it is needed (a server starts without it)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
