"""MLflow tracking that knows no stage: reaching the tracking store, the life of runs, and logging into them.

    connection  the tracking URI, a checked client, experiments, the tags that say where a run comes from, UI links
    runs        a parent run per pipeline run, heartbeats, child runs, stale-run closing, end status
    records     numbers, params and tags into one run, in batches of MLflow's limits
    inputs      datasets as a run's inputs, and copying one run's inputs onto others
    payload     the `Logged` payload a stage builds to say what it logs, and `log`, which writes it into a run

It imports only `components.core` (and MLflow); what each stage logs is its own package's `logged` module.
`from components import tracking` gives the names below.
"""

from components.tracking.connection import (
    DEFAULT_TRACKING_URI,
    WORKFLOW,
    connected,
    experiment_id,
    model_url,
    source_tags,
    tracking_uri,
    ui_url,
    uri_problem,
)
from components.tracking.inputs import InputDataset, copy_inputs, log_dataset
from components.tracking.payload import Artifact, ChildRun, Logged, log
from components.tracking.records import flatten, log_numbers, log_params, log_tags
from components.tracking.runs import (
    HEARTBEAT,
    HEARTBEAT_EVERY_S,
    KIND,
    PARENT,
    STALE_AFTER_S,
    child_run,
    child_runs,
    close_stale_runs,
    heartbeat,
    keyed_run,
    pipeline_run,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "HEARTBEAT",
    "HEARTBEAT_EVERY_S",
    "KIND",
    "PARENT",
    "STALE_AFTER_S",
    "WORKFLOW",
    "Artifact",
    "ChildRun",
    "InputDataset",
    "Logged",
    "child_run",
    "child_runs",
    "close_stale_runs",
    "connected",
    "copy_inputs",
    "experiment_id",
    "flatten",
    "heartbeat",
    "keyed_run",
    "log",
    "log_dataset",
    "log_numbers",
    "log_params",
    "log_tags",
    "model_url",
    "pipeline_run",
    "source_tags",
    "tracking_uri",
    "ui_url",
    "uri_problem",
]
