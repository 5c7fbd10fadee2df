"""Checkpoints and resume: what a checkpoint continues (`inputs_key`), whether one can be continued
(`resume_point`), writing and restoring one, and what Ctrl-C keeps (`interrupt_says_where`).

A checkpoint holds the model, the optimizer and the progress record (epoch, best value and epoch, epochs without
improvement, history); no random generator state: each epoch's random stream restarts from (seed, epoch, rank).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from components.core.atomic import write_bytes
from components.core.config import ModelParams, TrainParams, runtime_keys
from components.core.errors import TrainingError, TrainingInterrupted
from components.features.contract import FeaturizerState, read_state
from components.models import MultiTaskModel
from components.models.spec import ModelSpec
from components.models.store import CHECKPOINT, WEIGHTS, read_card
from components.training.architecture import build_spec
from components.training.lineage import trained_code_hash

__all__ = [
    "NOT_IN_INPUTS_KEY",
    "inputs_key",
    "interrupt_says_where",
    "restore",
    "resumable",
    "resume_point",
    "save_checkpoint",
]

# Where the model goes and which device trains it do not decide what a checkpoint continues.
NOT_IN_INPUTS_KEY = runtime_keys("train")


def inputs_key(state: FeaturizerState, spec: ModelSpec, params: TrainParams) -> str:
    """What a checkpoint continues: these features, this model, these settings and this training code (wherever it
    runs): a checkpoint of edited training code is not continued, the edit may change what it learns."""
    settings = params.model_dump_json(exclude=NOT_IN_INPUTS_KEY)
    key = f"{state.key}\0{spec.model_dump_json()}\0{settings}\0{trained_code_hash()}"
    return hashlib.sha256(key.encode()).hexdigest()


def resume_point(features: str | Path, model_params: ModelParams, params: TrainParams) -> int | None:
    """The last epoch of a checkpoint in `params.out` that training on these features with these settings wrote,
    beside the best model it had reached; None when there is no such pair (none, unreadable, written for other
    inputs, or its best model missing, as after `dvc repro` cleared the stage's outputs), so training starts over.
    """
    if not (Path(params.out) / CHECKPOINT).is_file():
        return None
    state = read_state(features)
    return resumable(Path(params.out), inputs_key(state, build_spec(state, model_params, params), params), state)


def resumable(out: Path, inputs: str, state: FeaturizerState) -> int | None:
    """`resume_point` for inputs already hashed to `inputs`."""
    try:
        saved = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        progress = json.loads(saved["progress"])
    except Exception:  # noqa: BLE001 - a missing, corrupt or foreign file is simply not resumable
        return None
    if saved.get("inputs") != inputs:
        return None
    if progress["best_epoch"]:
        try:
            card = read_card(out)
        except TrainingError:
            return None
        if (
            not (out / WEIGHTS).is_file()
            or card.monitor.epoch != progress["best_epoch"]
            or card.featurizer_key != state.key
        ):
            return None
    return int(progress["epoch"])


def save_checkpoint(
    path: Path, spec: ModelSpec, model: MultiTaskModel, optimizer: torch.optim.Optimizer, progress: dict, inputs: str
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "spec": spec.model_dump_json(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "progress": json.dumps(progress),
            "inputs": inputs,
        },
        buffer,
    )
    write_bytes(path, buffer.getvalue())


def restore(path: Path, spec: ModelSpec, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> dict:
    """Load the checkpoint at `path` into `model` and `optimizer`; its progress record."""
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from (train once first)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt or foreign file
        raise TrainingError(f"{path}: not a readable checkpoint: {e}") from None
    theirs = ModelSpec.model_validate_json(saved["spec"])
    if theirs != spec:
        ours, old = spec.model_dump(), theirs.model_dump()
        differs = sorted(k for k in ours.keys() | old.keys() if ours.get(k) != old.get(k))
        raise TrainingError(
            f"{path}: checkpoint was written for a different model (differs in: {', '.join(differs)}); "
            "start over (`msa train --restart`), or restore the settings it was trained with"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return json.loads(saved["progress"])


@contextmanager
def interrupt_says_where(progress: dict, checkpoint: Path, last_epoch: int) -> Iterator[None]:
    """Ctrl-C ends training at once, saying what was kept and what the next `msa train` will do."""
    try:
        yield
    except KeyboardInterrupt:
        done = progress["epoch"]
        kept = (
            f"the checkpoint after epoch {done} ({checkpoint}) is kept: `msa train` with the same inputs continues "
            f"from epoch {done + 1}, `msa train --restart` starts over"
            if done
            else "no epoch had finished, so nothing was kept: `msa train` starts over"
        )
        raise TrainingInterrupted(f"training interrupted during epoch {done + 1} of {last_epoch}; {kept}") from None
