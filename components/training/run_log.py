"""Training, live in MLflow: the `train` child run of a pipeline run (one per attempt), a run per head and per seed,
fed by training's epoch callback from whichever machine trains.

A user watching the MLflow UI sees the `train` run with system metrics (CPU, memory; GPU when present) and the
checkpoints, and a child run per head whose curves (`epoch_train_loss`, `epoch_valid_<metric>`) grow epoch by epoch;
the parent carries the monitored head's curves. The train run carries the training settings, each head's run the
settings of its sub-model. The model uploaded last is the one the pipeline downloads, checked by its digest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.core.config import TEXT_MODELS, Params
from components.core.errors import TrackingError, TrainingError
from components.evaluation.logged import HEAD, SEED
from components.tracking import (
    HEARTBEAT,
    child_run,
    child_runs,
    copy_inputs,
    flatten,
    log_numbers,
    log_params,
    log_tags,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from components.models.spec import ModelSpec

__all__ = [
    "CHECKPOINT_EPOCH",
    "MODEL_DIGEST",
    "TrainingLog",
    "end_train_attempt",
    "epoch_metrics",
    "head_params",
    "seed_run",
    "train_run",
    "train_run_name",
    "trained_model_digest",
    "training_params",
    "training_silence",
]

MODEL_DIGEST = "msa.model_digest"  # on the train run: the content hash of its uploaded model/
# On the train run: the epoch of the uploaded checkpoint that pairs with MODEL_DIGEST's model. Both are set by one
# log_batch after both uploads, so a replacement never takes a checkpoint with another epoch's best model.
CHECKPOINT_EPOCH = "msa.checkpoint_epoch"


class TrainingLog:
    """The `train` child run and the head runs of one pipeline run, fed by training's epoch callback.

    Works from any machine that reaches the tracking server: it creates (or, for a retried flow run on a fresh
    worker, finds) the runs under `parent`, uploads the checkpoint after every epoch and the model when it improves.
    The train run carries the training settings (`train.*`, `model.*`: those of `params`, else the pipeline run's);
    each head's run its own (`head_params`) and the dataset, the pipeline run's input. The heads are trained together,
    by one loss: their runs last from the start of training to the end of its last epoch.
    """

    def __init__(
        self,
        client: MlflowClient,
        parent: str,
        spec: ModelSpec,
        out: Path,
        attempt: int = 1,
        params: Params | None = None,
    ) -> None:
        from components.models.store import monitored_head

        self.client, self.parent, self.spec, self.out = client, parent, spec, Path(out)
        self.run_id, self.attempt = train_run(client, parent, attempt), attempt
        self.heads = {h: child_run(client, parent, "head", h, {HEAD: h}) for h in spec.heads}
        self.monitored = monitored_head(spec)
        log_params(client, self.run_id, training_params(client, parent, params))
        for head, run_id in self.heads.items():
            log_params(client, run_id, head_params(spec, head))
        fresh = [r for r in (self.run_id, *self.heads.values()) if not _inputs(client, r)]
        copy_inputs(client, parent, fresh)
        self.trained_until: int | None = None  # ms: when the last epoch this process trained ended
        self.monitor: SystemMetricsMonitor | None = None
        self.uploaded, self.upload_seconds = 0, 0.0  # sent to the artifact store by this process, and the time it took
        self.published: str | None = None  # the digest of this process's last model upload
        self.checkpoint: int | None = None  # the epoch of this process's last checkpoint upload

    def watch(self) -> None:
        """Sample CPU, memory, disk, network (and GPU, with nvidia-ml-py) into the train run until `close`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5, resume_logging=True)
        self.monitor.start()

    def restore(self) -> str | None:
        """Download the newest stored checkpoint of this pipeline run's training, and the model it pairs with,
        into `out` (for a worker with an empty disk); the train run it came from, or None when there is none usable
        (none stored, or a damaged upload of a worker killed mid-upload): training then starts over."""
        from components.models import store as model_store
        from components.models import transfer

        for run in reversed(child_runs(self.client, self.parent, "train")):
            digest, epoch = run.data.tags.get(MODEL_DIGEST), run.data.tags.get(CHECKPOINT_EPOCH)
            try:
                if digest and epoch and transfer.fetch_checkpoint(self.client, run.info.run_id, self.out, int(epoch)):
                    transfer.fetch(self.client, run.info.run_id, self.out, digest)
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
        from components.models import transfer  # torch: only when the model travels

        if "seed" in record:
            run_id = seed_run(self.client, self.parent, record["seed"], self.attempt)
            log_numbers(self.client, run_id, epoch_metrics(record, self.monitored), step=record["epoch"])
            return
        self.log_epoch(record)
        started = time.perf_counter()
        value = self.published
        if improved:
            value = transfer.publish(self.out, self.client, self.run_id)
            self.uploaded += transfer.model_bytes(self.out)
        self.uploaded += transfer.publish_checkpoint(self.out, self.client, self.run_id, record["epoch"])
        if value is not None:
            self._record(value, record["epoch"])
        self.upload_seconds += time.perf_counter() - started

    def record_seeds(self, history: list[dict], valid: Mapping[int, float | None], chosen: int) -> None:
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

    def _record(self, value: str, checkpoint: int | None = None) -> None:
        """`value` is the model the pipeline checks and, with the checkpoint after epoch `checkpoint`, what a
        replacement resumes from: recorded together, then the uploads before them can go."""
        from components.models import transfer  # torch: only when the model travels

        tags = {MODEL_DIGEST: value} | ({CHECKPOINT_EPOCH: str(checkpoint)} if checkpoint is not None else {})
        log_tags(self.client, self.run_id, tags)
        if self.published not in (None, value):
            transfer.discard(self.client, self.run_id, self.published)
        if checkpoint is not None and self.checkpoint not in (None, checkpoint):
            transfer.discard_checkpoint(self.client, self.run_id, self.checkpoint)
        self.published, self.checkpoint = value, checkpoint if checkpoint is not None else self.checkpoint

    def finish(self, summary: Mapping[str, float] | None = None) -> str:
        """Upload the final model (with the whole history) and return its digest, the pipeline's to check."""
        from components.models import transfer  # torch: only when the model travels

        started = time.perf_counter()
        value = transfer.publish(self.out, self.client, self.run_id)
        self._record(value)
        self.uploaded += transfer.model_bytes(self.out)
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


def _inputs(client: MlflowClient, run_id: str) -> list[DatasetInput]:
    inputs = client.get_run(run_id).inputs
    return inputs.dataset_inputs if inputs else []


def train_run(client: MlflowClient, parent: str, attempt: int) -> str:
    """The train run of attempt `attempt` of pipeline run `parent`: found (reopened), else created."""
    return child_run(client, parent, "train", train_run_name(attempt))


def train_run_name(attempt: int) -> str:
    """Each dispatch of training logs into a train run of its own: a lost worker that is still alive writes only
    into its attempt's run, never into its replacement's."""
    return "train" if attempt == 1 else f"train (attempt {attempt})"


def end_train_attempt(client: MlflowClient, parent: str, attempt: int, status: str) -> None:
    """End the train run of one attempt (a lost worker cannot end it itself)."""
    for run in child_runs(client, parent, "train"):
        if run.info.run_name == train_run_name(attempt) and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)


def training_silence(client: MlflowClient, parent: str, attempt: int, since: float) -> float:
    """Seconds since attempt `attempt` of training for pipeline run `parent` last gave a sign of life (its train
    run's heartbeat), or since `since` (when that attempt started) if that is later."""
    beats = [
        float(r.data.tags[HEARTBEAT])
        for r in child_runs(client, parent, "train")
        if r.info.run_name == train_run_name(attempt) and HEARTBEAT in r.data.tags
    ]
    return time.time() - max([since, *beats])


def trained_model_digest(client: MlflowClient, parent: str) -> tuple[str, str]:
    """(train run id, recorded model digest) of the pipeline run `parent`."""
    runs = [r for r in child_runs(client, parent, "train") if MODEL_DIGEST in r.data.tags]
    if not runs:
        raise TrackingError(f"pipeline run {parent} has no train run with an uploaded model: training did not finish")
    return runs[-1].info.run_id, runs[-1].data.tags[MODEL_DIGEST]


def seed_run(client: MlflowClient, parent: str, seed: int, attempt: int) -> str:
    """The child run of one seed of a multi-seed training (train.seeds): its curves, then its test metrics. Each
    training attempt has its own (a replacement worker trains every seed again)."""
    name = f"seed {seed}" if attempt == 1 else f"seed {seed} (attempt {attempt})"
    return child_run(client, parent, "seed", name, {SEED: str(seed)})


def training_params(client: MlflowClient, parent: str, params: Params | None = None) -> dict[str, Any]:
    """The training settings, `train.*` and `model.*` as the pipeline run names them: those of `params`, else the
    pipeline run `parent`'s."""
    flat = flatten(params.model_dump(mode="json", by_alias=True), ".") if params else client.get_run(parent).data.params
    return {k: v for k, v in flat.items() if k.startswith(("train.", "model."))}


def head_params(spec: ModelSpec, head: str) -> dict[str, Any]:
    """The settings that tell one head's sub-model apart from the others'."""
    p = spec.params
    values: dict[str, Any] = {"head": head, "hidden": p.hidden}
    if head in TEXT_MODELS:
        text = spec.text
        assert text is not None  # a text head reads text
        values |= {"input": "text", "text_encoder": text.encoder, "text_encoder_mode": text.mode}
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


def epoch_metrics(record: Mapping[str, Any], head: str) -> dict[str, float]:
    """One epoch's `epoch_train_loss` and `epoch_valid_<metric>` of `head`, from training's epoch record."""
    values = {"epoch_train_loss": record["train_loss"][head]} if head in record["train_loss"] else {}
    values |= {f"epoch_valid_{k}": v for k, v in record["valid"].get(head, {}).items()}
    return values
