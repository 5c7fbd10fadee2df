"""The life of MLflow runs: one parent run per pipeline run (or per study), opened when its work starts, kept alive
by a heartbeat, with child runs under it, and ended with the status of its work.

The parent run is FINISHED when the pipeline ends, FAILED when a stage fails, KILLED when interrupted. A process
that dies without saying so stops refreshing the run's heartbeat tag; the next pipeline run of the experiment
closes such a run as KILLED. Work on another machine (training on a GPU pool) addresses the run by id through the
tracking server only: no stage assumes a disk shared with another.

What each stage logs into these runs is its own package's `logged` module's business (components.tracking.payload
logs it); this module knows no stage.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from components.core.config import Params
from components.core.errors import first_line
from components.tracking.connection import experiment_id, source_tags
from components.tracking.records import flatten, log_params

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "HEARTBEAT",
    "HEARTBEAT_EVERY_S",
    "KIND",
    "PARENT",
    "SOURCE_TAGS",
    "STALE_AFTER_S",
    "child_run",
    "child_runs",
    "close_stale_runs",
    "heartbeat",
    "keyed_run",
    "pipeline_run",
]

KIND = "msa.kind"  # the tag that tells the runs of a pipeline run apart: pipeline, train, head, variant, ...
HEARTBEAT = "msa.heartbeat"  # unix seconds, refreshed while the run's process lives
PARENT = "mlflow.parentRunId"
# Where a run comes from, as MLflow's fluent start_run records it: copied onto every child run.
SOURCE_TAGS = ("mlflow.user", "mlflow.source.")
HEARTBEAT_EVERY_S = 30
STALE_AFTER_S = 300  # a RUNNING pipeline run whose heartbeat is this old has lost its process


@contextmanager
def pipeline_run(
    client: MlflowClient, experiment: str, run_name: str, tags: Mapping[str, str], params: Params
) -> Iterator[str]:
    """Open the parent run of one pipeline run and yield its id; close it FINISHED, FAILED or KILLED.

    Opening it first closes runs of the experiment whose process died (a stale heartbeat).
    """
    exp = experiment_id(client, experiment)
    close_stale_runs(client, exp)
    tags = {**source_tags(), **tags, KIND: "pipeline", HEARTBEAT: str(time.time())}
    run = client.create_run(exp, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    with _live(client, run_id, params, lambda status: _terminate_family(client, run_id, status)):
        yield run_id


@contextmanager
def keyed_run(
    client: MlflowClient,
    experiment: str,
    kind: str,
    run_name: str,
    key: Mapping[str, str],
    params: Params,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """The top-level run of `kind` that carries the `key` tags, reopened, else a new one named `run_name` (tagged
    `key` and `tags`), and its id. Ended FINISHED, FAILED or KILLED; its child runs each end themselves."""
    exp = experiment_id(client, experiment)
    match = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {KIND: kind, **key}.items())
    runs = client.search_runs([exp], filter_string=match, max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        fresh = {**source_tags(), KIND: kind, **(tags or {}), **key, HEARTBEAT: str(time.time())}
        run_id = client.create_run(exp, run_name=run_name, tags=fresh).info.run_id
    with _live(client, run_id, params, lambda status: client.set_terminated(run_id, status)):
        yield run_id


@contextmanager
def _live(client: MlflowClient, run_id: str, params: Params, end: Callable[[str], None]) -> Iterator[None]:
    """Log `params` on run `run_id` and beat its heartbeat while the block runs; then `end` it FINISHED, FAILED, or
    KILLED (Ctrl-C, SIGTERM: Prefect's TerminationSignal, SystemExit)."""
    status = "KILLED"
    try:
        log_params(client, run_id, flatten(params.model_dump(mode="json", by_alias=True), "."))
        with heartbeat(client, run_id):
            yield
        status = "FINISHED"
    except Exception:
        status = "FAILED"
        raise
    finally:
        try:
            end(status)
        except Exception as e:  # noqa: BLE001 - the stage's own error matters more; a later run closes this one
            logging.getLogger(__name__).warning(f"MLflow run {run_id} could not be ended {status}: {first_line(e)}")


@contextmanager
def heartbeat(client: MlflowClient, run_id: str, every: float = HEARTBEAT_EVERY_S) -> Iterator[None]:
    """Refresh run `run_id`'s heartbeat tag every `every` seconds while the block runs, from a daemon thread."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat only risks an early close by a later run
                client.set_tag(run_id, HEARTBEAT, str(time.time()))
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, daemon=True, name="msa-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def close_stale_runs(client: MlflowClient, experiment: str, *, now: float | None = None) -> list[str]:
    """Mark KILLED the RUNNING pipeline runs (and their RUNNING children) whose heartbeat stopped; their ids."""
    now = time.time() if now is None else now
    runs = client.search_runs(
        [experiment], filter_string=f"attributes.status = 'RUNNING' and tags.`{KIND}` = 'pipeline'", max_results=100
    )
    closed = []
    for run in runs:
        beat = float(run.data.tags.get(HEARTBEAT, run.info.start_time / 1000))
        if now - beat > STALE_AFTER_S:
            client.set_tag(run.info.run_id, "msa.closed_by", "a later pipeline run: its process stopped answering")
            _terminate_family(client, run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def child_runs(client: MlflowClient, parent: str, kind: str) -> list[Run]:
    """The child runs of `parent` of one kind (`train`, `head`, `variant`), oldest first."""
    run = client.get_run(parent)
    return client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{PARENT}` = '{parent}' and tags.`{KIND}` = '{kind}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


def child_run(
    client: MlflowClient,
    parent: str,
    kind: str,
    name: str,
    tags: Mapping[str, str] | None = None,
    *,
    reopen: bool = True,
    start_time: int | None = None,
) -> str:
    """The id of `parent`'s child run of `kind` named `name`: the existing one (reopened, unless not `reopen`, if a
    killed worker left it ended), else a new one starting at `start_time` (ms; now when None). Its tags are the
    parent's lineage and source tags plus `tags`.

    Results logged into a run after its work ended (a head's test metrics) do not reopen it: a run lasts as long
    as its own work."""
    for run in child_runs(client, parent, kind):
        if run.info.run_name == name:
            if reopen and run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
    parent_run = client.get_run(parent)
    inherited = {
        k: v
        for k, v in parent_run.data.tags.items()
        if (k.startswith(SOURCE_TAGS) or not k.startswith("mlflow.")) and k not in (HEARTBEAT, KIND)
    }
    run = client.create_run(
        parent_run.info.experiment_id,
        start_time=start_time,
        run_name=name,
        tags={**inherited, **(tags or {}), PARENT: parent, KIND: kind},
    )
    return run.info.run_id


def _terminate_family(client: MlflowClient, run_id: str, status: str) -> None:
    """End `run_id` and those of its children still RUNNING (a failed stage leaves no child open)."""
    experiment = client.get_run(run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`{PARENT}` = '{run_id}' and attributes.status = 'RUNNING'", max_results=1000
    )
    for child in children:
        client.set_terminated(child.info.run_id, status)
    client.set_terminated(run_id, status)
