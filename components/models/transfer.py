"""A trained model between machines: its files uploaded to the tracking server's artifact store under the training
run, and fetched by another worker, each fetch checked against the digest training recorded. A GPU worker and the
pipeline share no disk: this is how the model and its checkpoint travel (`components.training.run_log` uploads,
the flows fetch)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from components.core.errors import TrainingError
from components.models.store import (
    CHECKPOINT,
    CHECKPOINT_ARTIFACTS,
    MODEL_ARTIFACTS,
    SEEDS,
    digest,
    model_files,
    remove_seed_models,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "discard",
    "discard_checkpoint",
    "fetch",
    "fetch_checkpoint",
    "model_bytes",
    "publish",
    "publish_checkpoint",
]


def publish(out: str | Path, client: MlflowClient, run_id: str) -> str:
    """Upload the trained model's files as artifacts `model/<digest>/` of run `run_id`; returns their digest.

    Each upload goes to a path of its own: a worker killed in the middle of one leaves the previous upload, which
    its recorded digest still describes, whole (a replacement resumes from it)."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="msa-publish-") as tmp:
        staged = Path(tmp) / MODEL_ARTIFACTS
        staged.mkdir()
        for name in model_files(out):
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(out / name, staged / name)  # a snapshot: training may write the next epoch meanwhile
        value = digest(staged)
        client.log_artifacts(run_id, str(staged), _uploaded(value))
    return value


def discard(client: MlflowClient, run_id: str, value: str) -> None:
    """Remove an earlier upload (`publish` returned `value`) once a newer one is recorded; where the artifact store
    cannot delete, it stays."""
    _delete(client, run_id, _uploaded(value))


def discard_checkpoint(client: MlflowClient, run_id: str, epoch: int) -> None:
    """Remove the checkpoint uploaded after `epoch` once a newer one is recorded."""
    _delete(client, run_id, f"{CHECKPOINT_ARTIFACTS}/{epoch}")


def _delete(client: MlflowClient, run_id: str, path: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with contextlib.suppress(Exception):
        get_artifact_repository(client.get_run(run_id).info.artifact_uri).delete_artifacts(path)


def _uploaded(value: str) -> str:
    return f"{MODEL_ARTIFACTS}/{value[:16]}"


def publish_checkpoint(out: str | Path, client: MlflowClient, run_id: str, epoch: int) -> int:
    """Upload the checkpoint written after `epoch` as `checkpoints/<epoch>/`, a path of its own: a worker killed
    in the middle of it leaves the recorded one whole. Returns the bytes uploaded."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="msa-checkpoint-") as tmp:
        staged = Path(tmp) / CHECKPOINT.name
        shutil.copy2(out / CHECKPOINT, staged)  # a snapshot: the next epoch may replace the file meanwhile
        client.log_artifact(run_id, str(staged), f"{CHECKPOINT_ARTIFACTS}/{epoch}")
        return staged.stat().st_size


def model_bytes(out: str | Path) -> int:
    """The size of the model's files: what `publish` uploads and `fetch` downloads."""
    return sum((Path(out) / name).stat().st_size for name in model_files(out))


def fetch(client: MlflowClient, run_id: str, out: str | Path, expected: str) -> Path:
    """Download run `run_id`'s `model/` into `out`, after checking its digest against `expected`.

    A mismatch (a damaged upload, a file replaced in the store) raises TrainingError and leaves `out` as it was.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".msa-fetch-", dir=out) as tmp:
        local = Path(client.download_artifacts(run_id, _uploaded(expected), tmp))
        got = digest(local)
        if got != expected:
            raise TrainingError(
                f"the model downloaded from training run {run_id} has digest {got[:16]}..., but {expected[:16]}... "
                "was recorded when it was uploaded: the artifact store holds other bytes. Nothing was evaluated or "
                "registered; run the pipeline again to retrain"
            )
        names = model_files(local)
        if SEEDS not in names:  # one seed: no record of another training's seeds may stay beside it
            (out / SEEDS).unlink(missing_ok=True)
            remove_seed_models(out)
        for name in names:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).replace(out / name)
    return out


def fetch_checkpoint(client: MlflowClient, run_id: str, out: str | Path, epoch: int) -> bool:
    """Download the checkpoint run `run_id` uploaded after `epoch` into `out/checkpoints/`; False when it has none."""
    out, stored = Path(out), f"{CHECKPOINT_ARTIFACTS}/{epoch}"
    if CHECKPOINT.name not in [Path(a.path).name for a in client.list_artifacts(run_id, stored)]:
        return False
    (out / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".msa-fetch-", dir=out / CHECKPOINT.parent) as tmp:
        local = Path(client.download_artifacts(run_id, f"{stored}/{CHECKPOINT.name}", tmp))
        local.replace(out / CHECKPOINT)
    return True
