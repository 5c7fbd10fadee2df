"""The trained model's files: their names and layout, loading a model, feeding it and reading its predictions, and
moving it between machines through the tracking server.

`train.out` (default `models/trained/`, the DVC artifact `msa-model`):
    model.safetensors     best weights (by the monitored head's valid metric)
    model.json            the ModelCard: spec, monitored metric and best epoch, featurizer key, dataset
    history.json          per epoch: train loss per head, valid metrics per head
    checkpoints/last.pt   model, optimizer and progress after the last finished epoch (what a resumed run continues)
`compress.out` (default `models/compressed/`) holds one directory per kept variant, with its own `model.json` and
`model.safetensors` (pruned) or `model.pt` (int8, a weights-only torch file).

Across machines the model travels as artifacts of the training run (`model/` and `checkpoints/`), addressed by
run id; `digest` is a content hash recorded at upload and checked after download, so a damaged or substituted copy
is refused instead of evaluated and registered.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from components.core.atomic import write_json
from components.core.config import Section
from components.core.errors import TrainingError
from components.core.hashing import file_sha256
from components.data.dataset import SEQUENCE_MODALITIES, SPLITS
from components.models import MultiTaskModel
from components.models.spec import ModelSpec

__all__ = [
    "CARD",
    "CHECKPOINT",
    "CHECKPOINT_ARTIFACTS",
    "EVAL_BATCH",
    "HISTORY",
    "INT8_WEIGHTS",
    "MODEL_ARTIFACTS",
    "MODEL_FILES",
    "PADDED_AXES",
    "SEEDS",
    "SEEDS_DIR",
    "WEIGHTS",
    "DatasetRef",
    "HeadsModel",
    "ModelCard",
    "Monitor",
    "TrainedWith",
    "digest",
    "load_for_scoring",
    "load_trained",
    "model_files",
    "model_inputs",
    "monitored_head",
    "predict",
    "read_card",
    "read_history",
    "remove_seed_models",
    "seed_dirs",
    "split_rows",
    "trim_padding",
    "verified_weights",
    "write_card",
    "write_history",
    "write_model",
]

if TYPE_CHECKING:
    pass

WEIGHTS = "model.safetensors"
CARD = "model.json"
HISTORY = "history.json"
CHECKPOINT = Path("checkpoints") / "last.pt"
INT8_WEIGHTS = "model.pt"
MODEL_FILES = (WEIGHTS, CARD, HISTORY)  # what evaluation, compression and registration read
SEEDS = "seeds.json"  # with train.seeds > 1: the seeds, their valid values and the chosen one (training writes it)
SEEDS_DIR = "seeds"  # with train.seeds > 1: seeds/seed-<s>/, each seed's own model files and checkpoint
MODEL_ARTIFACTS = "model"  # artifact paths on the training run
CHECKPOINT_ARTIFACTS = "checkpoints"
EVAL_BATCH = 256


class Monitor(Section):
    head: str
    metric: str
    value: float
    epoch: int


class DatasetRef(Section):
    name: str
    version: str


class TrainedWith(Section):
    """What else decided the weights, besides the features: the settings (`training.settings_hash`) and the code."""

    settings: str
    code: str


class ModelCard(Section):
    """What `model.json` holds: enough to rebuild the model and to tell which features, settings and code it was
    trained with (registration checks them against the data and params.yaml it registers under)."""

    spec: ModelSpec
    monitor: Monitor
    featurizer_key: str
    dataset: DatasetRef
    weights_sha256: str = ""  # of model.safetensors: a damaged or replaced file is refused by every reader
    trained_with: TrainedWith | None = None  # written when training ends; None: a card from before it was recorded


def monitored_head(spec: ModelSpec) -> str:
    """The head whose valid metric selects the best epoch and whose predictions are served."""
    return "fusion" if "fusion" in spec.heads else spec.heads[0]


def read_card(out: str | Path) -> ModelCard:
    path = Path(out) / CARD
    try:
        return ModelCard.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: no readable model card ({type(e).__name__}); run `msa train`") from None


def read_history(out: str | Path) -> list[dict]:
    path = Path(out) / HISTORY
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: no readable training history ({type(e).__name__}); run `msa train`") from None


def write_model(out: str | Path, weights: dict[str, torch.Tensor], card: ModelCard) -> None:
    """The best weights and their card, each replaced atomically (weights first: a card never names missing ones);
    the card records the weights' sha256."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp)
    sha = file_sha256(tmp)
    tmp.replace(out / WEIGHTS)
    write_json(out / CARD, card.model_copy(update={"weights_sha256": sha}).model_dump(mode="json"))


def write_card(out: str | Path, card: ModelCard) -> None:
    write_json(Path(out) / CARD, card.model_dump(mode="json"))


def verified_weights(out: str | Path) -> Path:
    """`out/model.safetensors`, once its bytes are those the card recorded; TrainingError naming it otherwise."""
    out = Path(out)
    card, weights = read_card(out), out / WEIGHTS
    if not weights.is_file():
        raise TrainingError(f"{weights}: missing; run `msa train`")
    if card.weights_sha256 and file_sha256(weights) != card.weights_sha256:
        raise TrainingError(
            f"{weights}: its bytes differ from what training recorded in {CARD} (damaged or replaced): run `msa train`"
        )
    return weights


def write_history(out: str | Path, history: list[dict]) -> None:
    write_json(Path(out) / HISTORY, history)


def model_files(out: str | Path) -> list[str]:
    """The model's files, relative to `out`: weights, card and history, and after a multi-seed training the seeds
    record and every seed's model (evaluate reports them all): what the digest covers and what travels."""
    names = list(MODEL_FILES)
    try:
        seeds = json.loads((Path(out) / SEEDS).read_text())["seeds"]
    except (OSError, ValueError, KeyError):
        return names
    return [*names, SEEDS, *(f"{SEEDS_DIR}/seed-{seed}/{name}" for seed in seeds for name in MODEL_FILES)]


def seed_dirs(out: str | Path) -> dict[int, Path]:
    """Seed -> the model directory of that seed's training, when `out` holds a multi-seed training; else {}."""
    try:
        record = json.loads((Path(out) / SEEDS).read_text())
    except (OSError, ValueError):
        return {}
    return {int(seed): Path(out) / SEEDS_DIR / f"seed-{seed}" for seed in record["seeds"]}


def remove_seed_models(out: str | Path, keep: Collection[str] = frozenset()) -> None:
    """Remove the seed trainings in `out/seeds/` (`seed-<s>/`, what multi-seed training writes) not named in
    `keep`; anything else there stays."""
    seeds = Path(out) / SEEDS_DIR
    for directory in seeds.glob("seed-*"):
        if directory.is_dir() and directory.name not in keep:
            shutil.rmtree(directory)
    if seeds.is_dir() and not any(seeds.iterdir()):
        seeds.rmdir()


def digest(out: str | Path) -> str:
    """Content hash of the model's files (`model_files`), independent of where they lie."""
    total = hashlib.sha256()
    for name in model_files(out):
        path = Path(out) / name
        if not path.is_file():
            raise TrainingError(f"{path}: missing; run `msa train`")
        with path.open("rb") as f:
            total.update(f"{name}\0".encode() + hashlib.file_digest(f, "sha256").digest())
    return total.hexdigest()


def load_trained(out: str | Path, *, standalone: bool = False) -> MultiTaskModel:
    """The best model `train` wrote to `out`, rebuilt from its card; safetensors weights (no code runs on load).

    `standalone=True`: with the frozen transformer inside (loaded from the text model the spec names), so that the
    model runs on token ids without precomputed states.
    """
    from safetensors.torch import load_file

    out = Path(out)
    spec = read_card(out).spec
    try:
        weights = load_file(verified_weights(out))
    except (OSError, ValueError) as e:
        raise TrainingError(
            f"{out / WEIGHTS}: no readable weights ({type(e).__name__}: {e}); run `msa train`"
        ) from None
    frozen = spec.text is not None and spec.text.mode == "frozen"
    model = MultiTaskModel(spec, pretrained=standalone and frozen, standalone=standalone)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Only a carried frozen transformer may be absent from the file: it was never trained, its weights are pretrained.
    missing = [k for k in missing if not (standalone and frozen and k.startswith("token_states.transformer."))]
    if missing or unexpected:
        raise TrainingError(
            f"{out / WEIGHTS}: weights do not match {out / CARD} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); retrain with `msa train`"
        )
    return model.eval()


def load_for_scoring(model_dir: str | Path, features: str | Path, device: str, setting: str) -> tuple[Any, ...]:
    """(model on its device, card, feature arrays, featurizer state, device) for a stage that scores the model in
    `model_dir` on `features`; `setting` names the device option in errors.

    Raises TrainingError for a missing model or one trained on other features, ConfigError for an unavailable
    device.
    """
    from components.core.config import ConfigError
    from components.core.devices import pick_device
    from components.features.contract import load_features

    model_dir = Path(model_dir)
    model, card = load_trained(model_dir), read_card(model_dir)
    arrays, state = load_features(features)
    if card.featurizer_key != state.key:
        raise TrainingError(
            f"{model_dir}: trained on other features than {features} (featurizer key differs); run `msa train`"
        )
    try:
        chosen = pick_device(device)
    except ValueError as e:
        raise ConfigError(f"{setting}: {e}") from None
    return model.to(chosen), card, arrays, state, chosen


def model_inputs(
    arrays: dict[str, np.ndarray], spec: ModelSpec, *, standalone: bool = False
) -> dict[str, torch.Tensor]:
    """The feature arrays (split codes included) as tensors, with the precomputed token states only where the model
    reads them: a frozen encoder that is not carried inside (a standalone model computes its own)."""
    states = spec.text is not None and spec.text.mode == "frozen" and not standalone
    return {k: torch.from_numpy(v) for k, v in arrays.items() if k != "text.states" or states}


# Padded axes of the model's inputs: the mask that says which positions are real, and every input padded with it
# (along the mask's axes after the batch's).
PADDED_AXES = {
    "text.attention_mask": ("text.input_ids", "text.attention_mask", "text.states"),
    "text.sentence_mask": ("text.sentence_index", "text.sentence_mask"),  # HAN's grid: sentences x tokens
    **{f"{m}.mask": (f"{m}.features", f"{m}.mask") for m in SEQUENCE_MODALITIES},
}


def trim_padding(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` (numpy arrays or tensors) without the padding positions no row of it uses, at least one kept.

    Featurize pads every text to `max_tokens`, HAN's grid to `max_sentences` x `max_sentence_tokens` and every
    sequence to its `max_len`; a batch of short rows needs only its longest. No output changes (padding is masked
    everywhere), but the transformer and the recurrences run over fewer positions, and at batch 1 over exactly
    the row's own.
    """
    out = dict(batch)
    for mask_key, keys in PADDED_AXES.items():
        if mask_key not in batch:
            continue
        mask = batch[mask_key]
        index = tuple(slice(None, _used(mask, axis)) for axis in range(1, mask.ndim))
        out |= {k: _contiguous(batch[k][(slice(None), *index)]) for k in keys if k in batch}
    return out


def _used(mask: Any, axis: int) -> int:
    """1 + the last position along `axis` that some row of `mask` uses; at least 1."""
    others = tuple(a for a in range(mask.ndim) if a != axis)
    used: Any = mask.any(others) if isinstance(mask, np.ndarray) else mask.any(dim=others)  # an array or a tensor
    positions = used.nonzero()
    positions = positions[0] if isinstance(positions, tuple) else positions  # numpy: a tuple of index arrays
    return int(positions.max()) + 1 if len(positions) else 1


def _contiguous(value: Any) -> Any:
    """A sliced array as one block of memory: quantized embeddings (and ONNX Runtime) take no strided ids."""
    return value.contiguous() if isinstance(value, torch.Tensor) else np.ascontiguousarray(value)


def split_rows(split_codes: torch.Tensor, split: str) -> torch.Tensor:
    """Row indices of one split."""
    return torch.nonzero(split_codes == SPLITS.index(split)).flatten()


class HeadsModel(Protocol):
    """What `predict` runs: a MultiTaskModel, or a stand-in behind its interface (compression's ONNX Runtime model)."""

    training: bool

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def presence(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def eval(self) -> object: ...
    def train(self, mode: bool = True) -> object: ...


def predict(
    model: HeadsModel,
    tensors: dict[str, torch.Tensor],
    rows: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head: predictions (scores, or logits) and the presence mask, as float32 numpy arrays, for `rows`."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list] = {}
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for part in rows.split(EVAL_BATCH):
            batch = {k: v.to(device) for k, v in trim_padding({k: v[part] for k, v in tensors.items()}).items()}
            presence = model.presence(batch)
            for head, prediction in model(batch).items():
                chunks.setdefault(head, []).append((prediction.float().cpu(), presence[head].cpu()))
    model.train(was_training)
    return {h: (torch.cat([p for p, _ in c]).numpy(), torch.cat([m for _, m in c]).numpy()) for h, c in chunks.items()}
