"""The Prefect flows: `pipeline` (validate -> featurize -> train -> evaluate -> compress -> register) and `train`,
the step that wants a GPU, which the pipeline runs in-process or dispatches to the GPU work pool.

The pipeline opens its MLflow run when validation starts and every stage logs into it as it ends. Training, on
whichever machine it runs, logs into the same run through the tracking server and uploads the model there; the
pipeline downloads it and checks its digest before evaluating. Stages on different machines share no directory:
a worker needs the repository, the DVC remote and the tracking server's URL.

`msa run` calls `pipeline` on Prefect's ephemeral API; the deployments in prefect.yaml run the same flows on
workers. Both read params.yaml and write the same files as the DVC stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger

from components import tracking
from components.config import Params, load_params
from components.errors import TrainingError
from components.featurize import input_key, is_current
from components.lineage import lineage
from components.registry import Registration, Skipped, run_context, run_name
from flows import tasks

if TYPE_CHECKING:  # torch is imported by the tasks that train, not by `msa run` deciding to skip
    from components.training import TrainResult


@flow(name="train", persist_result=True, result_serializer="json")
def training(run_id: str, params: str = "params.yaml") -> TrainResult:
    """Featurize (cached on content) and train, logging into pipeline run `run_id`; continues the stored
    checkpoint when a worker was killed mid-run."""
    p = load_params(params)
    _featurize(p)
    return tasks.with_timeout(tasks.train, p.pipeline.timeouts.train)(p, run_id)


@flow(name="pipeline", persist_result=True, result_serializer="json")
def pipeline(params: str = "params.yaml", force: bool = False) -> Registration | Skipped:
    """The whole pipeline. When the data, params and code equal a registered version's, it says so and ends
    without training (and without an MLflow run), unless `force`."""
    p = load_params(params)
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
        get_run_logger().info(f"MLflow run {run_id} in experiment '{context.experiment}' ({tracking.tracking_uri()})")
        tasks.with_timeout(tasks.validate, timeouts.validate)(p, run_id, context)
        if p.pipeline.training == "deployment":
            _train_on_work_pool(p.pipeline.train_deployment, params, run_id)
            _featurize(p)  # evaluate reads features here too (the worker featurized on its own disk)
        else:
            training(run_id, params)
        tasks.with_retries(tasks.fetch_model, p, timeouts.register_)(p, run_id)
        tasks.with_timeout(tasks.evaluate, timeouts.evaluate)(p, run_id)
        tasks.with_timeout(tasks.compress, timeouts.compress)(p, run_id)
        return tasks.with_retries(tasks.register, p, timeouts.register_)(p, run_id, context, force)


def _featurize(p: Params) -> None:
    """Featurize, or keep the features when their content key (dataset, text model, settings) is unchanged."""
    key = input_key(p.data.raw, p.featurize)
    featurize = tasks.with_timeout(tasks.featurize, p.pipeline.timeouts.featurize)
    featurize.with_options(refresh_cache=not is_current(p.featurize.out, key))(p, key)


def _train_on_work_pool(deployment: str, params: str, run_id: str) -> None:
    """Run the training deployment (a worker of its pool picks it up) and wait for it to end."""
    logger = get_run_logger()
    logger.info(f"training dispatched to deployment {deployment}; waiting for a worker of its pool")
    run = run_deployment(deployment, parameters={"params": params, "run_id": run_id}, timeout=None)
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise TrainingError(f"training flow run {run.name} of {deployment} ended {state}: see its logs in Prefect")
    logger.info(f"training flow run {run.name} completed")
