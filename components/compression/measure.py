"""Measuring a model against the uncompressed one: its scalar test metrics (`head_metrics`), how far its outputs
move (`max_abs_diff`), its parameter counts (`counts`), and its speed on the CPU (`timings`: latency at batch 1,
throughput at `throughput_batch`), every model taking turns so that a busy machine slows them alike.

Timing feeds every model what the served model gets: each batch cut to its longest row (`trim_padding`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from components.compression.prune import TRANSFORMER
from components.core.config import CompressParams
from components.core.devices import cpu_threads
from components.evaluation.metrics import metrics_for
from components.models.spec import ModelSpec
from components.models.store import HeadsModel, predict, trim_padding

__all__ = [
    "ALONE_ROWS",
    "BLOCK",
    "WARMUP",
    "batch_dependence",
    "counts",
    "head_metrics",
    "max_abs_diff",
    "timings",
]

WARMUP = 3  # untimed single-sample passes per model before timing (allocator, lazy kernel setup); one per batch size
BLOCK = 10  # timed passes a model runs back to back before the next model's turn
ALONE_ROWS = 32  # test rows scored one at a time to see whether a row's scores depend on its batchmates


def head_metrics(outputs: dict, labels: np.ndarray, spec: ModelSpec, head: str) -> dict[str, float]:
    """The scalar metrics of `head` from `predict`'s outputs (per-class tables and confusion matrices are left to
    evaluate)."""
    prediction, present = outputs[head]
    metrics = metrics_for(spec.label.kind, prediction[present], labels[present], spec.label.classes)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def max_abs_diff(outputs: dict, baseline: dict) -> float:
    """The largest difference from the uncompressed model's output, over every head and test sample it scores."""
    return max(float(np.abs(p - baseline[h][0])[present].max(initial=0.0)) for h, (p, present) in outputs.items())


def batch_dependence(model: HeadsModel, tensors: dict[str, torch.Tensor], rows: torch.Tensor, outputs: dict) -> float:
    """The largest change of any output when one of the first ALONE_ROWS `rows` is scored alone rather than in the
    batches `outputs` came from (`predict`'s): float rounding for a model whose rows do not meet, far more where
    activations are quantized at scales of the whole batch (dynamic int8). Such a model's served scores depend on how
    its requests are batched, so they are not what compress measured."""
    alone = [predict(model, tensors, rows[i : i + 1], torch.device("cpu")) for i in range(min(len(rows), ALONE_ROWS))]
    worst = 0.0
    for head, (batched, present) in outputs.items():
        single = np.concatenate([a[head][0] for a in alone])
        moved = np.abs(single - batched[: len(single)])[present[: len(single)]]
        worst = max(worst, float(moved.max(initial=0.0)))
    return worst


def counts(model: nn.Module) -> dict[str, int]:
    """Parameters and non-zero parameters, of the whole model and of its task part (all but the transformer)."""
    numbers = dict.fromkeys(("params", "nonzero", "task_params", "task_nonzero"), 0)
    for name, tensor in _weights(model):
        n, nonzero = tensor.numel(), int(tensor.count_nonzero())
        numbers["params"] += n
        numbers["nonzero"] += nonzero
        if not name.startswith(TRANSFORMER):
            numbers["task_params"] += n
            numbers["task_nonzero"] += nonzero
    return numbers


def _weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight as a float tensor, including the packed ones of quantized modules (dequantized)."""
    for name, module in model.named_modules():
        packed = hasattr(module, "_packed_params")  # quantized Linear / Embedding: weight() and bias() are methods
        if packed:
            for attr in ("weight", "bias"):
                if callable(getattr(module, attr, None)) and (w := getattr(module, attr)()) is not None:
                    yield f"{name}.{attr}", w.dequantize() if w.is_quantized else w
        for attr, p in module.named_parameters(recurse=False):
            yield f"{name}.{attr}", p.detach()


def timings(
    models: Mapping[str, nn.Module], tensors: dict[str, torch.Tensor], rows: torch.Tensor, params: CompressParams
) -> dict[str, dict[str, float]]:
    """Latency at batch 1 (median, p95 over `latency_runs` test samples) and throughput at `throughput_batch`
    (median over a tenth as many batches, at least 3), on the CPU at `threads` threads; and the seconds each model
    spent being timed (`seconds_timed`).

    The models take turns (see `_round_robin`), so a busy machine slows them alike and the ratios stay fair.
    """
    singles = [
        trim_padding({k: v[rows[i % len(rows)]].unsqueeze(0) for k, v in tensors.items()})
        for i in range(params.latency_runs)
    ]
    batch_rows = rows[torch.arange(params.throughput_batch) % len(rows)]
    batch = trim_padding({k: v[batch_rows] for k, v in tensors.items()})
    with cpu_threads(params.threads):
        latency = _round_robin(models, singles, WARMUP)
        batched = _round_robin(models, [batch] * max(3, params.latency_runs // 10), 1)  # a pass is 64 samples
    return {
        name: {
            "latency_ms_p50": 1000 * statistics.median(latency[name]),
            "latency_ms_p95": 1000 * float(np.percentile(latency[name], 95)),
            "throughput_per_s": params.throughput_batch / statistics.median(batched[name]),
            "seconds_timed": sum(latency[name]) + sum(batched[name]),
        }
        for name in models
    }


def _round_robin(
    models: Mapping[str, nn.Module], inputs: list[dict[str, torch.Tensor]], warmup: int
) -> dict[str, list[float]]:
    """Seconds per forward pass of every model on every input, after `warmup` untimed passes each.

    The inputs go in blocks of `BLOCK`, each model running a whole block in turn (order rotated per block): a
    served model runs back to back with its weights warm in the caches, which alternating every pass would deny
    it, while the blocks still spread a busy machine's load over all models alike.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(inputs[0])
        for i, start in enumerate(range(0, len(inputs), BLOCK)):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                for x in inputs[start : start + BLOCK]:
                    started = time.perf_counter()
                    models[name](x)
                    times[name].append(time.perf_counter() - started)
    return times
