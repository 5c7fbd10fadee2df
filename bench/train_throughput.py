"""Benchmark the training loop: `components.training.train.train` against a bare hand-written PyTorch loop.

Both contenders train the same `MultiTaskModel(build_spec(...))` (default ModelParams and TrainParams except the
epochs) from the same seed on the same in-memory feature tensors, with the same batch size, loss (`head_losses`
and the same head weights), AdamW settings, gradient clipping and torch thread count. The bare loop is what any
minimal loop does: a random permutation per epoch, index the tensors, forward, loss, zero_grad, backward,
clip_grad_norm_, step; no DataLoader, no validation, no checkpoints.

The project's samples/s is `TrainResult.train_samples_per_s` (training steps only: validation, checkpointing and
model saving between epochs are excluded); the bare loop is timed around its epochs the same way. The contenders
alternate (A B, B A, ...) for several rounds after one warm-up epoch each, and the table shows medians; the ratio
is the median of the per-round ratios, each taken between runs next to each other in time (target >= 0.9).

The machine may be shared, so besides wall time each run also records process CPU time over the same training
steps (for `train` by standing in for the `time` module inside `components.training.train`, checked against the
samples/s it reports): CPU time leaves out the time the process waited for a core. Use `--threads 0`
for torch's default of one thread per core; on a busy 2-core machine that oversubscribes the cores and step times
swing by 10x or more.

`--diagnose N` adds a second table that explains the gap: bare steps with and without the deterministic mode
`train` enables on CPU (`torch.use_deterministic_algorithms`, whose `fill_uninitialized_memory` NaN-fills every
`torch.empty`), interleaved step by step on the same batches, N steps per variant, CPU time.

    python bench/train_throughput.py [--epochs 3] [--rounds 3] [--features data/features] [--diagnose 40]
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import torch
import torch.utils.deterministic
import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

import components.training.train
from components.core.config import ModelParams, TrainParams
from components.data.dataset import SPLITS
from components.features.contract import load_features
from components.models import MultiTaskModel
from components.training.train import build_spec, head_losses, train

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
FEATURES = Path("data/features")


class _Clock:
    """Stands in for the `time` module inside components.training.train: records CPU time next to every perf_counter."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def perf_counter(self) -> float:
        wall = time.perf_counter()
        self.marks.append((wall, time.process_time()))
        return wall

    def __getattr__(self, name: str):
        return getattr(time, name)


def head_weights(params: TrainParams, heads: tuple[str, ...]) -> dict[str, float]:
    return {h: (1.0 if params.single_task else params.loss_weights.get(h, 1.0)) for h in heads}


def project_loop(features: Path, model_params: ModelParams, params: TrainParams, train_rows: int) -> dict:
    """`components.training.train.train` into a temporary out dir; samples/s as it reports them (training steps
    only)."""
    clock = _Clock()
    components.training.train.time = clock
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = train(features, model_params, params.model_copy(update={"out": Path(tmp)}), progress=False)
    finally:
        components.training.train.time = time
    # Marks: start, (epoch start, epoch end) per epoch, end; used only if they reproduce train's own samples/s.
    marks = clock.marks[1:-1]
    wall = sum(end[0] - begin[0] for begin, end in zip(marks[::2], marks[1::2], strict=True))
    cpu = sum(end[1] - begin[1] for begin, end in zip(marks[::2], marks[1::2], strict=True))
    samples = result.epochs_run * train_rows
    if len(clock.marks) != 2 * result.epochs_run + 2 or not math.isclose(samples / wall, result.train_samples_per_s):
        wall, cpu = samples / result.train_samples_per_s, math.nan  # train() changed: its own figure, no CPU time
    weights = head_weights(params, result.spec.heads)
    return {
        "samples": samples,
        "wall_s": wall,
        "cpu_s": cpu,
        "epochs": result.epochs_run,
        "last_train_loss": sum(weights[h] * v for h, v in result.history[-1]["train_loss"].items()),
        "train_call_s": result.seconds,
    }


def bare_setup(features: Path, model_params: ModelParams, params: TrainParams) -> tuple[Callable, torch.Tensor]:
    """(step(rows) -> loss, train rows): a fresh model, AdamW and the feature tensors, seeded like train()."""
    arrays, state = load_features(features)
    spec = build_spec(state, model_params, params)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    split = tensors.pop("split")
    if not (spec.text and spec.text.mode == "frozen"):
        tensors.pop("text.states", None)
    torch.manual_seed(params.seed)
    model = MultiTaskModel(spec).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    weights = head_weights(params, spec.heads)

    def step(rows: torch.Tensor) -> torch.Tensor:
        batch = {k: v[rows] for k, v in tensors.items()}
        outputs = model(batch)
        losses = head_losses(spec, outputs, model.presence(batch), batch["label"], params.loss)
        loss = sum(weights[h] * losses[h] for h in spec.heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        optimizer.step()
        return loss.detach()

    return step, torch.nonzero(split == SPLITS.index("train")).flatten()


def bare_loop(features: Path, model_params: ModelParams, params: TrainParams) -> dict:
    """A minimal loop on the same model, data and loss; timed over its training steps only."""
    step, train_rows = bare_setup(features, model_params, params)
    samples, wall, cpu, last_loss = 0, 0.0, 0.0, 0.0
    for _ in range(params.epochs):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        epoch_loss = torch.zeros(())
        for rows in train_rows[torch.randperm(len(train_rows))].split(params.batch_size):
            loss = step(rows)
            samples += len(rows)
            epoch_loss += loss * len(rows)
        wall += time.perf_counter() - wall_start
        cpu += time.process_time() - cpu_start
        last_loss = float(epoch_loss) / len(train_rows)
    return {"samples": samples, "wall_s": wall, "cpu_s": cpu, "epochs": params.epochs, "last_train_loss": last_loss}


DETERMINISM = {  # variant -> (use_deterministic_algorithms, fill_uninitialized_memory)
    "bare step": (False, True),
    "+ deterministic (as train())": (True, True),
    "+ deterministic, fill off": (True, False),
}


def step_attribution(features: Path, model_params: ModelParams, params: TrainParams, steps: int) -> list[dict]:
    """CPU ms per bare step with and without torch's deterministic mode, interleaved step by step on the same
    batches (order rotated), so that load on a shared machine hits every variant alike."""
    step, train_rows = bare_setup(features, model_params, params)
    names = list(DETERMINISM)
    times: dict[str, list[float]] = {name: [] for name in names}
    generator = torch.Generator().manual_seed(params.seed)
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    try:
        for i in range(steps + 2):
            rows = train_rows[torch.randperm(len(train_rows), generator=generator)[: params.batch_size]]
            for name in names[i % len(names) :] + names[: i % len(names)]:
                torch.use_deterministic_algorithms(DETERMINISM[name][0])
                torch.utils.deterministic.fill_uninitialized_memory = DETERMINISM[name][1]
                started = time.process_time()
                step(rows)
                if i >= 2:  # the first two rounds warm up
                    times[name].append(time.process_time() - started)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
    base = times[names[0]]
    return [
        {
            "variant": name,
            "ms_per_step_cpu": 1000 * statistics.median(times[name]),
            "ratio_vs_bare_cpu": statistics.median(b / t for b, t in zip(base, times[name], strict=True)),
            "overhead_ms_per_step_cpu": 1000 * statistics.median(t - b for b, t in zip(base, times[name], strict=True)),
            "steps": len(times[name]),
        }
        for name in names
    ]


def main(
    epochs: Annotated[int, typer.Option(help="Epochs per run of each contender.")] = 3,
    rounds: Annotated[int, typer.Option(help="Alternated rounds (each runs every contender once).")] = 3,
    features: Annotated[Path, typer.Option(help="Feature directory written by `msa featurize`.")] = FEATURES,
    threads: Annotated[
        int, typer.Option(help="torch threads for both contenders; 0: torch's default (one per core).")
    ] = 1,
    diagnose: Annotated[
        int, typer.Option(help="Also cost torch's deterministic mode over this many interleaved steps (0: skip).")
    ] = 0,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    model_params = ModelParams()
    params = TrainParams(epochs=epochs, patience=max(epochs, TrainParams().patience))  # no early stop
    train_rows = int((load_features(features)[0]["split"] == SPLITS.index("train")).sum())
    warm = params.model_copy(update={"epochs": 1})
    project_loop(features, model_params, warm, train_rows)  # one-off costs (lazy imports, allocator, kernels) paid here
    bare_loop(features, model_params, warm)

    contenders: dict[str, Callable[[], dict]] = {
        "project train()": lambda: project_loop(features, model_params, params, train_rows),
        "bare loop": lambda: bare_loop(features, model_params, params),
    }
    names = list(contenders)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):  # A B, B A, A B, ...
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(contenders[name]())

    steps = epochs * math.ceil(train_rows / params.batch_size)
    rows = []
    for name in names:
        pairs = list(zip(runs[name], runs["bare loop"], strict=True))
        row = {"contender": name, "steps_per_run": steps}
        for clock in ("wall", "cpu"):
            row[f"samples_per_s_{clock}"] = statistics.median(r["samples"] / r[f"{clock}_s"] for r in runs[name])
            row[f"ms_per_step_{clock}"] = statistics.median(1000 * r[f"{clock}_s"] / steps for r in runs[name])
            row[f"ratio_vs_bare_{clock}"] = statistics.median(b[f"{clock}_s"] / p[f"{clock}_s"] for p, b in pairs)
            row[f"overhead_ms_per_step_{clock}"] = statistics.median(
                1000 * (p[f"{clock}_s"] - b[f"{clock}_s"]) / steps for p, b in pairs
            )
        row["last_train_loss"] = statistics.median(r["last_train_loss"] for r in runs[name])
        calls = [r["train_call_s"] for r in runs[name] if "train_call_s" in r]
        row["train_call_s"] = statistics.median(calls) if calls else None
        row["runs"] = runs[name]
        rows.append(row)

    table = Table(
        title=f"Training throughput: {epochs} epochs x {rounds} rounds, batch {params.batch_size}, {steps} steps "
        f"per run, {torch.get_num_threads()} torch thread(s); medians"
    )
    columns = (
        "contender",
        "samples/s wall",
        "ratio wall",
        "+ms/step wall",
        "samples/s CPU",
        "ratio CPU",
        "+ms/step CPU",
        "ms/step CPU",
        "last loss",
        "train() s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        table.add_row(
            r["contender"],
            fmt(r["samples_per_s_wall"], ".0f"),
            fmt(r["ratio_vs_bare_wall"], ".3f"),
            fmt(r["overhead_ms_per_step_wall"], "+.1f"),
            fmt(r["samples_per_s_cpu"], ".0f"),
            fmt(r["ratio_vs_bare_cpu"], ".3f"),
            fmt(r["overhead_ms_per_step_cpu"], "+.1f"),
            fmt(r["ms_per_step_cpu"], ".1f"),
            fmt(r["last_train_loss"], ".4f"),
            fmt(r["train_call_s"], ".2f"),
        )
    Console(width=160).print(table)
    print(
        "ratio: bare time / contender time over the same steps, i.e. contender/bare samples/s (target >= 0.9); "
        "+ms/step: contender minus bare per step; train() s: the whole call (load, validation, checkpoints)"
    )
    attribution = step_attribution(features, model_params, params, diagnose) if diagnose else []
    if attribution:
        table = Table(title=f"Where train()'s extra time goes: {diagnose} bare steps per variant, interleaved; medians")
        for column in ("variant", "ms/step CPU", "ratio vs bare step", "+ms/step"):
            table.add_column(column, justify="right")
        for a in attribution:
            table.add_row(
                a["variant"],
                f"{a['ms_per_step_cpu']:.1f}",
                f"{a['ratio_vs_bare_cpu']:.3f}",
                f"{a['overhead_ms_per_step_cpu']:+.1f}",
            )
        Console(width=160).print(table)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    settings = {
        "epochs": epochs,
        "rounds": rounds,
        "batch_size": params.batch_size,
        "threads": torch.get_num_threads(),
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    json_path.write_text(json.dumps({"settings": settings, "rows": rows, "determinism": attribution}, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
