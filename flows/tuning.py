"""The `tune` flow: an Optuna study whose trials run as Prefect tasks, at most `tune.concurrency` at once, each in a
process of its own, and log as nested MLflow runs of one tune run per study.

Trials of one study may run in several flow runs at once, on several machines (the tune-gpu deployment on the GPU
pool, started once per worker): they share the study through its storage (`tune.storage`), so each runs the trials
still missing and none runs one twice. A flow run that was killed leaves its running trials to be failed and
retried by the next one (components.training.tuning).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture, as_completed
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from components import tracking
from components.core.config import Params, load_params
from components.features.contract import read_state
from components.training import tuning
from components.training.logged import log_tune, tune_run
from flows.pipeline import featurize_if_changed

__all__ = ["trial", "tune"]


@task(name="trial")
def trial(params: Params, index: int, run_id: str) -> tuning.TrialResult:
    """The `index`-th trial task of this flow run: distinct inputs, so no task is taken for another's cached run."""
    result = tuning.run_trial(params, run_id)
    get_run_logger().info(result.summary())
    return result


# Trials train in processes of their own: torch's random state and thread settings are per process. The cast: `flow`
# types task_runner as TaskRunner[PrefectFuture[Any]], invariant, which no concrete runner is (PrefectHQ/prefect#16938).
_TRIAL_RUNNER = cast(TaskRunner[PrefectFuture[Any]], ProcessPoolTaskRunner())


@flow(name="tune", persist_result=True, result_serializer="json", task_runner=_TRIAL_RUNNER)
def tune(params: str = "params.yaml", trials: int | None = None) -> tuning.TuneResult:
    """Run the trials the study still lacks to have `trials` (default tune.trials) finished ones, then write the best
    trial's values as a params file (tune.best) and every trial to tune.report."""
    p = load_params(params)
    if trials is not None:
        p = p.model_copy(update={"tune": p.tune.model_copy(update={"trials": trials})})
    logger = get_run_logger()
    featurize_if_changed(p)
    plan = tuning.plan(p)
    experiment = p.registry.experiment or read_state(p.featurize.out).dataset
    with tracking.connected(p.registry) as client, tune_run(client, experiment, plan, p) as run_id:
        logger.info(f"study {plan.study}: {plan.todo} trials to run, {p.tune.concurrency} at once; MLflow run {run_id}")
        with _api_for_trial_processes():
            _run_trials(p, plan.todo, run_id)
        result = tuning.conclude(p, Path(params))
        log_tune(client, run_id, result)
    create_markdown_artifact(key="msa-tune", markdown=_markdown(result), description=f"Optuna study {plan.study}")
    logger.info(result.summary())
    return result


def _run_trials(p: Params, todo: int, run_id: str) -> None:
    """`todo` trial tasks, tune.concurrency at a time. A failure that is not the trial's own (a FAIL state) stops
    new trials and fails the flow once the running ones end: it would fail every trial."""
    running = [trial.submit(p, index, run_id) for index in range(min(todo, p.tune.concurrency))]
    queued, failed = list(range(len(running), todo)), None
    while running:
        done = next(as_completed(running))
        running.remove(done)
        try:
            done.result()
        except Exception as e:  # noqa: BLE001 - whatever it was, no new trial starts
            failed = failed or e
        if queued and failed is None:
            running.append(trial.submit(p, queued.pop(0), run_id))
    if failed is not None:
        raise failed


@contextmanager
def _api_for_trial_processes() -> Iterator[None]:
    """Trial processes talk to this flow run's Prefect API. On the ephemeral API each would otherwise start a
    temporary server of its own (15-25 s each, and their task runs would not show in this one's)."""
    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def _markdown(result: tuning.TuneResult) -> str:
    keys = sorted({k for t in result.trials for k in t.values})
    rows = [
        f"| {t.number} | {t.state} | {'' if t.value is None else f'{t.value:.4f}'} | {t.epochs} | "
        + " | ".join(str(t.values.get(k, "")) for k in keys)
        + " |"
        for t in result.trials
    ]
    return (
        f"# Study {result.study}: {result.monitor} ({result.direction})\n\n{result.summary()}\n\n"
        f"| trial | state | score | epochs | {' | '.join(keys)} |\n|{'---|' * (4 + len(keys))}\n"
        + "\n".join(rows)
        + "\n"
    )
