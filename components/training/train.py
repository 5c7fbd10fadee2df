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

This module is the loop (epochs, steps, validation, early stopping); its parts live beside it: the architecture
(`architecture`), tensors and batches (`batches`), the optimization step (`step`), checkpoints and resume
(`checkpoints`), random streams and the multi-seed files (`seeds`), processes and devices (`runtime`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from components.core.config import ModelParams, TrainParams
from components.core.devices import autocast_dtype, cpu_threads, describe
from components.core.errors import TrainingError
from components.evaluation.heads import evaluate_heads
from components.evaluation.metrics import is_better, primary_metric
from components.features.contract import FeaturizerState, load_features
from components.models import MultiTaskModel
from components.models.seeds import SeedsReport
from components.models.spec import ModelSpec
from components.models.store import (
    CHECKPOINT,
    DatasetRef,
    ModelCard,
    Monitor,
    TrainedWith,
    monitored_head,
    read_card,
    write_card,
    write_history,
    write_model,
)
from components.training.architecture import build_spec
from components.training.batches import TrainingData, training_data, without_test
from components.training.checkpoints import (
    NOT_IN_INPUTS_KEY,
    inputs_key,
    interrupt_says_where,
    restore,
    resumable,
    resume_point,
    save_checkpoint,
)
from components.training.lineage import trained_code_hash
from components.training.runtime import deterministic, distributed, rank
from components.training.seeds import best_seed, forget_seeds, keep_best_seed, seed_dir, start_seeds, stream_seed
from components.training.step import Stepper, head_losses, loss_weights, lr_scale, optimizer_for

# build_spec, head_losses, resume_point and stream_seed live beside it; callers import them from here too.
__all__ = [
    "EpochCallback",
    "TrainResult",
    "build_spec",
    "head_losses",
    "resume_point",
    "settings_hash",
    "stream_seed",
    "train",
]

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict, bool], None]  # (the epoch's history record, whether the best model improved)


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
            forget_seeds(Path(params.out))
            result = _train_one(features, model_params, params, resume=resume, progress=progress, on_epoch=on_epoch)
        else:
            result = _train_seeds(features, model_params, params, resume=resume, progress=progress, on_epoch=on_epoch)
    if rank() == 0:  # what registration checks params.yaml and the code against
        trained_with = TrainedWith(settings=settings_hash(model_params, params), code=trained_code_hash())
        write_card(result.out, read_card(result.out).model_copy(update={"trained_with": trained_with}))
    return result


def settings_hash(model_params: ModelParams, params: TrainParams) -> str:
    """A hash of the settings that decide what training learns (where it writes and runs left out)."""
    settings = f"{model_params.model_dump_json()}\0{params.model_dump_json(exclude=NOT_IN_INPUTS_KEY)}"
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
    start_seeds(out, seeds)
    results: dict[int, TrainResult] = {}
    for seed in seeds:
        single = params.model_copy(update={"seed": seed, "seeds": 1, "out": seed_dir(out, seed)})
        callback = None if on_epoch is None else _with_seed(on_epoch, seed)
        results[seed] = _train_one(features, model_params, single, resume=resume, progress=progress, on_epoch=callback)
    valid = {seed: result.best_value for seed, result in results.items()}
    chosen = best_seed(results[params.seed].spec.label.kind, valid)
    best = results[chosen]
    selected_by = f"valid {best.monitor}"
    keep_best_seed(
        out,
        SeedsReport(
            seeds=list(results),
            chosen=chosen,
            selected_by=selected_by,
            valid={str(seed): value for seed, value in valid.items()},
        ),
    )
    return replace(best, out=out, seconds=time.perf_counter() - start, seeds=valid, seed=chosen)


def _with_seed(on_epoch: EpochCallback, seed: int) -> EpochCallback:
    return lambda record, improved: on_epoch({**record, "seed": seed}, improved)


@dataclass
class _Run:
    """One training between its first epoch and its last: what every epoch reads, and what it updates."""

    params: TrainParams
    spec: ModelSpec
    state: FeaturizerState
    data: TrainingData
    stepper: Stepper
    progress: dict[str, Any]  # what the checkpoint keeps: epoch, best, best_epoch, bad_epochs, history
    checkpoint: Path
    inputs: str  # what the checkpoint continues (`inputs_key`)
    rank: int
    world: int
    device: torch.device
    head: str  # the monitored head and metric
    metric: str
    last_epoch: int
    resumed_from: int | None
    stopped_early: bool
    trained_samples: int = 0  # over every rank
    train_seconds: float = 0.0  # in training steps, validation left out

    @property
    def model(self) -> MultiTaskModel:
        return self.stepper.model


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
    arrays = without_test(arrays)
    spec = build_spec(state, model_params, params)
    out, inputs = Path(params.out), inputs_key(state, spec, params)
    if resume is None:
        resume = resumable(out, inputs, state) is not None
    with distributed(params.device) as (rank, world, device):
        data = training_data(arrays, spec, params, rank, world)
        run = _start(params, spec, state, data, inputs, resume=resume, rank=rank, world=world, device=device)
        bar = tqdm(
            total=(run.last_epoch - run.progress["epoch"]) * data.steps_per_epoch(),
            desc="train",
            unit="step",
            disable=None if progress and rank == 0 else True,  # None: at a terminal only
            dynamic_ncols=True,
        )
        with deterministic(device), bar, interrupt_says_where(run.progress, run.checkpoint, run.last_epoch):
            for epoch in range(run.progress["epoch"] + 1, run.last_epoch + 1):
                if _epoch(run, epoch, bar, on_epoch):
                    run.stopped_early = True
                    break
    return TrainResult(
        out=out,
        spec=spec,
        monitor=f"{run.head} {run.metric}",
        best_epoch=run.progress["best_epoch"],
        best_value=run.progress["best"],
        epochs_run=run.progress["epoch"],
        stopped_early=run.stopped_early,
        seconds=time.perf_counter() - start,
        train_samples_per_s=run.trained_samples / max(run.train_seconds, 1e-9),
        history=run.progress["history"],
        resumed_from=run.resumed_from,
    )


def _start(
    params: TrainParams,
    spec: ModelSpec,
    state: FeaturizerState,
    data: TrainingData,
    inputs: str,
    *,
    resume: bool,
    rank: int,
    world: int,
    device: torch.device,
) -> _Run:
    """The model (the same initial weights on every rank) and its optimizer, continued from the checkpoint when
    resuming; says on rank 0 what is about to be trained."""
    torch.manual_seed(params.seed)  # the same initial weights on every rank
    model = MultiTaskModel(spec).to(device)
    optimizer = optimizer_for(model, params)
    progress: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
    checkpoint = Path(params.out) / CHECKPOINT
    if resume:
        progress = restore(checkpoint, spec, model, optimizer)
    if not resume and rank == 0:
        checkpoint.unlink(missing_ok=True)
    # A run that had already stopped early resumes to "done", not to more epochs.
    stopped_early = progress["bad_epochs"] >= params.patience
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
    run = _Run(
        params,
        spec,
        state,
        data,
        stepper,
        progress,
        checkpoint,
        inputs,
        rank,
        world,
        device,
        head=monitored_head(spec),
        metric=primary_metric(spec.label.kind)[0],
        last_epoch=progress["epoch"] if stopped_early else params.epochs,
        resumed_from=progress["epoch"] if resume else None,
        stopped_early=stopped_early,
    )
    if rank == 0:
        _say_start(run, amp)
    return run


def _say_start(run: _Run, amp: torch.dtype | None) -> None:
    """One line before the first epoch: the device, the data, the epochs ahead, the heads and what stops them."""
    start_line = f"train: {describe(run.device, amp)}"
    if run.world > 1:
        start_line += f", {run.world} processes"
    log.info(
        f"{start_line}; {len(run.data.train_rows)} train and {len(run.data.valid_rows)} valid samples, epochs "
        f"{run.progress['epoch'] + 1} to {run.last_epoch} at most, batch {run.params.batch_size}, heads "
        f"{', '.join(run.spec.heads)}; early stop on valid {run.head} {run.metric}"
    )


def _epoch(run: _Run, epoch: int, bar: tqdm, on_epoch: EpochCallback | None) -> bool:
    """Train `epoch`, score it on valid and, on rank 0, save it; whether early stopping ends training after it."""
    epoch_start = time.perf_counter()
    torch.manual_seed(stream_seed(run.params.seed, epoch, run.rank))
    run.stepper.forward.train()
    train_loss, loss = _train_steps(run, epoch, bar)
    run.train_seconds += time.perf_counter() - epoch_start
    head, metric = run.head, run.metric
    valid = evaluate_heads(run.model, run.data.tensors, run.data.valid_rows, run.device, run.stepper.amp)
    improved = is_better(run.spec.label.kind, valid[head][metric], run.progress["best"])
    record = {"epoch": epoch, "train_loss": train_loss, "valid": valid}
    run.progress["history"].append(record)
    run.progress |= {
        "epoch": epoch,
        "bad_epochs": 0 if improved else run.progress["bad_epochs"] + 1,
        **({"best": valid[head][metric], "best_epoch": epoch} if improved else {}),
    }
    if not bar.disable:
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", **_postfix(run.progress, head, metric))
    elif run.rank == 0:  # no bar (a log, a worker): a line per epoch instead
        log.info(_epoch_line(record, run.last_epoch, head, metric, improved, time.perf_counter() - epoch_start))
    if run.rank == 0:
        if improved:
            monitor = Monitor(head=head, metric=metric, value=valid[head][metric], epoch=epoch)
            write_model(run.params.out, run.model.state_dict(), _card(run.spec, run.state, monitor))
        write_history(run.params.out, run.progress["history"])
        save_checkpoint(run.checkpoint, run.spec, run.model, run.stepper.optimizer, run.progress, run.inputs)
        if on_epoch is not None:
            on_epoch(record, improved)
    return run.progress["bad_epochs"] >= run.params.patience


def _train_steps(run: _Run, epoch: int, bar: tqdm) -> tuple[dict[str, float], torch.Tensor]:
    """One pass over this rank's train rows: each head's training loss (averaged over the samples) and the last
    step's total loss. A non-finite gradient norm stops training, but under fp16 loss scaling (it lowers its scale)."""
    heads = run.spec.heads
    step_losses, step_sizes = [], []  # read once per epoch: a read per step waits for the step to end
    per_epoch, params = run.data.steps_per_epoch(), run.params
    for step, size, batch in run.data.batches(epoch, run.device, run.spec, params.augment):
        done = (epoch - 1) * per_epoch + step - 1  # steps before this one: the schedule is planned for every epoch
        scale = lr_scale(done, params.epochs * per_epoch, params.warmup, params.schedule)
        loss, losses, norm = run.stepper.step(batch, scale)
        # The clipped norm is already reduced across ranks, so every rank stops at the same step.
        if not torch.isfinite(norm) and run.stepper.amp != torch.float16:
            kept = f"the last good checkpoint ({run.checkpoint}, epoch {run.progress['epoch']}) is kept"
            raise TrainingError(
                f"loss is not finite ({loss.item():.4g}) at epoch {epoch}, step {step}; {kept}. "
                "Lower train.lr or check the features for extreme values."
            )
        step_losses.append(torch.stack([losses[h].detach() for h in heads]))
        step_sizes.append(size)
        run.trained_samples += size * run.world
        bar.update()
        if not bar.disable:
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", **_postfix(run.progress, run.head, run.metric))
    totals = dict.fromkeys(heads, 0.0)
    for values, size in zip(torch.stack(step_losses).tolist(), step_sizes, strict=True):
        totals = {h: totals[h] + value * size for h, value in zip(heads, values, strict=True)}
    return {h: t / len(run.data.sampler) for h, t in totals.items()}, loss


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
