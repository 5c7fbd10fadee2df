"""Prefect tasks: each stage's component function plus what orchestration adds: retries with backoff on the tasks
whose work is a tracking request (lineage, fetch model, register), timeouts, the featurize cache, artifacts and logs.
The other stages log through MLflow's own bounded HTTP retries (register.retries). No ML logic lives here.

Every stage task takes the loaded `Params` and the pipeline's MLflow run id, and logs its stage into that run as it
ends (what each stage logs: its package's `logged` module; components.tracking logs it), so a user watches the run
in MLflow while it goes. Results are the components' own dataclasses, persisted as JSON (never pickles).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from components import tracking
from components.core.config import ConfigError, Params
from components.core.errors import DataError, first_line
from components.data.validation import validate_dataset
from components.features.featurize import FeaturizeResult
from components.features.featurize import featurize as featurize_dataset
from components.registry.register import Registration, RunContext, Skipped
from components.training.lineage import Lineage
from components.training.run_log import TrainingLog, trained_model_digest

__all__ = [
    "LOCK_LEASE_S",
    "SHOW_PROGRESS",
    "already_registered",
    "compress",
    "ensure_registry_lock",
    "evaluate",
    "featurize",
    "fetch_model",
    "register",
    "report_skip",
    "robustness",
    "train",
    "validate",
    "with_retries",
    "with_timeout",
]

if TYPE_CHECKING:  # torch is imported only by the tasks that need it
    from components.training.train import TrainResult

SHOW_PROGRESS = sys.stderr.isatty()  # progress bars for a person at a terminal, not in a worker's log
LOCK_LEASE_S = 60  # a run killed while holding the registry lock frees it after this long

P = ParamSpec("P")
R = TypeVar("R")


def with_timeout(stage_task: Task[P, R], timeout: float) -> Task[P, R]:
    return stage_task.with_options(timeout_seconds=timeout)


def with_retries(stage_task: Task[P, R], params: Params, timeout: float) -> Task[P, R]:
    """`stage_task` retried with backoff on failures that may pass (a tracking server that does not answer yet)."""
    settings = params.pipeline
    return stage_task.with_options(
        timeout_seconds=timeout,
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_delay),
        retry_condition_fn=_may_pass,
    )


def _may_pass(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Retry what may pass (a server that does not answer yet), not what fails the same way again."""
    try:
        state.result()
    except (DataError, ConfigError):
        return False
    except Exception:  # noqa: BLE001 - any other failure of a tracking request is worth another try
        return True
    return False


@task(name="validate")
def validate(params: Params, run_id: str, context: RunContext) -> dict:
    from components.registry.register import record_validation

    report = validate_dataset(params.data.raw, params.validation)
    create_markdown_artifact(
        key="msa-validation",
        markdown=f"# Data validation: {'passed' if report.success else 'FAILED'}\n\n```\n{report.summary()}\n```\n",
        description=f"Great Expectations suite on {params.data.raw}",
    )
    with tracking.connected(params.registry) as client:
        record_validation(client, params, run_id, context)
    if not report.success:
        raise DataError(params.validation.report, f"{report.summary()}\nNothing was trained or registered.")
    get_run_logger().info(report.summary())
    return report.to_dict() | {"expectations": report.evaluated}


def _features_key(context: TaskRunContext, arguments: dict[str, Any]) -> str:
    return f"featurize-{arguments['key']}"


@task(name="featurize", cache_key_fn=_features_key, persist_result=True, result_serializer="json")
def featurize(params: Params, key: str) -> FeaturizeResult:
    """Cached on `key`, the content hash of the dataset, the text model and the settings (featurize.input_key):
    unchanged inputs skip it."""
    result = featurize_dataset(params.data.raw, params.featurize, progress=SHOW_PROGRESS)
    get_run_logger().info(result.summary())
    return result


@task(name="train")
def train(params: Params, run_id: str, attempt: int = 1, restart: bool = False) -> TrainResult:
    """Multi-task training logged live into the pipeline run `run_id`, from whichever machine runs it.

    Continues a checkpoint of the same inputs (a killed run), unless `restart`. On a worker whose disk holds none
    that continues (a replacement for one killed mid-run has an empty disk), it first restores the newest checkpoint
    the tracking server holds for this pipeline run.
    """
    from components.features.contract import read_state
    from components.training.train import build_spec, resume_point
    from components.training.train import train as train_model

    logger = get_run_logger()
    spec = build_spec(read_state(params.featurize.out), params.model, params.train)
    with tracking.connected(params.registry) as client:
        log = TrainingLog(client, run_id, spec, params.train.out, attempt, params)
        status = "FAILED"
        try:
            # A worker with an empty disk continues the stored checkpoint of a single-seed training; of several
            # seeds it trains each again (each seed's checkpoint lives on the disk it trained on).
            continues = restart or resume_point(params.featurize.out, params.model, params.train) is not None
            if not continues and params.train.seeds == 1 and (source := log.restore()) is not None:
                logger.info(f"restored the checkpoint of training run {source} from the tracking server")
            log.watch()
            result = train_model(
                params.featurize.out,
                params.model,
                params.train,
                resume=False if restart else None,
                progress=SHOW_PROGRESS,
                on_epoch=log.on_epoch,
            )
            if result.seeds and result.seed is not None:  # several seeds: the one whose model is kept
                log.record_seeds(result.history, result.seeds, result.seed)
            log.finish(
                {
                    "epochs_run": result.epochs_run,
                    "best_epoch": result.best_epoch,
                    "train_samples_per_s": result.train_samples_per_s,
                }
            )
            status = "FINISHED"
        finally:
            try:
                log.close(status)
            except Exception as e:  # noqa: BLE001 - training's own error matters more
                logger.warning(f"train run {log.run_id} could not be ended {status}: {first_line(e)}")
    logger.info(result.summary())
    return result


@task(name="fetch model")
def fetch_model(params: Params, run_id: str) -> str:
    """The trained model of pipeline run `run_id` in train.out, checked against the digest recorded at upload:
    downloaded from the tracking server unless the files here already have that digest (training ran here)."""
    from components.models import store as model_store
    from components.models import transfer

    with tracking.connected(params.registry) as client:
        train_run, expected = trained_model_digest(client, run_id)
        try:
            here = model_store.digest(params.train.out)
        except Exception:  # noqa: BLE001 - no model here: download it
            here = None
        downloaded, started = 0, time.perf_counter()
        if here != expected:
            transfer.fetch(client, train_run, params.train.out, expected)
            downloaded = transfer.model_bytes(params.train.out)
            get_run_logger().info(
                f"downloaded the model of training run {train_run} ({downloaded / 1e6:.1f} MB, digest {expected[:12]})"
            )
        seconds = time.perf_counter() - started if downloaded else 0.0
        tracking.log_numbers(client, run_id, {"model_download_mb": downloaded / 1e6, "model_download_seconds": seconds})
    return expected


@task(name="evaluate")
def evaluate(params: Params, run_id: str) -> list[dict]:
    from components.evaluation.evaluate import evaluate as evaluate_model
    from components.evaluation.logged import evaluation_logged
    from components.models.store import read_card

    result = evaluate_model(params.featurize.out, params.train.out, params.evaluate, progress=SHOW_PROGRESS)
    with tracking.connected(params.registry) as client:
        spec = read_card(params.train.out).spec
        tracking.log(client, run_id, evaluation_logged(spec, params.evaluate, result.scores, result.seed_scores))
    rows = result.scores.table()
    create_table_artifact(key="msa-metrics", table=rows, description=f"Every head on every split ({result.report})")
    get_run_logger().info(result.summary())
    return rows


@task(name="robustness")
def robustness(params: Params, run_id: str) -> list[dict]:
    from components.evaluation.logged import robustness_logged
    from components.evaluation.robustness import robustness as score_robustness
    from components.models.store import read_card

    r = params.robustness
    result = score_robustness(params.data.raw, params.featurize.out, params.train.out, r, progress=SHOW_PROGRESS)
    with tracking.connected(params.registry) as client:
        spec = read_card(params.train.out).spec
        tracking.log(client, run_id, robustness_logged(spec, r, result.scores))
    rows = result.scores.table()
    create_table_artifact(
        key="msa-robustness",
        table=rows,
        description=f"{result.split} {result.metric} (points) of every head under each perturbation ({result.report})",
    )
    get_run_logger().info(result.summary())
    return rows


@task(name="compress")
def compress(params: Params, run_id: str) -> list[dict]:
    from components.compression.compress import compress as compress_model
    from components.compression.logged import compression_logged, compression_table
    from components.compression.report import CompressionReport

    result = compress_model(
        params.featurize.out, params.train.out, params.compress, params.train, progress=SHOW_PROGRESS
    )
    report = CompressionReport.read(result.report)
    with tracking.connected(params.registry) as client:
        tracking.log(client, run_id, compression_logged(report, result.report, params.compress.tolerance))
    rows = compression_table(report)
    create_table_artifact(
        key="msa-compression",
        table=rows,
        description=f"Each variant against the trained model: test {result.head} {result.metric} ({result.report})",
    )
    get_run_logger().info(result.summary())
    return rows


@task(name="lineage")
def already_registered(params: Params, lineage: Lineage) -> Skipped | None:
    """Which registered version was trained from the same data, settings and code, if any."""
    from components.registry.register import registered_with_same_lineage

    return registered_with_same_lineage(params, lineage)


def report_skip(skipped: Skipped) -> None:
    get_run_logger().info(f"skipped: {skipped.reason}")
    create_markdown_artifact(
        key="msa-registration",
        markdown=f"# Nothing to retrain\n\n{skipped.reason}.\n\nRun with `force=True` (`msa run --force`) to train "
        "anyway.\n",
        description="Data, params and code are unchanged since that version was trained",
    )


@task(name="register")
def register(
    params: Params, run_id: str, context: RunContext, model_digest: str, force: bool = False
) -> Registration | Skipped:
    """Log and register under the registry lock. The lineage is checked again while holding it: of two runs of the
    same inputs started together, the second finds the first's version and skips instead of registering twice."""
    from components.registry.register import register as register_model
    from components.registry.register import registered_with_same_lineage

    ensure_registry_lock(params.pipeline.registry_lock)
    with concurrency(params.pipeline.registry_lock, occupy=1, strict=True, lease_duration=LOCK_LEASE_S):
        same = None if force else registered_with_same_lineage(params, context.lineage)
        if same is not None:
            report_skip(same)
            return same
        with tracking.connected(params.registry) as client:
            registration = register_model(client, params, run_id, context, model_digest=model_digest)
    get_run_logger().info(registration.summary())
    champion = (
        "none"
        if registration.champion_before is None
        else f"v{registration.champion_before} ({registration.champion_score:.4g})"
        if registration.champion_score is not None
        else f"v{registration.champion_before}"
    )
    create_markdown_artifact(
        key="msa-registration",
        markdown=(
            f"# {registration.name} version {registration.version}: "
            f"{'champion' if registration.promoted else 'challenger'}\n\n"
            f"| | |\n|---|---|\n| metric | {registration.metric} |\n| score | {registration.score:.4g} |\n"
            f"| champion before | {champion} |\n| decision | {registration.decision} |\n"
            f"| MLflow run | [{registration.run_id}]({registration.url}) (experiment `{registration.experiment}`) |\n"
            f"| registered model | [{registration.name}]({tracking.model_url(registration.name)}) |\n"
        ),
        description="The champion/challenger gate's decision",
    )
    return registration


def ensure_registry_lock(name: str) -> None:
    """Create the one-slot global concurrency limit the first time it is needed (a server starts without it)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
