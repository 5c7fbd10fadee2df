"""The Prefect flows: `pipeline` (validate -> featurize -> train -> evaluate -> compress -> register) and `train`,
the step that wants a GPU, which the pipeline runs in-process or dispatches to the GPU work pool.

`msa run` calls `pipeline` on Prefect's ephemeral API; the deployments in prefect.yaml run the same flows on
workers. Both read params.yaml and write the same files as the DVC stages.
"""

from __future__ import annotations

from prefect import flow
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger

from components.config import load_params
from components.errors import TrainingError
from flows import tasks


@flow(name="train", persist_result=True, result_serializer="json")
def training(params: str = "params.yaml") -> dict:
    """Train every head and the fusion head; continues a checkpoint of the same inputs if a run was killed."""
    p = load_params(params)
    return tasks.configured(tasks.train, p)(p)


@flow(name="pipeline", persist_result=True, result_serializer="json")
def pipeline(params: str = "params.yaml", force: bool = False) -> dict:
    """The whole pipeline. When the data, params and code equal a registered version's, it says so and ends
    without training, unless `force`."""
    p = load_params(params)
    if not force:
        same = tasks.configured(tasks.already_registered, p)(p)
        if same is not None:
            tasks.report_skip(same)
            return {"registered": False, "reason": same}
    tasks.configured(tasks.validate, p)(p)
    featurize = tasks.configured(tasks.featurize, p)
    featurize.with_options(refresh_cache=not tasks.features_current(p))(p)
    if p.pipeline.training == "deployment":
        _train_on_work_pool(p.pipeline.train_deployment, params)
    else:
        training(params)
    tasks.configured(tasks.evaluate, p)(p)
    tasks.configured(tasks.compress, p)(p)
    return tasks.configured(tasks.register, p)(p, force)


def _train_on_work_pool(deployment: str, params: str) -> None:
    """Run the training deployment (a worker of its pool picks it up) and wait for it to end."""
    logger = get_run_logger()
    logger.info(f"training dispatched to deployment {deployment}; waiting for a worker of its pool")
    run = run_deployment(deployment, parameters={"params": params}, timeout=None)
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise TrainingError(f"training flow run {run.name} of {deployment} ended {state}: see its logs in Prefect")
    logger.info(f"training flow run {run.name} completed")
