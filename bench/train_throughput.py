"""Benchmark the training loop: `components.training.train` against a bare hand-written PyTorch loop.

Both contenders train the same `MultiTaskModel(build_spec(...))` from the same seed on the same in-memory feature
tensors, with the same batch size, loss (`head_losses`, same head weights), AdamW groups, gradient clipping and
thread count. The bare loop is what any minimal loop does: a random permutation per epoch, index the tensors,
forward, loss, zero_grad, backward, clip_grad_norm_, step. No DataLoader, no validation, no checkpoints.

The project's samples/s is `TrainResult.train_samples_per_s` (training steps only; validation, checkpointing and
model saving between epochs are excluded), the bare loop's is timed around its epochs the same way. The two
alternate (A B, B A, ...) for several rounds after one warm-up epoch each; the table shows medians. The machine may
be shared, so compare the ratio project/bare (target >= 0.9), not absolute numbers across runs.

    python bench/train_throughput.py [--epochs 3] [--rounds 3] [--features data/features]
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from components.config import ModelParams, TrainParams
from components.dataset import SPLITS
from components.featurize import load_features
from components.models import MultiTaskModel
from components.training import build_spec, head_losses, train

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
FEATURES = Path("data/features")


def bare_loop(features: Path, model_params: ModelParams, params: TrainParams, deterministic: bool = False) -> dict:
    """Minimal training loop on the same model and data; returns samples/s over the training steps only."""
    arrays, state = load_features(features)
    spec = build_spec(state, model_params, params)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    split = tensors.pop("split")
    if not (spec.text and spec.text.mode == "frozen"):
        tensors.pop("text.states", None)
    train_rows = torch.nonzero(split == SPLITS.index("train")).flatten()
    torch.manual_seed(params.seed)
    model = MultiTaskModel(spec)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    weights = {h: (1.0 if params.single_task else params.loss_weights.get(h, 1.0)) for h in spec.heads}
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    samples, seconds, last_loss = 0, 0.0, 0.0
    try:
        model.train()
        for _ in range(params.epochs):
            started = time.perf_counter()
            epoch_loss = 0.0
            for rows in train_rows[torch.randperm(len(train_rows))].split(params.batch_size):
                batch = {k: v[rows] for k, v in tensors.items()}
                outputs = model(batch)
                losses = head_losses(spec, outputs, model.presence(batch), batch["label"], params.loss)
                loss = sum(weights[h] * losses[h] for h in spec.heads)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
                optimizer.step()
                samples += len(rows)
                epoch_loss += loss.detach() * len(rows)
            seconds += time.perf_counter() - started
            last_loss = float(epoch_loss) / len(train_rows)
    finally:
        torch.use_deterministic_algorithms(before)
    steps = params.epochs * math.ceil(len(train_rows) / params.batch_size)
    return {"samples_per_s": samples / seconds, "seconds": seconds, "steps": steps, "last_train_loss": last_loss}


def project_loop(features: Path, model_params: ModelParams, params: TrainParams) -> dict:
    """`components.training.train` into a temporary out dir; samples/s as it reports it (training steps only)."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = train(features, model_params, params.model_copy(update={"out": Path(tmp)}), progress=False)
        wall = time.perf_counter() - started
    arrays, _ = load_features(features)
    train_rows = int((arrays["split"] == SPLITS.index("train")).sum())
    weights = {h: (1.0 if params.single_task else params.loss_weights.get(h, 1.0)) for h in result.spec.heads}
    return {
        "samples_per_s": result.train_samples_per_s,
        "seconds": result.epochs_run * train_rows / result.train_samples_per_s,
        "steps": result.epochs_run * math.ceil(train_rows / params.batch_size),
        "last_train_loss": sum(weights[h] * v for h, v in result.history[-1]["train_loss"].items()),
        "wall_s": wall,
    }


def main(
    epochs: Annotated[int, typer.Option(help="Epochs per run of each contender.")] = 3,
    rounds: Annotated[int, typer.Option(help="Alternated rounds (each runs both contenders).")] = 3,
    features: Annotated[Path, typer.Option(help="Feature directory written by `msa featurize`.")] = FEATURES,
    threads: Annotated[int, typer.Option(help="torch threads for both contenders (0: torch's default).")] = 0,
    deterministic: Annotated[
        bool, typer.Option(help="Also run the bare loop under torch.use_deterministic_algorithms (as train does).")
    ] = True,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    model_params = ModelParams()
    params = TrainParams(epochs=epochs, patience=max(epochs, TrainParams().patience))
    warm = params.model_copy(update={"epochs": 1})
    project_loop(features, model_params, warm)  # one-off costs (lazy imports, allocator, kernels) paid here
    bare_loop(features, model_params, warm)

    contenders = {"project": lambda: project_loop(features, model_params, params)}
    contenders["bare"] = lambda: bare_loop(features, model_params, params)
    if deterministic:
        contenders["bare+deterministic"] = lambda: bare_loop(features, model_params, params, deterministic=True)
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(contenders[name]())

    def med(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    def step_ms(run: dict) -> float:
        return 1000 * run["seconds"] / run["steps"]

    rows = []
    for name in names:
        ratios = [p["samples_per_s"] / b["samples_per_s"] for p, b in zip(runs[name], runs["bare"], strict=True)]
        overheads = [step_ms(p) - step_ms(b) for p, b in zip(runs[name], runs["bare"], strict=True)]
        rows.append(
            {
                "contender": name,
                "samples_per_s": med(name, "samples_per_s"),
                "samples_per_s_runs": [run["samples_per_s"] for run in runs[name]],
                "ms_per_step": statistics.median(step_ms(run) for run in runs[name]),
                "ratio_vs_bare": statistics.median(ratios),
                "ratio_vs_bare_runs": ratios,
                "overhead_ms_per_step": statistics.median(overheads),
                "last_train_loss": med(name, "last_train_loss"),
                "wall_s": med(name, "wall_s") if name == "project" else None,
            }
        )
    table = Table(
        title=f"Training throughput ({epochs} epochs x {rounds} rounds, batch {params.batch_size}, "
        f"{torch.get_num_threads()} threads; medians)"
    )
    for column in ("contender", "samples/s", "ms/step", "ratio vs bare", "overhead ms/step", "last train loss",
                   "train() wall s"):  # fmt: skip
        table.add_column(column, justify="right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        table.add_row(
            r["contender"], fmt(r["samples_per_s"], ".0f"), fmt(r["ms_per_step"], ".1f"),
            fmt(r["ratio_vs_bare"], ".3f"), fmt(r["overhead_ms_per_step"], "+.2f"), fmt(r["last_train_loss"], ".4f"),
            fmt(r["wall_s"], ".2f"),
        )  # fmt: skip
    Console(width=140).print(table)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"epochs": epochs, "rounds": rounds, "batch_size": params.batch_size, "threads": torch.get_num_threads()}
    json_path.write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
