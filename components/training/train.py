"""Train stage: one multi-task model, a loss per head, early stopping on the valid split.

Writes into `train.out` through components.models.store (weights, model card, history, checkpoints). A run whose
inputs (features, model, settings) equal a checkpoint's continues it (`resume=None`, what `msa train`, `dvc repro`
and the flows do); `resume=True` insists on one, `resume=False` starts over.

Several processes: launch with `torchrun --nproc_per_node N --no-python msa train`. torch DDP averages gradients;
`train.batch_size` stays the global batch (each rank takes batch_size / N), and ranks draw disjoint slices of the
same seeded permutation. Each rank draws its own random stream (dropout, `train.augment`), derived from (seed,
epoch, rank), so:
- without randomness in the model (dropout 0, augmentation off) N processes take the same steps as one, up to
  float rounding of the gradient all-reduce;
- with it, N processes are a different draw of the same distribution of results as one: rank 0's stream is the
  single process's, the other ranks' are independent of it. The streams restart from (seed, epoch, rank) every
  epoch, so a resumed run continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from components.core.atomic import write_bytes
from components.core.config import ConfigError, ModelParams, TrainParams, runtime_keys
from components.core.devices import autocast_dtype, cpu_threads, describe, pick_device
from components.core.errors import TrainingError, TrainingInterrupted
from components.data.dataset import SPLITS
from components.evaluation.metrics import is_better, primary_metric
from components.features.contract import FeaturizerState, load_features, read_state
from components.models import MultiTaskModel
from components.models.spec import ImageSpec, LabelSpec, ModelSpec, SequenceSpec, TextSpec
from components.models.store import (
    CHECKPOINT,
    MODEL_FILES,
    SEEDS,
    SEEDS_DIR,
    WEIGHTS,
    DatasetRef,
    ModelCard,
    Monitor,
    TrainedWith,
    evaluate_heads,
    model_inputs,
    monitored_head,
    read_card,
    remove_seed_models,
    split_rows,
    trim_padding,
    write_card,
    write_history,
    write_model,
)
from components.training.augmentation import augment, enabled
from components.training.lineage import trained_code_hash

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict, bool], None]  # (the epoch's history record, whether the best model improved)
# Where the model goes and which device trains it do not decide what a checkpoint continues.
_NOT_IN_INPUTS_KEY = runtime_keys("train")


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
    seeds: dict[int, float] = field(default_factory=dict)  # with train.seeds > 1: seed -> its best valid value
    seed: int | None = None  # with train.seeds > 1: the seed whose model this is (the best on valid)

    def summary(self) -> str:
        why = "early stop" if self.stopped_early else "last epoch"
        resumed = "" if self.resumed_from is None else f", resumed after epoch {self.resumed_from}"
        text = (
            f"train: {self.epochs_run} epochs ({why}{resumed}) in {self.seconds:.1f} s, {self.train_samples_per_s:.0f} "
            f"samples/s; best valid {self.monitor} {self.best_value:.4f} at epoch {self.best_epoch} -> {self.out}"
        )
        if self.seeds:
            values = np.array(list(self.seeds.values()))
            text += (
                f"; best of {len(self.seeds)} seeds: seed {self.seed} (valid {self.monitor} over seeds "
                f"{values.mean():.4f} ± {values.std():.4f})"
            )
        return text


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
            mode=train.text_encoder, encoder=state.text.model, hidden_size=state.text.hidden_size, models=text_models
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


def loss_weights(spec: ModelSpec, params: TrainParams) -> dict[str, float]:
    return {h: (1.0 if params.single_task else params.loss_weights.get(h, 1.0)) for h in spec.heads}


@dataclass
class Stepper:
    """One optimization step of the multi-task loss: what training and the fine-tune after pruning share.

    `forward` is the module called (the DDP wrapper when distributed); `model` is the model it wraps.
    """

    model: MultiTaskModel
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    weights: dict[str, float]
    loss: str
    grad_clip: float
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None  # loss scaling for fp16 autocast; None: none

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(enabled=False)

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(total loss, per-head losses, gradient norm before clipping); the optimizer step is skipped when the
        norm is not finite (fp16 loss scaling then lowers its scale)."""
        spec, device = self.model.spec, batch["label"].device
        with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
            outputs = self.forward(batch)
        losses = head_losses(spec, outputs, self.model.presence(batch), batch["label"], self.loss)
        total = sum(self.weights[h] * losses[h] for h in spec.heads)
        scaler = self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if torch.isfinite(norm) or scaler.is_enabled():
            scaler.step(self.optimizer)
            scaler.update()
        return total, losses, norm


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random stream (dropout) in one epoch; rank 0's differs from no other process's."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def train(
    features: str | Path,
    model_params: ModelParams,
    params: TrainParams,
    *,
    resume: bool | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train on `features`; `resume` None continues a checkpoint of the same inputs if there is one (see
    `resume_point`), False starts over, True continues the checkpoint whatever its other settings, as long as it was
    written for this architecture (to train it for more epochs, say). `on_epoch` runs on rank 0 after each epoch
    is saved.

    With `train.seeds` N > 1: N trainings, seeds `seed` .. `seed` + N - 1, each in `out/seeds/seed-<s>/` with its
    own checkpoint (each resumes on its own); the one with the best monitored valid metric is copied to `out` (never
    chosen on test) and `out/seeds.json` names it. `on_epoch` records then carry their `seed`.
    """
    with cpu_threads(params.threads):
        if params.seeds == 1:
            _forget_seeds(Path(params.out))
            result = _train_one(features, model_params, params, resume=resume, progress=progress, on_epoch=on_epoch)
        else:
            result = _train_seeds(features, model_params, params, resume=resume, progress=progress, on_epoch=on_epoch)
    if _rank() == 0:  # what registration checks params.yaml and the code against
        trained_with = TrainedWith(settings=settings_hash(model_params, params), code=trained_code_hash())
        write_card(result.out, read_card(result.out).model_copy(update={"trained_with": trained_with}))
    return result


def settings_hash(model_params: ModelParams, params: TrainParams) -> str:
    """A hash of the settings that decide what training learns (where it writes and runs left out)."""
    settings = f"{model_params.model_dump_json()}\0{params.model_dump_json(exclude=_NOT_IN_INPUTS_KEY)}"
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def _train_seeds(
    features: str | Path,
    model_params: ModelParams,
    params: TrainParams,
    *,
    resume: bool | None,
    progress: bool,
    on_epoch: EpochCallback | None,
) -> TrainResult:
    start, out = time.perf_counter(), Path(params.out)
    seeds = range(params.seed, params.seed + params.seeds)
    if _rank() == 0:
        (out / CHECKPOINT).unlink(missing_ok=True)  # a single-seed run's, which nothing here continues
        (out / SEEDS).unlink(missing_ok=True)  # written again last: a killed run leaves no record of other models
        remove_seed_models(out, keep={f"seed-{seed}" for seed in seeds})
    results: dict[int, TrainResult] = {}
    for seed in seeds:
        single = params.model_copy(update={"seed": seed, "seeds": 1, "out": out / SEEDS_DIR / f"seed-{seed}"})
        callback = None if on_epoch is None else _with_seed(on_epoch, seed)
        results[seed] = _train_one(features, model_params, single, resume=resume, progress=progress, on_epoch=callback)
    kind = results[params.seed].spec.label.kind
    chosen = params.seed
    for seed, result in results.items():
        if is_better(kind, result.best_value, results[chosen].best_value):
            chosen = seed
    best = results[chosen]
    if _rank() == 0:
        for name in MODEL_FILES:  # the chosen model at the top, where evaluate, compress and registration read it
            write_bytes(out / name, (best.out / name).read_bytes())
        record = {
            "seeds": list(results),
            "chosen": chosen,
            "selected_by": f"valid {best.monitor}",
            "valid": {str(seed): result.best_value for seed, result in results.items()},
        }
        write_bytes(out / SEEDS, (json.dumps(record, indent=2) + "\n").encode())
    valid = {seed: result.best_value for seed, result in results.items()}
    return replace(best, out=out, seconds=time.perf_counter() - start, seeds=valid, seed=chosen)


def _with_seed(on_epoch: EpochCallback, seed: int) -> EpochCallback:
    return lambda record, improved: on_epoch({**record, "seed": seed}, improved)


def _rank() -> int:
    """This process's rank under torchrun (0 alone): what rank 0 alone writes, before and after the process group."""
    return int(os.environ.get("RANK", "0"))


def _forget_seeds(out: Path) -> None:
    """A single-seed training leaves no multi-seed record behind (it would describe another model)."""
    if _rank() == 0:
        (out / SEEDS).unlink(missing_ok=True)
        remove_seed_models(out)


def _train_one(
    features: str | Path,
    model_params: ModelParams,
    params: TrainParams,
    *,
    resume: bool | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    start = time.perf_counter()
    arrays, state = load_features(features)
    arrays = _without_test(arrays)
    spec = build_spec(state, model_params, params)
    out, inputs = Path(params.out), _inputs_key(state, spec, params)
    if resume is None:
        resume = _resumable(out, inputs, state) is not None
    with _distributed(params.device) as (rank, world, device):
        tensors = model_inputs(arrays, spec)
        split = tensors.pop("split")
        train_rows, valid_rows = split_rows(split, "train"), split_rows(split, "valid")
        if params.batch_size % world:
            raise ConfigError(f"train.batch_size {params.batch_size} must divide evenly over {world} processes")
        if not len(train_rows) or not len(valid_rows):
            raise ConfigError("training needs samples in both the train and the valid split")

        torch.manual_seed(params.seed)  # the same initial weights on every rank
        model = MultiTaskModel(spec).to(device)
        optimizer = _optimizer(model, params)
        head, (metric, _) = monitored_head(spec), primary_metric(spec.label.kind)
        progress_state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
        checkpoint = out / CHECKPOINT
        if resume:
            progress_state = _restore(checkpoint, spec, model, optimizer)
        resumed_from = progress_state["epoch"] if resume else None
        if not resume and rank == 0:
            checkpoint.unlink(missing_ok=True)
        # A run that had already stopped early resumes to "done", not to more epochs.
        stopped_early = progress_state["bad_epochs"] >= params.patience
        last_epoch = progress_state["epoch"] if stopped_early else params.epochs
        amp = autocast_dtype(device, params.precision)
        stepper = Stepper(
            model=model,
            forward=DistributedDataParallel(model) if world > 1 else model,
            optimizer=optimizer,
            weights=loss_weights(spec, params),
            loss=params.loss,
            grad_clip=params.grad_clip,
            amp=amp,
            scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        )
        sampler = DistributedSampler(range(len(train_rows)), num_replicas=world, rank=rank, seed=params.seed)
        local_batch = params.batch_size // world
        if rank == 0:
            start_line = f"train: {describe(device, amp)}"
            if world > 1:
                start_line += f", {world} processes"
            log.info(
                f"{start_line}; {len(train_rows)} train and {len(valid_rows)} valid samples, epochs "
                f"{progress_state['epoch'] + 1} to {last_epoch} at most, batch {params.batch_size}, heads "
                f"{', '.join(spec.heads)}; early stop on valid {head} {metric}"
            )
        bar = tqdm(
            total=(last_epoch - progress_state["epoch"]) * math.ceil(len(sampler) / local_batch),
            desc="train",
            unit="step",
            disable=None if progress and rank == 0 else True,  # None: at a terminal only
            dynamic_ncols=True,
        )
        trained_samples, train_seconds = 0, 0.0
        augmenting = enabled(params.augment)  # drawn from the per-epoch stream seeded below, like dropout
        with _deterministic(device), bar, _interrupt_says_where(progress_state, checkpoint, last_epoch):
            for epoch in range(progress_state["epoch"] + 1, last_epoch + 1):
                epoch_start = time.perf_counter()
                sampler.set_epoch(epoch)
                torch.manual_seed(stream_seed(params.seed, epoch, rank))
                stepper.forward.train()
                step_losses, step_sizes = [], []  # read once per epoch: a read per step waits for the step to end
                for step, rows in enumerate(train_rows[torch.tensor(list(sampler))].split(local_batch), start=1):
                    batch = trim_padding({k: v[rows] for k, v in tensors.items()})
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    if augmenting:  # training batches only: validation and compression's fine-tune see clean ones
                        batch = augment(batch, spec, params.augment)
                    loss, losses, norm = stepper.step(batch)
                    # The clipped norm is already reduced across ranks, so every rank stops at the same step.
                    if not torch.isfinite(norm) and amp != torch.float16:
                        kept = f"the last good checkpoint ({checkpoint}, epoch {progress_state['epoch']}) is kept"
                        raise TrainingError(
                            f"loss is not finite ({loss.item():.4g}) at epoch {epoch}, step {step}; {kept}. "
                            "Lower train.lr or check the features for extreme values."
                        )
                    step_losses.append(torch.stack([losses[h].detach() for h in spec.heads]))
                    step_sizes.append(len(rows))
                    trained_samples += len(rows) * world
                    bar.update()
                    if not bar.disable:
                        bar.set_postfix(
                            epoch=epoch, loss=f"{loss.item():.3f}", **_postfix(progress_state, head, metric)
                        )
                totals = dict.fromkeys(spec.heads, 0.0)
                for values, size in zip(torch.stack(step_losses).tolist(), step_sizes, strict=True):
                    totals = {h: totals[h] + value * size for h, value in zip(spec.heads, values, strict=True)}
                train_seconds += time.perf_counter() - epoch_start
                valid = evaluate_heads(model, tensors, valid_rows, device, amp)
                improved = is_better(spec.label.kind, valid[head][metric], progress_state["best"])
                record = {
                    "epoch": epoch,
                    "train_loss": {h: t / len(sampler) for h, t in totals.items()},
                    "valid": valid,
                }
                progress_state["history"].append(record)
                progress_state |= {
                    "epoch": epoch,
                    "bad_epochs": 0 if improved else progress_state["bad_epochs"] + 1,
                    **({"best": valid[head][metric], "best_epoch": epoch} if improved else {}),
                }
                if not bar.disable:
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", **_postfix(progress_state, head, metric))
                elif rank == 0:  # no bar (a log, a worker): a line per epoch instead
                    log.info(_epoch_line(record, last_epoch, head, metric, improved, time.perf_counter() - epoch_start))
                if rank == 0:
                    if improved:
                        monitor = Monitor(head=head, metric=metric, value=valid[head][metric], epoch=epoch)
                        write_model(out, model.state_dict(), _card(spec, state, monitor))
                    write_history(out, progress_state["history"])
                    _save_checkpoint(checkpoint, spec, model, optimizer, progress_state, inputs)
                    if on_epoch is not None:
                        on_epoch(record, improved)
                if progress_state["bad_epochs"] >= params.patience:
                    stopped_early = True
                    break
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


def _without_test(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The train and valid rows only: the test split never reaches training, so nothing chosen by a valid score
    (an epoch, a seed, a tuning trial) can have seen it."""
    keep = arrays["split"] != SPLITS.index("test")
    return {name: values[keep] for name, values in arrays.items()}


@contextmanager
def _interrupt_says_where(progress_state: dict, checkpoint: Path, last_epoch: int) -> Iterator[None]:
    """Ctrl-C ends training at once, saying what was kept and what the next `msa train` will do."""
    try:
        yield
    except KeyboardInterrupt:
        done = progress_state["epoch"]
        kept = (
            f"the checkpoint after epoch {done} ({checkpoint}) is kept: `msa train` with the same inputs continues "
            f"from epoch {done + 1}, `msa train --restart` starts over"
            if done
            else "no epoch had finished, so nothing was kept: `msa train` starts over"
        )
        raise TrainingInterrupted(f"training interrupted during epoch {done + 1} of {last_epoch}; {kept}") from None


def resume_point(features: str | Path, model_params: ModelParams, params: TrainParams) -> int | None:
    """The last epoch of a checkpoint in `params.out` that training on these features with these settings wrote,
    beside the best model it had reached; None when there is no such pair (none, unreadable, written for other
    inputs, or its best model missing, as after `dvc repro` cleared the stage's outputs), so training starts over.
    """
    if not (Path(params.out) / CHECKPOINT).is_file():
        return None
    state = read_state(features)
    return _resumable(Path(params.out), _inputs_key(state, build_spec(state, model_params, params), params), state)


def _resumable(out: Path, inputs: str, state: FeaturizerState) -> int | None:
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


def _card(spec: ModelSpec, state: FeaturizerState, monitor: Monitor) -> ModelCard:
    return ModelCard(
        spec=spec,
        monitor=monitor,
        featurizer_key=state.key,
        dataset=DatasetRef(name=state.dataset, version=state.dataset_version),
    )


def _epoch_line(record: dict, last_epoch: int, head: str, metric: str, improved: bool, seconds: float) -> str:
    """`epoch 7/30  loss lstm 0.412 ... fusion 0.301  valid fusion mae 0.2734 (best)  3.2 s`"""
    losses = " ".join(f"{h} {value:.3f}" for h, value in record["train_loss"].items())
    value = record["valid"][head][metric]
    return (
        f"epoch {record['epoch']}/{last_epoch}  loss {losses}  valid {head} {metric} {value:.4f}"
        f"{' (best)' if improved else ''}  {seconds:.1f} s"
    )


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


def _inputs_key(state: FeaturizerState, spec: ModelSpec, params: TrainParams) -> str:
    """What a checkpoint continues: these features, this model, these settings and this training code (wherever it
    runs): a checkpoint of edited training code is not continued, the edit may change what it learns."""
    settings = params.model_dump_json(exclude=_NOT_IN_INPUTS_KEY)
    key = f"{state.key}\0{spec.model_dump_json()}\0{settings}\0{trained_code_hash()}"
    return hashlib.sha256(key.encode()).hexdigest()


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
            "progress": json.dumps(progress),
            "inputs": inputs,
        },
        buffer,
    )
    write_bytes(path, buffer.getvalue())


def _restore(path: Path, spec: ModelSpec, model: MultiTaskModel, optimizer: torch.optim.Optimizer) -> dict:
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
    try:
        device = pick_device(device_name)
    except ValueError as e:
        raise ConfigError(f"train.device: {e}") from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world, device
    finally:
        dist.destroy_process_group()
