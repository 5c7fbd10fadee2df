"""What a stage logs, as data: a `Logged` payload of inputs, metrics, params, tags, artifacts and child runs, which the
stage builds (each stage package's `logged` module) and `log` writes into a run. Tracking needs to know no stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.tracking.inputs import InputDataset, log_dataset
from components.tracking.records import log_numbers, log_params, log_tags
from components.tracking.runs import child_run, child_runs

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["Artifact", "ChildRun", "Logged", "log"]


@dataclass(frozen=True)
class Artifact:
    """A file logged under `folder` of the run's artifacts; with `contents`, the files of the directory `path`."""

    path: Path
    folder: str
    optional: bool = False  # skipped when there is no such file (a directory's contents: always, when it is none)
    contents: bool = False


@dataclass(frozen=True)
class Logged:
    """What one run receives: datasets as its inputs, metrics (only finite numbers are logged), params, tags,
    artifacts, and child runs."""

    inputs: tuple[InputDataset, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()
    children: tuple[ChildRun, ...] = ()


@dataclass(frozen=True)
class ChildRun:
    """A child run and what it receives. It is `kind`'s child named `name` (components.tracking.runs.child_run:
    found, else created with `tags`), or with `match` the newest child of `kind` carrying those tags, as it is.

    With `span` (start, end in ms), a run created starts at `start`, and the run is ended FINISHED at `end`: it
    lasts as long as its own work. Without it, the run's status is left as it is (or reopened with `reopen`)."""

    kind: str
    name: str
    logged: Logged
    tags: Mapping[str, str] = field(default_factory=dict)
    match: Mapping[str, str] | None = None
    reopen: bool = True
    span: tuple[int, int] | None = None


def log(client: MlflowClient, run_id: str, logged: Logged) -> None:
    """`logged` into run `run_id`: its child runs first, then its own inputs, metrics, params, tags and artifacts."""
    for child in logged.children:
        child_id = _child_id(client, run_id, child)
        log(client, child_id, child.logged)
        if child.span is not None:
            client.set_terminated(child_id, "FINISHED", end_time=child.span[1])
    for dataset in logged.inputs:
        log_dataset(client, run_id, dataset)
    log_numbers(client, run_id, logged.metrics)
    if logged.params:
        log_params(client, run_id, logged.params)
    if logged.tags:
        log_tags(client, run_id, logged.tags)
    for artifact in logged.artifacts:
        _log_artifact(client, run_id, artifact)


def _child_id(client: MlflowClient, parent: str, child: ChildRun) -> str:
    if child.match is not None:
        match = child.match
        found = [r for r in child_runs(client, parent, child.kind) if match.items() <= r.data.tags.items()]
        if found:
            return found[-1].info.run_id
    start = None if child.span is None else child.span[0]
    return child_run(client, parent, child.kind, child.name, child.tags, reopen=child.reopen, start_time=start)


def _log_artifact(client: MlflowClient, run_id: str, artifact: Artifact) -> None:
    path = Path(artifact.path)
    if artifact.contents:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact.folder)
    elif not artifact.optional or path.is_file():
        client.log_artifact(run_id, str(path), artifact.folder)
