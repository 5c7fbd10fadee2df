"""MLflow, live: one parent run per pipeline run, opened when validation starts and logged stage by stage.

A user watching the MLflow UI sees, while the pipeline runs:
    validate   the dataset as the run's input (name, DVC md5 as digest, version) and the validation report
    train      a `train` child run with system metrics (CPU, memory; GPU when present) and the checkpoints, and a
               child run per head whose curves (`epoch_train_loss`, `epoch_valid_<metric>`) grow epoch by epoch;
               the parent carries the monitored head's curves
    evaluate   `valid_<metric>` / `test_<metric>` on every head's run (the same keys, so the compare view lines
               them up) and the plots on the parent
    compress   a child run per variant, with the settings that tell it apart and its measurements
    register   the pyfunc model, the model card and the gate's decision (components.registry.register)
Every child run carries the params that tell it apart (a head's sub-model settings, a variant's settings).

The parent run is FINISHED when the pipeline ends, FAILED when a stage fails, KILLED when interrupted. A process
that dies without saying so stops refreshing the run's heartbeat tag; the next pipeline run of the experiment
closes such a run as KILLED. Work on another machine (training on a GPU pool) addresses the run by id through the
tracking server only: no stage assumes a disk shared with another.

The tracking URI is MLflow's own setting: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` with artifacts under
`./mlruns`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.core.config import Params, RegisterParams
from components.core.errors import TrackingError, first_line
from components.data.dataset import SPLITS

if TYPE_CHECKING:  # tuning logs through this module
    from components.training.tuning import Plan, TuneResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The schemes MLflow keeps runs under (a database's may carry its driver: postgresql+psycopg2).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "file")
KIND, HEAD, VARIANT = "msa.kind", "msa.head", "msa.variant"  # tags that tell the runs of a pipeline run apart
HEARTBEAT = "msa.heartbeat"  # unix seconds, refreshed while the run's process lives
MODEL_DIGEST = "msa.model_digest"  # on the train run: the content hash of its uploaded model/
PARENT = "mlflow.parentRunId"
# What kind of experiment this is, for the MLflow UI's experiment-kind selector (and Databricks). MLflow 3.17's UI does
# not pick its view from it: with workflow-based navigation on (always, in open-source MLflow) it reads the view from
# the link's `workflowType` query, else from the browser's last choice, else the GenAI one. So every link this project
# prints carries WORKFLOW (ui_url).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
WORKFLOW = "workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a database or file store
# Where a run comes from, as MLflow's fluent start_run records it: copied onto every child run.
SOURCE_TAGS = ("mlflow.user", "mlflow.source.")
HEARTBEAT_EVERY_S = 30
STALE_AFTER_S = 300  # a RUNNING pipeline run whose heartbeat is this old has lost its process
VARIANT_RUN_NAMES = {
    "int8": "int8",
    "prune_unstructured": "unstructured prune",
    "prune_structured": "structured prune",
    "onnx_fp32": "ONNX Runtime fp32",
    "onnx_int8": "ONNX Runtime int8",
}


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextmanager
def connected(settings: RegisterParams) -> Iterator[Any]:
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
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT
    page = f"/experiments/{experiment}" + (f"/runs/{run}" if run else "") + (f"/{tab}" if tab else "")
    return f"{base}/#{page}?{WORKFLOW}"


def model_url(name: str) -> str:
    """The MLflow UI's page of a registered model (its versions and aliases)."""
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT
    return f"{base}/#/models/{name}?{WORKFLOW}"


def source_tags() -> dict[str, str]:
    """`mlflow.user`, `mlflow.source.name`/`type` and the git commit, branch and repository URL, as MLflow's fluent
    start_run records them (its run-context providers), except that git is asked about the working directory (the
    project) rather than about the entry point's file: `msa` lies in a git-ignored virtual environment, or outside
    the repository in an image, where MLflow finds no commit."""
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL

    here = os.getcwd()
    git = {
        MLFLOW_GIT_COMMIT: git_utils.get_git_commit(here),
        MLFLOW_GIT_BRANCH: git_utils.get_git_branch(here),
        MLFLOW_GIT_REPO_URL: git_utils.get_git_repo_url(here),  # credentials stripped
    }
    return resolve_tags({k: v for k, v in git.items() if v}, ignore=[GitRunContext])


def experiment_id(client: Any, name: str) -> str:
    """The experiment `name`, created in the model-training view if it does not exist yet."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id


@contextmanager
def pipeline_run(client: Any, experiment: str, run_name: str, tags: Mapping[str, str], params: Params) -> Iterator[str]:
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
def _live(client: Any, run_id: str, params: Params, end: Callable[[str], None]) -> Iterator[None]:
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
def heartbeat(client: Any, run_id: str, every: float = HEARTBEAT_EVERY_S) -> Iterator[None]:
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


def training_silence(client: Any, parent: str, attempt: int, since: float) -> float:
    """Seconds since attempt `attempt` of training for pipeline run `parent` last gave a sign of life (its train
    run's heartbeat), or since `since` (when that attempt started) if that is later."""
    beats = [
        float(r.data.tags[HEARTBEAT])
        for r in child_runs(client, parent, "train")
        if r.info.run_name == train_run_name(attempt) and HEARTBEAT in r.data.tags
    ]
    return time.time() - max([since, *beats])


def close_stale_runs(client: Any, experiment: str, *, now: float | None = None) -> list[str]:
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


def train_run_name(attempt: int) -> str:
    """Each dispatch of training logs into a train run of its own: a lost worker that is still alive writes only
    into its attempt's run, never into its replacement's."""
    return "train" if attempt == 1 else f"train (attempt {attempt})"


def end_train_attempt(client: Any, parent: str, attempt: int, status: str) -> None:
    """End the train run of one attempt (a lost worker cannot end it itself)."""
    for run in child_runs(client, parent, "train"):
        if run.info.run_name == train_run_name(attempt) and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)


def child_runs(client: Any, parent: str, kind: str) -> list[Any]:
    """The child runs of `parent` of one kind (`train`, `head`, `variant`), oldest first."""
    run = client.get_run(parent)
    return client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{PARENT}` = '{parent}' and tags.`{KIND}` = '{kind}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


def child_run(
    client: Any,
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


@contextmanager
def tune_run(client: Any, experiment: str, plan: Plan, params: Params) -> Iterator[str]:
    """The run of the Optuna study of `plan` (reopened when the study resumes) and its id; its trials are its child
    runs. Ended FINISHED, FAILED or KILLED; trial runs are each ended by their own process."""
    exp = experiment_id(client, experiment)
    runs = client.search_runs(
        [exp], filter_string=f"tags.`{KIND}` = 'tune' and tags.`msa.study_uid` = '{plan.uid}'", max_results=1
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {**source_tags(), KIND: "tune", "msa.study": plan.study, "msa.study_uid": plan.uid}
        tags[HEARTBEAT] = str(time.time())
        run_id = client.create_run(exp, run_name=f"tune {plan.study}", tags=tags).info.run_id
    with _live(client, run_id, params, lambda status: client.set_terminated(run_id, status)):
        yield run_id


def log_tune(client: Any, run_id: str, result: TuneResult) -> None:
    """The study's outcome on its run: counts, the best score and values, the report and the tuned params file;
    trial runs a killed process left RUNNING are ended KILLED."""
    states = {t.number: t.state for t in result.trials}
    for run in child_runs(client, run_id, "trial"):
        if run.info.status == "RUNNING" and states.get(int(run.data.tags.get("msa.trial", -1))) == "FAIL":
            client.set_terminated(run.info.run_id, "KILLED")
    counts = {f"trials_{s.lower()}": sum(t.state == s for t in result.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = {} if result.best is None else {f"best_{result.monitor.replace(' ', '_')}": result.best.value}
    log_numbers(client, run_id, counts | best)
    if result.best is not None:
        log_tags(client, run_id, {"msa.best_trial": str(result.best.number)})
    for path in (result.report, result.figure, result.best_params):
        if path is not None:
            client.log_artifact(run_id, str(path), "tune")


# --- stages -----------------------------------------------------------------------------------------------------------


def log_dataset(client: Any, run_id: str, dataset: Any, digest: str, source: Mapping[str, str]) -> None:
    """The dataset as the run's input, as `mlflow.log_input` logs an MLflow dataset: built from its samples table
    (MLflow's schema and profile of it, with the dataset's version, splits and modalities), named like the dataset,
    its digest `digest` (DVC's md5 of data/raw, or the lineage's data hash) and its source where to get it."""
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag

    samples = dataset.samples
    source_of = _dataset_source()(source)
    with warnings.catch_warnings():  # its hint about integer columns is for model signatures, not datasets
        warnings.simplefilter("ignore", UserWarning)
        logged = PandasDataset(samples, source_of, targets="label", name=dataset.manifest.name, digest=digest)
        entity = logged._to_mlflow_entity()  # what mlflow.log_input sends
    profile = {
        **json.loads(entity.profile),
        "version": dataset.manifest.version,
        "splits": {str(k): int(v) for k, v in samples["split"].value_counts().items()},
        "modalities": list(dataset.manifest.modalities.present),
    }
    entity = Dataset(entity.name, entity.digest, entity.source_type, entity.source, entity.schema, json.dumps(profile))
    context = InputTag(key="mlflow.data.context", value="training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[context])])


def copy_inputs(client: Any, source_run: str, run_ids: Iterable[str]) -> None:
    """The datasets run `source_run` took as inputs (the pipeline run's, logged by validate), as inputs of each of
    `run_ids` too: a train or head run shows what it was trained on, from whichever machine trains."""
    from mlflow.entities import DatasetInput

    inputs = client.get_run(source_run).inputs
    datasets = [DatasetInput(d.dataset, d.tags) for d in (inputs.dataset_inputs if inputs else [])]
    if datasets:
        for run_id in run_ids:
            client.log_inputs(run_id, datasets=datasets)


@functools.cache
def _dataset_source() -> type:
    """The dataset source class of a DVC-tracked dataset (defined on first use: MLflow is imported late)."""
    from mlflow.data.dataset_source import DatasetSource

    class DvcSource(DatasetSource):
        """A dataset DVC tracks: its path in the repository, data.dvc's md5 (what `dvc pull` fetches at that
        commit) and the git commit."""

        def __init__(self, where: Mapping[str, str]) -> None:
            self.where = dict(where)

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self, dst_path: str | None = None) -> str:
            raise NotImplementedError("`dvc pull` at the recorded git commit fetches this dataset")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, str]:
            return self.where

        @classmethod
        def from_dict(cls, source_dict: dict) -> Any:
            return cls(source_dict)

    return DvcSource


def log_validation(client: Any, run_id: str, report: Mapping[str, Any], report_path: Path) -> None:
    log_numbers(client, run_id, {"validation_expectations": report["evaluated"], "validation_failed": report["failed"]})
    client.log_artifact(run_id, str(report_path), "reports")


class TrainingLog:
    """The `train` child run and the head runs of one pipeline run, fed by training's epoch callback.

    Works from any machine that reaches the tracking server: it creates (or, for a retried flow run on a fresh
    worker, finds) the runs under `parent`, uploads the checkpoint after every epoch and the model when it improves.
    The train run carries the training settings (`train.*`, `model.*`: those of `params`, else the pipeline run's);
    each head's run its own (`head_params`) and the dataset, the pipeline run's input. The heads are trained together,
    by one loss: their runs last from the start of training to the end of its last epoch.
    """

    def __init__(
        self, client: Any, parent: str, spec: Any, out: Path, attempt: int = 1, params: Params | None = None
    ) -> None:
        from components.models.store import monitored_head

        self.client, self.parent, self.spec, self.out = client, parent, spec, Path(out)
        self.run_id, self.attempt = child_run(client, parent, "train", train_run_name(attempt)), attempt
        self.heads = {h: child_run(client, parent, "head", h, {HEAD: h}) for h in spec.heads}
        self.monitored = monitored_head(spec)
        log_params(client, self.run_id, training_params(client, parent, params))
        for head, run_id in self.heads.items():
            log_params(client, run_id, head_params(spec, head))
        fresh = [r for r in (self.run_id, *self.heads.values()) if not client.get_run(r).inputs.dataset_inputs]
        copy_inputs(client, parent, fresh)
        self.trained_until: int | None = None  # ms: when the last epoch this process trained ended
        self.monitor = None
        self.uploaded, self.upload_seconds = 0, 0.0  # sent to the artifact store by this process, and the time it took
        self.published: str | None = None  # the digest of this process's last model upload

    def watch(self) -> None:
        """Sample CPU, memory, disk, network (and GPU, with nvidia-ml-py) into the train run until `close`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, resume_logging=True)
        self.monitor.start()

    def restore(self) -> str | None:
        """Download the newest stored checkpoint of this pipeline run's training, and the model it pairs with,
        into `out` (for a worker with an empty disk); the train run it came from, or None when there is none usable
        (none stored, or a damaged upload of a worker killed mid-upload): training then starts over."""
        from components.core.errors import TrainingError
        from components.models import store as model_store

        for run in reversed(child_runs(self.client, self.parent, "train")):
            digest = run.data.tags.get(MODEL_DIGEST)
            try:
                if digest and model_store.fetch_checkpoint(self.client, run.info.run_id, self.out):
                    model_store.fetch(self.client, run.info.run_id, self.out, digest)
                    return run.info.run_id
            except TrainingError as e:
                logging.getLogger(__name__).warning(f"not resuming from train run {run.info.run_id}: {e}")
                (self.out / model_store.CHECKPOINT).unlink(missing_ok=True)
        return None

    def log_epoch(self, record: dict) -> None:
        """One epoch's curves: every head's on its run, the monitored head's on the parent too."""
        epoch, when = record["epoch"], int(time.time() * 1000)
        self.trained_until = when
        for head, run_id in self.heads.items():
            log_numbers(self.client, run_id, epoch_metrics(record, head), step=epoch, when=when)
        log_numbers(self.client, self.parent, epoch_metrics(record, self.monitored), step=epoch, when=when)

    def on_epoch(self, record: dict, improved: bool) -> None:
        """Training's epoch callback: the curves, the checkpoint, and the model when it improved. An epoch of one of
        several seeds (train.seeds) goes to that seed's run: which model is kept is known only after the last seed,
        and `record_seeds` then logs it."""
        from components.models import store as model_store

        if "seed" in record:
            run_id = seed_run(self.client, self.parent, record["seed"], self.attempt)
            log_numbers(self.client, run_id, epoch_metrics(record, self.monitored), step=record["epoch"])
            return
        self.log_epoch(record)
        started = time.perf_counter()
        if improved:
            self._record(model_store.publish(self.out, self.client, self.run_id))
            self.uploaded += model_store.model_bytes(self.out)
        self.uploaded += model_store.publish_checkpoint(self.out, self.client, self.run_id)
        self.upload_seconds += time.perf_counter() - started

    def record_seeds(self, history: list[dict], valid: Mapping[int, float], chosen: int) -> None:
        """After a multi-seed training: the kept seed's curves on the head runs and the parent (as one seed's would
        be), and each seed run ended with its best valid value and whether it is the model."""
        from components.evaluation.metrics import primary_metric

        for record in history:
            self.log_epoch(record)
        metric = primary_metric(self.spec.label.kind)[0]
        for seed, value in valid.items():
            run_id = seed_run(self.client, self.parent, seed, self.attempt)
            log_numbers(self.client, run_id, {f"best_valid_{metric}": value})
            log_tags(self.client, run_id, {"msa.chosen": str(seed == chosen).lower()})
            self.client.set_terminated(run_id, "FINISHED")

    def _record(self, value: str) -> None:
        """`value` is the model a replacement resumes from and the pipeline checks: the upload before it can go."""
        from components.models import store as model_store

        self.client.set_tag(self.run_id, MODEL_DIGEST, value)
        if self.published not in (None, value):
            model_store.discard(self.client, self.run_id, self.published)
        self.published = value

    def finish(self, summary: Mapping[str, float] | None = None) -> str:
        """Upload the final model (with the whole history) and return its digest, the pipeline's to check."""
        from components.models import store as model_store

        started = time.perf_counter()
        value = model_store.publish(self.out, self.client, self.run_id)
        self._record(value)
        self.uploaded += model_store.model_bytes(self.out)
        self.upload_seconds += time.perf_counter() - started
        exchange = {"uploaded_mb": self.uploaded / 1e6, "upload_seconds": self.upload_seconds}
        log_numbers(self.client, self.run_id, {**(summary or {}), **exchange})
        return value

    def close(self, status: str) -> None:
        """End the train run, and the head runs when their last epoch ended (evaluate adds their metrics later
        without reopening them)."""
        if self.monitor is not None:
            self.monitor.finish()
        trained = self.trained_until if status == "FINISHED" else None
        for run_id in self.heads.values():
            self.client.set_terminated(run_id, status, end_time=trained)
        self.client.set_terminated(self.run_id, status)


def seed_run(client: Any, parent: str, seed: int, attempt: int | None = None, *, reopen: bool = True) -> str:
    """The child run of one seed of a multi-seed training (train.seeds): its curves, then its test metrics. Each
    training attempt has its own (a replacement worker trains every seed again); `attempt` None: the latest."""
    if attempt is None:
        runs = [r for r in child_runs(client, parent, "seed") if r.data.tags.get("msa.seed") == str(seed)]
        if runs:
            return runs[-1].info.run_id
        attempt = 1
    name = f"seed {seed}" if attempt == 1 else f"seed {seed} (attempt {attempt})"
    return child_run(client, parent, "seed", name, {"msa.seed": str(seed)}, reopen=reopen)


def trained_model_digest(client: Any, parent: str) -> tuple[str, str]:
    """(train run id, recorded model digest) of the pipeline run `parent`."""
    runs = [r for r in child_runs(client, parent, "train") if MODEL_DIGEST in r.data.tags]
    if not runs:
        raise TrackingError(f"pipeline run {parent} has no train run with an uploaded model: training did not finish")
    return runs[-1].info.run_id, runs[-1].data.tags[MODEL_DIGEST]


def log_evaluation(
    client: Any,
    parent: str,
    spec: Any,
    metrics: Mapping,
    report: Path,
    plots: Path,
    figures: Path,
    seeds: Mapping | None = None,
    seeds_report: Path | None = None,
) -> None:
    """Every head's valid and test metrics on its run (ending it), the monitored head's on the parent; the report,
    and the plot data and PNGs as `plots/` and `plots/images/`. With several seeds (the seeds report), also each
    metric's mean and std over them (`test_mae_mean`, `test_mae_std`) beside it, and each seed's on its run."""
    from components.models.store import monitored_head

    several = bool(seeds and seeds.get("seeds"))
    for head in spec.heads:
        run_id = child_run(client, parent, "head", head, {HEAD: head}, reopen=False)  # training's, ended
        log_numbers(client, run_id, split_metrics(metrics, head) | (seed_metrics(seeds, head) if several else {}))
    head = monitored_head(spec)
    log_numbers(client, parent, split_metrics(metrics, head) | (seed_metrics(seeds, head) if several else {}))
    if several:
        for seed, run in seeds["runs"].items():
            log_numbers(client, seed_run(client, parent, int(seed), reopen=False), split_metrics(run, head))
    if seeds_report is not None and Path(seeds_report).is_file():
        client.log_artifact(parent, str(seeds_report), "reports")
    client.log_artifact(parent, str(report), "reports")
    for directory, artifacts in ((plots, "plots"), (figures, "plots/images")):
        if Path(directory).is_dir():
            client.log_artifacts(parent, str(directory), artifacts)


def log_robustness(
    client: Any, parent: str, spec: Any, report: Mapping, report_path: Path, plots: Path, figure: Path
) -> None:
    """`robust_<perturbation>_<severity>_<metric>` of every head on its run, the monitored head's on the parent; the
    report, and the plot data and figure as `plots/robustness/` and `plots/images/`."""
    from components.models.store import monitored_head

    kind = spec.label.kind
    for head in spec.heads:
        run_id = child_run(client, parent, "head", head, {HEAD: head}, reopen=False)  # training's, ended
        log_numbers(client, run_id, robustness_metrics(report, head, kind))
    log_numbers(client, parent, robustness_metrics(report, monitored_head(spec), kind))
    client.log_artifact(parent, str(report_path), "reports")
    if Path(plots).is_dir():
        client.log_artifacts(parent, str(plots), "plots/robustness")
    if Path(figure).is_file():
        client.log_artifact(parent, str(figure), "plots/images")


def robustness_metrics(report: Mapping, head: str, kind: str) -> dict[str, float]:
    """The robustness metric and the primary one (`robust_text_typos_0.3_acc2`) of `head` under each setting."""
    from components.evaluation.metrics import primary_metric

    keys = dict.fromkeys((report["metric"], primary_metric(kind)[0]))
    return {
        f"robust_{name}_{severity}_{key}": scores[head][key]
        for name, entry in report["perturbations"].items()
        for severity, scores in entry["severities"].items()
        if head in scores
        for key in keys
        if key in scores[head]
    }


def log_compression(
    client: Any, parent: str, report: Mapping, report_path: Path, tolerance: float, *, started: float | None = None
) -> None:
    """A run per variant with its settings and measurements; the uncompressed model's measurements on the parent.

    A variant's run lasts as long as its own work: the `seconds` compress records for it (building, fine-tuning,
    scoring and timing it), from its `started` (unix seconds) or else ending now. A report without them (an older
    one) spans the stage from `started` (the stage's start), or none."""
    now = time.time()
    for variant, figures in report.get("variants", {}).items():
        span = variant_span(figures, started, now)
        name = VARIANT_RUN_NAMES.get(variant, variant)
        run_id = child_run(client, parent, "variant", name, {VARIANT: variant}, start_time=span[0])
        client.set_tag(run_id, "msa.kept", str(figures["kept"]))
        settings = {
            "variant": variant,
            "sparsity": round(figures.get("sparsity", 0.0), 4),
            "finetune_epochs": figures.get("finetune_epochs", 0),
            "tolerance_points": tolerance,
            "metric": report.get("metric"),
            "kept": figures["kept"],
        }
        log_params(client, run_id, settings)
        log_numbers(client, run_id, compression_metrics(figures))
        client.set_terminated(run_id, "FINISHED", end_time=span[1])
    if "baseline" in report:
        log_numbers(client, parent, compression_metrics(report["baseline"]))
    client.log_artifact(parent, str(report_path), "reports")


def variant_span(figures: Mapping, stage_started: float | None, now: float) -> tuple[int, int]:
    """(start, end) in ms of a variant's run: its own `seconds` of work, else the stage's."""
    seconds = figures.get("seconds")
    if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0:
        begin = figures.get("started")
        begin = float(begin) if isinstance(begin, int | float) else now - seconds
        return int(begin * 1000), int((begin + seconds) * 1000)
    return int((now if stage_started is None else stage_started) * 1000), int(now * 1000)


# --- what is logged ---------------------------------------------------------------------------------------------------


def training_params(client: Any, parent: str, params: Params | None = None) -> dict[str, Any]:
    """The training settings, `train.*` and `model.*` as the pipeline run names them: those of `params`, else the
    pipeline run `parent`'s."""
    flat = flatten(params.model_dump(mode="json", by_alias=True), ".") if params else client.get_run(parent).data.params
    return {k: v for k, v in flat.items() if k.startswith(("train.", "model."))}


def head_params(spec: Any, head: str) -> dict[str, Any]:
    """The settings that tell one head's sub-model apart from the others'."""
    p = spec.params
    values: dict[str, Any] = {"head": head, "hidden": p.hidden}
    if head in ("lstm", "textcnn", "han"):
        values |= {"input": "text", "text_encoder": spec.text.encoder, "text_encoder_mode": spec.text.mode}
        values |= {"dropout": p.dropout}
        if head == "textcnn":
            values |= {
                "filter_sizes": ",".join(map(str, p.textcnn.filter_sizes)),
                "feature_maps": p.textcnn.feature_maps,
                "dropout": p.textcnn.dropout,
            }
    elif head == "fusion":
        values |= {"input": ",".join(spec.encoders), "fusion": "hierarchical attention", "dropout": p.dropout}
    else:
        values |= {"input": head, "dropout": p.dropout}
        sequence = getattr(spec, head, None)
        if head in ("audio", "vision") and sequence is not None:
            values |= {"feature_dim": sequence.dim, "max_frames": sequence.max_len}
    return values


def epoch_metrics(record: Mapping, head: str) -> dict[str, float]:
    values = {"epoch_train_loss": record["train_loss"][head]} if head in record["train_loss"] else {}
    values |= {f"epoch_valid_{k}": v for k, v in record["valid"].get(head, {}).items()}
    return values


def split_metrics(metrics: Mapping, head: str) -> dict[str, float]:
    """`{split}_{metric}` of one head (per-class tables flattened: `test_per_class_<class>_f1`)."""
    return {
        f"{split}_{key}": value
        for split, heads in metrics.items()
        if split in SPLITS and head in heads  # the report also names the model it scored (`model_digest`)
        for key, value in flatten(heads[head], "_").items()
    }


def seed_metrics(seeds: Mapping, head: str) -> dict[str, float]:
    """`{split}_{metric}_mean` and `_std` of one head over the seeds of a multi-seed training."""
    return {
        f"{key}_{stat}": value for stat in ("mean", "std") for key, value in split_metrics(seeds[stat], head).items()
    }


def compression_metrics(figures: Mapping) -> dict[str, float]:
    out = {f"test_{k}": v for k, v in figures["metrics"].items()}
    out |= {
        "size_mb": figures["size_bytes"] / 1e6,
        "nonzero_params": figures["nonzero_params"],
        "latency_ms_p50": figures["latency_ms_p50"],
        "latency_ms_p95": figures["latency_ms_p95"],
        "throughput_per_s": figures["throughput_per_s"],
    }
    if "drop_points" in figures:
        out["drop_points"] = figures["drop_points"]
    return out


def log_numbers(client: Any, run_id: str, values: Mapping[str, Any], *, step: int = 0, when: int | None = None) -> None:
    """The finite numbers of `values` as metrics, in batches of MLflow's limit."""
    from mlflow.entities import Metric

    when = int(time.time() * 1000) if when is None else when
    batch = [
        Metric(k, float(v), when, step)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def log_params(client: Any, run_id: str, values: Mapping[str, Any]) -> None:
    """`values` as params, in batches of MLflow's limit; a param already logged with the same value is skipped."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    fresh = [Param(k, _param_value(v)) for k, v in values.items() if logged.get(k) != _param_value(v)]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start : start + 100])


def log_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def flatten(values: Mapping, separator: str, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a<separator>b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, separator, f"{name}{separator}")
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)[:6000]


def _terminate_family(client: Any, run_id: str, status: str) -> None:
    """End `run_id` and those of its children still RUNNING (a failed stage leaves no child open)."""
    experiment = client.get_run(run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`{PARENT}` = '{run_id}' and attributes.status = 'RUNNING'", max_results=1000
    )
    for child in children:
        client.set_terminated(child.info.run_id, status)
    client.set_terminated(run_id, status)
