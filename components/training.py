"""Train stage: one multi-task model, a loss per head, early stopping on the valid split.

Writes into `train.out` (default `models/`):
    model.safetensors     best weights (by the monitored head's valid metric)
    model.json            ModelSpec, monitored metric, best epoch, featurizer key: enough to rebuild the model
    history.json          per epoch: train loss per head, valid metrics per head
    checkpoints/last.pt   model, optimizer and RNG state after the last finished epoch (`--resume` reads it)

Several processes: launch with `torchrun --nproc_per_node N --no-python msa train`. torch DDP averages gradients;
`train.batch_size` stays the global batch (each rank takes batch_size / N), and ranks draw disjoint slices of the
same seeded permutation, so N processes take the same steps as one process up to float rounding.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from components.atomic import write_bytes, write_json
from components.config import ConfigError, ModelParams, TrainParams
from components.dataset import SPLITS
from components.devices import autocast_dtype, pick_device
from components.errors import TrainingError
from components.featurize import FeaturizerState, load_features, read_state
from components.metrics import is_better, metrics_for, primary_metric
from components.models import MultiTaskModel
from components.models.spec import ImageSpec, LabelSpec, ModelSpec, SequenceSpec, TextSpec

MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "model.json"
HISTORY = "history.json"
CHECKPOINT = Path("checkpoints") / "last.pt"
EVAL_BATCH = 256


@dataclass
class TrainResult:
    out: Path
    spec: ModelSpec
    monitor: str  # "<head> <metric>"
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool
    seconds: float
    train_samples_per_s: float
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None  # the checkpoint's epoch when training continued one

    def summary(self) -> str:
        why = "early stop" if self.stopped_early else "last epoch"
        resumed = "" if self.resumed_from is None else f", resumed after epoch {self.resumed_from}"
        return (
            f"train: {self.epochs_run} epochs ({why}{resumed}) in {self.seconds:.1f} s, {self.train_samples_per_s:.0f} "
            f"samples/s; best valid {self.monitor} {self.best_value:.4f} at epoch {self.best_epoch} -> {self.out}"
        )


def build_spec(state: FeaturizerState, model: ModelParams, train: TrainParams) -> ModelSpec:
    """The architecture for these features and settings; a setting the data cannot satisfy is a ConfigError."""
    available = [m for m in ("text", "image", "audio", "vision") if getattr(state, m) is not None]
    wanted = list(train.modalities or available)
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ConfigError(
            f"train.modalities asks for {missing}, but dataset {state.dataset!r} has only {available} "
            "(remove them, or set train.modalities: null to use every modality the dataset has)"
        )
    encoders = [
        *(model.text_models if "text" in wanted else ()),
        *(m for m in ("image", "audio", "vision") if m in wanted),
    ]
    heads = [*encoders, "fusion"]
    if train.single_task == "fusion":
        heads = ["fusion"]
    elif train.single_task is not None:
        if train.single_task not in encoders:
            raise ConfigError(
                f"train.single_task is {train.single_task!r}, but the heads available for dataset "
                f"{state.dataset!r} with these settings are {heads}"
            )
        encoders = heads = [train.single_task]
    text = None
    text_models = tuple(m for m in encoders if m in ("lstm", "textcnn", "han"))
    if text_models:
        if train.text_encoder == "frozen" and not state.text.token_states:
            raise ConfigError("train.text_encoder 'frozen' needs precomputed states: set featurize.token_states: true")
        text = TextSpec(
            mode=train.text_encoder, encoder=state.text.path, hidden_size=state.text.hidden_size, models=text_models
        )
    image = state.image if "image" in encoders else None
    sequences = {m: getattr(state, m) for m in ("audio", "vision") if m in encoders}
    return ModelSpec(
        label=LabelSpec(kind=state.label_kind, classes=state.classes),
        text=text,
        image=ImageSpec(size=image.size, mean=image.mean, std=image.std) if image else None,
        **{m: SequenceSpec(dim=s.dim, max_len=s.max_len) for m, s in sequences.items()},
        heads=tuple(heads),
        params=model,
    )


def monitored_head(spec: ModelSpec) -> str:
    return "fusion" if "fusion" in spec.heads else spec.heads[0]


def head_losses(
    spec: ModelSpec, outputs: dict[str, torch.Tensor], presence: dict[str, torch.Tensor], label: torch.Tensor, loss: str
) -> dict[str, torch.Tensor]:
    """Per-head loss over the samples where that head's modality is present (an absent image teaches nothing)."""
    losses = {}
    for head, prediction in outputs.items():
        keep = presence[head]
        prediction, target = prediction.float()[keep], label[keep]
        if not len(target):
            losses[head] = prediction.sum() * 0.0  # keeps the graph (and DDP's gradient buckets) whole
        elif spec.label.kind == "classification":
            losses[head] = F.cross_entropy(prediction, target)
        else:
            losses[head] = (F.l1_loss if loss == "l1" else F.mse_loss)(prediction, target)
    return losses


def train(
    features: str | Path,
    model_params: ModelParams,
    params: TrainParams,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    start = time.perf_counter()
    arrays, state = load_features(features)
    spec = build_spec(state, model_params, params)
    out = Path(params.out)
    with _distributed(params.device) as (rank, world, device):
        tensors = model_inputs(arrays, spec)
        split = tensors.pop("split")
        train_rows, valid_rows = (torch.nonzero(split == SPLITS.index(s)).flatten() for s in ("train", "valid"))
        if params.batch_size % world:
            raise ConfigError(f"train.batch_size {params.batch_size} must divide evenly over {world} processes")
        if not len(train_rows) or not len(valid_rows):
            raise ConfigError("training needs samples in both the train and the valid split")

        torch.manual_seed(params.seed)
        model = MultiTaskModel(spec).to(device)
        optimizer = _optimizer(model, params)
        weights = {h: (1.0 if params.single_task else params.loss_weights.get(h, 1.0)) for h in spec.heads}
        head, (metric, _) = monitored_head(spec), primary_metric(spec.label.kind)
        progress_state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
        checkpoint, inputs = out / CHECKPOINT, _inputs_key(state, spec, params)
        if resume:
            progress_state = _restore(checkpoint, spec, model, optimizer)
        resumed_from = progress_state["epoch"] if resume else None
        if not resume and rank == 0:
            checkpoint.unlink(missing_ok=True)
        # A run that had already stopped early resumes to "done", not to more epochs.
        stopped_early = progress_state["bad_epochs"] >= params.patience
        last_epoch = progress_state["epoch"] if stopped_early else params.epochs
        ddp = DistributedDataParallel(model) if world > 1 else model
        sampler = DistributedSampler(range(len(train_rows)), num_replicas=world, rank=rank, seed=params.seed)
        amp = autocast_dtype(device, params.precision)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        local_batch = params.batch_size // world
        steps = math.ceil(len(sampler) / local_batch)
        bar = tqdm(
            total=(last_epoch - progress_state["epoch"]) * steps,
            desc="train",
            unit="step",
            disable=not progress or rank != 0,
            dynamic_ncols=True,
        )
        trained_samples, train_seconds = 0, 0.0
        with _deterministic(device):
            for epoch in range(progress_state["epoch"] + 1, last_epoch + 1):
                epoch_start = time.perf_counter()
                sampler.set_epoch(epoch)
                ddp.train()
                totals: dict[str, float] = dict.fromkeys(spec.heads, 0.0)
                order = train_rows[torch.tensor(list(sampler))]
                for step, rows in enumerate(order.split(local_batch), start=1):
                    batch = {k: v[rows].to(device, non_blocking=True) for k, v in tensors.items()}
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        outputs = ddp(batch)
                    losses = head_losses(spec, outputs, model.presence(batch), batch["label"], params.loss)
                    loss = sum(weights[h] * losses[h] for h in spec.heads)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
                    # The clipped norm is already reduced across ranks, so every rank stops at the same step.
                    if not torch.isfinite(norm) and amp != torch.float16:
                        bar.close()
                        kept = f"the last good checkpoint ({checkpoint}, epoch {progress_state['epoch']}) is kept"
                        raise TrainingError(
                            f"loss is not finite ({loss.item():.4g}) at epoch {epoch}, step {step}; {kept}. "
                            "Lower train.lr or check the features for extreme values."
                        )
                    scaler.step(optimizer)
                    scaler.update()
                    for h in spec.heads:
                        totals[h] += losses[h].item() * len(rows)
                    trained_samples += len(rows) * world
                    bar.update()
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", **_postfix(progress_state, head, metric))
                train_seconds += time.perf_counter() - epoch_start
                valid = evaluate(model, spec, tensors, valid_rows, device, amp)
                value = valid[head][metric]
                improved = is_better(spec.label.kind, value, progress_state["best"])
                progress_state["history"].append(
                    {
                        "epoch": epoch,
                        "train_loss": {h: t / len(sampler) for h, t in totals.items()},
                        "valid": valid,
                    }
                )
                progress_state |= {
                    "epoch": epoch,
                    "bad_epochs": 0 if improved else progress_state["bad_epochs"] + 1,
                    **({"best": value, "best_epoch": epoch} if improved else {}),
                }
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", **_postfix(progress_state, head, metric))
                if rank == 0:
                    if improved:
                        _save_model(out, model, spec, state, progress_state, head, metric)
                    write_json(out / HISTORY, progress_state["history"])
                    _save_checkpoint(checkpoint, spec, model, optimizer, progress_state, inputs)
                if progress_state["bad_epochs"] >= params.patience:
                    stopped_early = True
                    break
        bar.close()
    return TrainResult(
        out=out,
        spec=spec,
        monitor=f"{head} {metric}",
        best_epoch=progress_state["best_epoch"],
        best_value=progress_state["best"],
        epochs_run=progress_state["epoch"],
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
        train_samples_per_s=trained_samples / max(train_seconds, 1e-9),
        history=progress_state["history"],
        resumed_from=resumed_from,
    )


def evaluate(
    model: MultiTaskModel,
    spec: ModelSpec,
    tensors: dict[str, torch.Tensor],
    rows: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, dict]:
    """Metrics of every head on `rows`, each over the samples where its modality is present."""
    predictions = predict(model, tensors, rows, device, amp)
    label = tensors["label"][rows].numpy()
    metrics = {}
    for head, (prediction, present) in predictions.items():
        metrics[head] = metrics_for(spec.label.kind, prediction[present], label[present], spec.label.classes)
    return metrics


def load_trained(out: str | Path, *, standalone: bool = False) -> MultiTaskModel:
    """The best model `train` wrote to `out`, rebuilt from its spec; safetensors weights (no code runs on load).

    `standalone=True`: with the frozen transformer inside (loaded from the spec's encoder directory), so that the
    model runs on token ids without precomputed states.
    """
    from safetensors.torch import load_file

    out = Path(out)
    try:
        spec = ModelSpec.model_validate(json.loads((out / MODEL_CARD).read_text())["spec"])
        weights = load_file(out / MODEL_WEIGHTS)
    except (OSError, ValueError, KeyError) as e:
        raise TrainingError(f"{out}: no readable trained model ({type(e).__name__}: {e}); run `msa train`") from None
    frozen = spec.text is not None and spec.text.mode == "frozen"
    model = MultiTaskModel(spec, pretrained=standalone and frozen, standalone=standalone)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Only a carried frozen transformer may be absent from the file: it was never trained, its weights are pretrained.
    missing = [k for k in missing if not (standalone and frozen and k.startswith("token_states.transformer."))]
    if missing or unexpected:
        raise TrainingError(
            f"{out / MODEL_WEIGHTS}: weights do not match {out / MODEL_CARD} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); retrain with `msa train`"
        )
    return model.eval()


def model_inputs(
    arrays: dict[str, np.ndarray], spec: ModelSpec, *, standalone: bool = False
) -> dict[str, torch.Tensor]:
    """The feature arrays (split codes included) as tensors, with the precomputed token states only where the model
    reads them: a frozen encoder that is not carried inside (a standalone model computes its own)."""
    states = spec.text is not None and spec.text.mode == "frozen" and not standalone
    return {k: torch.from_numpy(v) for k, v in arrays.items() if k != "text.states" or states}


def evaluate_split(features: str | Path, out: str | Path, split: str) -> dict[str, dict]:
    """Metrics of every head of the model in `out` on one split of `features`, on the CPU."""
    model = load_trained(out)
    tensors = model_inputs(load_features(features)[0], model.spec)
    rows = torch.nonzero(tensors.pop("split") == SPLITS.index(split)).flatten()
    return evaluate(model, model.spec, tensors, rows, torch.device("cpu"))


def predict(
    model: MultiTaskModel,
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
            batch = {k: v[part].to(device) for k, v in tensors.items()}
            presence = model.presence(batch)
            for head, prediction in model(batch).items():
                chunks.setdefault(head, []).append((prediction.float().cpu(), presence[head].cpu()))
    model.train(was_training)
    return {h: (torch.cat([p for p, _ in c]).numpy(), torch.cat([m for _, m in c]).numpy()) for h, c in chunks.items()}


def _postfix(progress_state: dict, head: str, metric: str) -> dict[str, str]:
    if progress_state["best"] is None:
        return {}
    last = progress_state["history"][-1]["valid"][head][metric]
    return {f"valid_{metric}": f"{last:.3f}"}


def _optimizer(model: MultiTaskModel, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW; a fine-tuned transformer gets its own, much smaller learning rate."""
    encoder = {id(p) for p in model.transformer_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder]
    groups = [{"params": rest, "lr": params.lr}]
    if encoder:
        groups.append({"params": model.transformer_parameters(), "lr": params.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=params.weight_decay)


def _save_model(
    out: Path, model: MultiTaskModel, spec: ModelSpec, state: FeaturizerState, progress: dict, head: str, metric: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{MODEL_WEIGHTS}.tmp"
    save_file(weights, tmp)
    os.replace(tmp, out / MODEL_WEIGHTS)
    card = {
        "spec": spec.model_dump(mode="json"),
        "monitor": {"head": head, "metric": metric, "value": progress["best"], "epoch": progress["best_epoch"]},
        "featurizer_key": state.key,
        "dataset": {"name": state.dataset, "version": state.dataset_version},
    }
    write_json(out / MODEL_CARD, card)


def resume_point(features: str | Path, model_params: ModelParams, params: TrainParams) -> int | None:
    """The last epoch of a checkpoint in `params.out` that training on these features with these settings wrote;
    None when there is no such checkpoint (none, unreadable, or written for other inputs), so training starts over.
    """
    path = Path(params.out) / CHECKPOINT
    if not path.is_file():
        return None
    state = read_state(features)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt or foreign file is simply not resumable
        return None
    if saved.get("inputs") != _inputs_key(state, build_spec(state, model_params, params), params):
        return None
    return int(json.loads(saved["progress"])["epoch"])


def _inputs_key(state: FeaturizerState, spec: ModelSpec, params: TrainParams) -> str:
    """What a checkpoint continues: these features, this model and these settings (wherever it runs)."""
    settings = params.model_dump_json(exclude={"out", "device"})
    return hashlib.sha256(f"{state.key}\0{spec.model_dump_json()}\0{settings}".encode()).hexdigest()


def _save_checkpoint(
    path: Path, spec: ModelSpec, model: MultiTaskModel, optimizer: torch.optim.Optimizer, progress: dict, inputs: str
) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(
        {
            "spec": spec.model_dump_json(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "progress": json.dumps(progress),
            "inputs": inputs,
        },
        buffer,
    )
    write_bytes(path, buffer.getvalue())


def _restore(path: Path, spec: ModelSpec, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> dict:
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from (train once without --resume)")
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
            "train without --resume, or restore the settings it was trained with"
        )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return json.loads(saved["progress"])


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Same seed, same weights on CPU (CUDA kernels trade that for speed, so it is not forced there)."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    # Filling every torch.empty with NaN is a debugging aid (2-4% per step); results stay deterministic without it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]


@contextmanager
def _distributed(device_name: str) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device): one process by default, torch DDP when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, pick_device(device_name)
        return
    device = pick_device(device_name)
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world, device
    finally:
        dist.destroy_process_group()
