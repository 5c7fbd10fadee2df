"""Where the tracking store is and how to reach it: the tracking URI, a checked client, experiments, the tags that
say where a run comes from, and links into the MLflow UI.

The tracking URI is MLflow's own setting: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` with artifacts under
`./mlruns`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from components.core.config import RegisterParams
from components.core.errors import TrackingError, first_line

if TYPE_CHECKING:  # MLflow is imported where it is used: importing it takes seconds
    from mlflow import MlflowClient

__all__ = [
    "DEFAULT_TRACKING_URI",
    "TRACKING_SCHEMES",
    "UI_DEFAULT",
    "WORKFLOW",
    "connected",
    "experiment_id",
    "model_url",
    "source_tags",
    "tracking_uri",
    "ui_url",
    "uri_problem",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The schemes MLflow keeps runs under (a database's may carry its driver: postgresql+psycopg2).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")
# What kind of experiment this is, for the MLflow UI's experiment-kind selector (and Databricks). MLflow 3.17's UI does
# not pick its view from it: with workflow-based navigation on (always, in open-source MLflow) it reads the view from
# the link's `workflowType` query, else from the browser's last choice, else the GenAI one. So every link this project
# prints carries WORKFLOW (ui_url).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
WORKFLOW = "workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a database or file store


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextmanager
def connected(settings: RegisterParams) -> Iterator[MlflowClient]:
    """An MlflowClient whose HTTP requests give up after `settings.retries` retries, checked to answer.

    The environment wins over params.yaml for the retry settings (MLflow reads them per request).
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    if (problem := uri_problem(uri)) is not None:  # before MLflow sees it: it creates a database file, and folders
        raise TrackingError(f"MLFLOW_TRACKING_URI {uri}: {problem}. Nothing was logged or registered.")
    try:
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
    except Exception as e:  # noqa: BLE001 - MLflow and SQLAlchemy each raise their own
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {uri} is not usable: {type(e).__name__}: {first_line(e)}. Nothing was logged or "
            "registered."
        ) from None
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - requests, MLflow and SQLAlchemy each raise their own
        raise TrackingError(
            f"tracking server {uri} does not answer (gave up after {settings.retries} retries): "
            f"{type(e).__name__}: {first_line(e)}. Nothing was logged or registered."
        ) from None
    yield client


def uri_problem(uri: str) -> str | None:
    """Why MLflow must not be handed `uri`, or None: a scheme MLflow has no store for (a typo), or a database or
    file store in a directory that does not exist, which MLflow would create along with an empty database. Servers
    (http, https, postgresql, ...) are asked, with retries."""
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]+):(.*)", uri, flags=re.DOTALL)  # not one letter: C:\\ is a drive
    scheme, rest = (match[1].lower(), match[2]) if match else ("", uri)
    if scheme and scheme.split("+")[0] not in TRACKING_SCHEMES:
        return f"unknown scheme '{scheme}'; use http(s)://host:port for a tracking server or {DEFAULT_TRACKING_URI}"
    if scheme == "sqlite":
        if not rest.startswith("///"):
            return "a SQLite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        path = rest[3:].partition("?")[0]
        if path in ("", ":memory:"):
            return f"an in-memory SQLite database keeps nothing; name a file, e.g. {DEFAULT_TRACKING_URI}"
    elif scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
    elif scheme:
        return None
    else:  # a path: MLflow's file store
        path = uri
    folder = Path(path).parent
    if not folder.is_dir():
        return f"directory '{folder}' does not exist (MLflow would create it); create it or correct the URI"
    return None


def ui_url(experiment: str, run: str | None = None, *, tab: str | None = None) -> str:
    """The MLflow UI's page of an experiment (its runs table) or of one of its runs, in the model-training view.

    On the tracking server when MLFLOW_TRACKING_URI names one, else where `mlflow ui` serves by default."""
    page = f"/experiments/{experiment}" + (f"/runs/{run}" if run else "") + (f"/{tab}" if tab else "")
    return f"{_ui_base()}/#{page}?{WORKFLOW}"


def model_url(name: str) -> str:
    """The MLflow UI's page of a registered model (its versions and aliases)."""
    return f"{_ui_base()}/#/models/{name}?{WORKFLOW}"


def _ui_base() -> str:
    uri = tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT


def source_tags() -> dict[str, str]:
    """`mlflow.user`, `mlflow.source.name`/`type` and the git commit, branch and repository URL, as MLflow's fluent
    start_run records them (its run-context providers), except that git is asked about the working directory (the
    project) rather than about the entry point's file: `msa` lies in a git-ignored virtual environment, or outside
    the repository in an image, where MLflow finds no commit."""
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    here = str(Path.cwd())
    git = {
        MLFLOW_GIT_COMMIT: git_utils.get_git_commit(here),
        MLFLOW_GIT_BRANCH: git_utils.get_git_branch(here),
        MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(here),  # credentials stripped
    }
    # `ignore` takes provider classes (isinstance), whatever its annotation says.
    return resolve_tags({k: v for k, v in git.items() if v}, ignore=[GitRunContext])  # type: ignore[list-item]


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment `name`, created in the model-training view if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(name)
            if experiment is None:  # it was not: the creation itself failed
                raise
    if experiment.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id
