"""The Prefect flows: `pipeline` (validate -> featurize -> train -> evaluate -> robustness -> compress -> register)
and `train`, the step that wants a GPU, which the pipeline runs in-process or dispatches to the GPU work pool.

The pipeline opens its MLflow run when validation starts and every stage logs into it as it ends. Training, on
whichever machine it runs, logs into the same run through the tracking server and uploads the model there; the
pipeline downloads it and checks its digest before evaluating. Stages on different machines share no directory:
a worker needs the repository, the DVC remote and the tracking server's URL.

`msa run` calls `pipeline` on Prefect's ephemeral API, unless no Prefect server is configured and the flow's first
check, the lineage, finds nothing to retrain: it makes that check before starting Prefect (flows.cli). The
deployments in prefect.yaml run the same flows on workers. Both read params.yaml and write the same files as the DVC
stages.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger
from prefect.states import Cancelling, Crashed

from components import tracking
from components.core.config import Params, load_params, with_seeds
from components.core.errors import TrainingError
from components.features.key import input_key, is_current
from components.registry.register import Registration, Skipped, run_context, run_name
from components.training.lineage import lineage
from components.training.run_log import end_train_attempt, train_run, training_silence
from flows import tasks

__all__ = ["featurize_if_changed", "pipeline", "training"]

if TYPE_CHECKING:  # torch is imported by the tasks that train, not by `msa run` deciding to skip
    from components.training.train import TrainResult


@flow(name="train", persist_result=True, result_serializer="json")
def training(
    run_id: str, params: str = "params.yaml", attempt: int = 1, restart: bool = False, seeds: int | None = None
) -> TrainResult:
    """Featurize (cached on content) and train, logging into pipeline run `run_id`; continues the stored
    checkpoint when a worker was killed mid-run, unless `restart`. `attempt` counts the pipeline's dispatches;
    `seeds` overrides train.seeds.

    Its train run's heartbeat beats from the start (featurizing on a fresh worker takes a while), so the pipeline
    can tell this flow run from a lost one.
    """
    p = with_seeds(load_params(params), seeds)
    every = min(tracking.HEARTBEAT_EVERY_S, p.pipeline.train_silence / 4)
    with (
        tracking.connected(p.registry) as client,
        tracking.heartbeat(client, train_run(client, run_id, attempt), every),
    ):
        featurize_if_changed(p)
        return tasks.with_timeout(tasks.train, p.pipeline.timeouts.train)(p, run_id, attempt, restart)


@flow(name="pipeline", persist_result=True, result_serializer="json")
def pipeline(params: str = "params.yaml", force: bool = False, seeds: int | None = None) -> Registration | Skipped:
    """The whole pipeline. When the data, params and code equal a registered version's, it says so and ends
    without training (and without an MLflow run), unless `force`: that check comes first, so that a scheduled run
    with nothing to do ends in seconds. `seeds` overrides train.seeds (`msa run --seeds N`)."""
    p = with_seeds(load_params(params), seeds)
    timeouts, ours = p.pipeline.timeouts, lineage(p)
    if not force:
        same = tasks.with_retries(tasks.already_registered, p, timeouts.register_)(p, ours)
        if same is not None:
            tasks.report_skip(same)
            return same
    context = run_context(p, ours)
    with (
        tracking.connected(p.registry) as client,
        tracking.pipeline_run(client, context.experiment, run_name(), context.tags, p) as run_id,
    ):
        get_run_logger().info(
            f"MLflow run {run_id} in experiment '{context.experiment}' ({tracking.tracking_uri()}): "
            + tracking.ui_url(client.get_run(run_id).info.experiment_id, run_id)
        )
        tasks.with_timeout(tasks.validate, timeouts.validate_)(p, run_id, context)
        if p.pipeline.training == "deployment":
            _train_on_work_pool(p, params, run_id, restart=force)
        else:
            training(run_id, params, restart=force, seeds=p.train.seeds)
        digest = tasks.with_retries(tasks.fetch_model, p, timeouts.register_)(p, run_id)
        tasks.with_timeout(tasks.evaluate, timeouts.evaluate)(p, run_id)
        tasks.with_timeout(tasks.robustness, timeouts.robustness)(p, run_id)
        tasks.with_timeout(tasks.compress, timeouts.compress)(p, run_id)
        return tasks.with_retries(tasks.register, p, timeouts.register_)(p, run_id, context, digest, force)


def featurize_if_changed(p: Params) -> None:
    """Featurize, or keep the features when their content key (dataset, text model, settings) is unchanged."""
    key = input_key(p.data.raw, p.featurize)
    featurize = tasks.with_timeout(tasks.featurize, p.pipeline.timeouts.featurize)
    featurize.with_options(refresh_cache=not is_current(p.featurize.out, key))(p, key)


def _train_on_work_pool(p: Params, params: str, run_id: str, *, restart: bool) -> None:
    """Run the training deployment (a worker of its pool picks it up) and wait for it to end.

    A worker that dies mid-run cannot say so: its flow run stays Running. The pipeline tells a lost worker from a
    slow one by training's heartbeat in MLflow; after `pipeline.train_silence` seconds without one it marks the flow
    run Crashed and dispatches again, up to `pipeline.train_attempts` times. The next worker, on an empty disk,
    continues from the checkpoint stored on the tracking server.
    """
    settings, logger = p.pipeline, get_run_logger()
    for attempt in range(1, settings.train_attempts + 1):
        parameters = {
            "params": params,
            "run_id": run_id,
            "attempt": attempt,
            "restart": restart and attempt == 1,
            "seeds": p.train.seeds,
        }
        # run_deployment is typed `FlowRun | Coroutine` (prefect's async_dispatch): in this sync flow it runs sync
        flow_run = cast(FlowRun, run_deployment(settings.train_deployment, parameters=parameters, timeout=0))
        logger.info(
            f"training dispatched to deployment {settings.train_deployment} as flow run {flow_run.name} "
            f"(attempt {attempt} of {settings.train_attempts}); waiting for a worker of its pool"
        )
        if attempt == 1:
            featurize_if_changed(p)  # evaluate needs them here too: made while the worker trains on its own disk
        state = _await_training(flow_run.id, p, run_id, attempt)
        if state.is_completed():
            logger.info(f"training flow run {flow_run.name} completed")
            return
        if not state.is_crashed():
            raise TrainingError(
                f"training flow run {flow_run.name} of {settings.train_deployment} ended {state.name}: see its logs "
                "in Prefect"
            )
        logger.warning(f"training flow run {flow_run.name} crashed ({state.message}); dispatching it again")
    raise TrainingError(
        f"training was lost {settings.train_attempts} times (pipeline.train_attempts), the last time: {state.message}. "
        "See the gpu pool's worker logs"
    )


def _await_training(flow_run_id: UUID, p: Params, run_id: str, attempt: int) -> State:
    """The final state of the training flow run, or Crashed once its heartbeat has been silent too long.

    Waiting is bounded by `pipeline.timeouts.train`, picking up by a worker included (a pool without workers).
    """
    silence, poll = p.pipeline.train_silence, min(10.0, p.pipeline.train_silence / 4)
    deadline = time.monotonic() + p.pipeline.timeouts.train
    with get_client(sync_client=True) as prefect, tracking.connected(p.registry) as client:
        while True:
            flow_run = prefect.read_flow_run(flow_run_id)
            state = flow_run.state  # None only before the server gave the new run its first state
            if state is not None and state.is_final():
                if not state.is_completed():  # its process may have died with it (a killed container): end its run
                    end_train_attempt(client, run_id, attempt, "KILLED" if state.is_crashed() else "FAILED")
                return state
            if time.monotonic() > deadline:
                prefect.set_flow_run_state(flow_run_id, Cancelling(message="pipeline.timeouts.train ran out"))
                raise TrainingError(
                    f"training flow run {flow_run.name} did not end within pipeline.timeouts.train "
                    f"({p.pipeline.timeouts.train} s; it was {flow_run.state_name}): nothing trained"
                )
            if state is not None and state.is_running() and flow_run.start_time is not None:
                quiet = training_silence(client, run_id, attempt, since=flow_run.start_time.timestamp())
                if quiet > silence:
                    lost: State = Crashed(message=f"no heartbeat from training for {quiet:.0f} s: its worker was lost")
                    prefect.set_flow_run_state(flow_run_id, lost, force=True)
                    end_train_attempt(client, run_id, attempt, "KILLED")
                    return lost
            time.sleep(poll)
