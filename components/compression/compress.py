"""Compress stage: int8 quantization and magnitude pruning of the trained model, each measured against it.

What is compressed and measured is the *standalone* model (`load_trained(standalone=True)`: the frozen MiniLM
carried inside, running on token ids), because that is the model that gets served. Every variant and the
uncompressed baseline are scored on the same test split and timed in the same loop, taking turns
(components.compression.measure).

Variants
    int8                dynamic int8 quantization of every nn.Linear and a weight-only 8-bit word-embedding table;
                        LSTM/GRU layers stay float (components.compression.quantize).
    prune_unstructured  global L1 magnitude pruning of the weights this pipeline trained (the sub-models, fusion
                        and heads; never the pretrained transformer) at `sparsity`.
    prune_structured    L2 pruning of whole output rows / channels of every trained Linear and Conv layer at
                        `sparsity` (components.compression.prune).
    Pruning is followed by `finetune_epochs` of training on the train split with the masks held (on precomputed
    token states, as `train` does), then made permanent.
    onnx_fp32           the standalone model exported to ONNX (dynamic batch, token and frame axes) and run by ONNX
                        Runtime: the same weights, another runtime (components.compression.onnx_model).
    onnx_int8           onnx_fp32 with ONNX Runtime's static int8 quantization of the weight MatMuls/Gemms and the
                        embedding tables, activation scales calibrated on up to CALIBRATION_ROWS train rows (the
                        recurrences stay float, as in int8). Both ONNX variants report the baseline's parameter
                        counts.

Files: `<out>/<variant>/` for each kept variant (components.compression.variants); `report`, every measurement of
the baseline and of each variant (`CompressionReport`); `headline`, the DVC metrics `dvc exp show` compares (per
variant: how many times smaller and faster at batch 1 than the baseline, and the metric's change).

A variant is kept only when it is within `tolerance` points of the baseline with `confidence`: the worse bound of a
paired bootstrap of its change over the test rows (components.evaluation.bootstrap), not the one change measured.
On a split of a hundred rows a variant that flips three predictions may score a point better or worse by luck; the
bound tells that apart from a variant that agrees with the baseline. Nor is a variant kept whose rows score
otherwise when batched otherwise (`batch_dependence` above `batch_tolerance`, e.g. activations quantized at
per-batch scales): served in other batches, it would not score what was measured here. One that fails either is
measured and reported with kept=false, and not written.

Every change here, as everywhere in this project, is the variant's value minus the uncompressed model's, signed (a
variant that loses accuracy has a negative change), in points (100 x the metric) except for mae, which is in its own
units (a worse mae has a positive change): `change_unit` in the report says which.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.compression.measure import (
    batch_dependence,
    counts,
    head_metrics,
    max_abs_diff,
    timings,
)
from components.compression.onnx_model import CALIBRATION_ROWS, ONNX_WEIGHTS, OnnxModel, input_names
from components.compression.prune import (
    finetune,
    make_permanent,
    prune_model,
    prune_targets,
    reached_sparsity,
    standalone_copy,
)
from components.compression.quantize import quantize_int8
from components.compression.report import (
    CompressionReport,
    Measurement,
    VariantReport,
    change,
    change_unit,
    drop_points,
    format_change,
    served_variant,
    versus_baseline,
)
from components.compression.variants import load_compressed, onnx_payloads, serialize, write_variant
from components.core.atomic import replace_directory, write_json
from components.core.config import ONNX_VARIANTS, CompressParams, ConfigError, TrainParams
from components.core.devices import cpu_threads
from components.evaluation.bootstrap import paired_bootstrap
from components.features.contract import load_features
from components.models import MultiTaskModel
from components.models.spec import ModelSpec
from components.models.store import (
    CARD,
    EVAL_BATCH,
    digest,
    load_trained,
    model_inputs,
    monitored_head,
    predict,
    read_card,
    split_rows,
    trim_padding,
)

# What other modules import from here, though it lives beside it.
__all__ = [
    "CompressionResult",
    "change",
    "compress",
    "load_compressed",
    "prune_model",
    "prune_targets",
    "quantize_int8",
    "served_variant",
    "versus_baseline",
]

CPU = torch.device("cpu")


@dataclass
class CompressionResult:
    report: Path
    headline: Path
    head: str
    metric: str
    baseline: dict  # the report's `baseline`, as JSON reads it
    variants: dict[str, dict]  # the report's `variants`, as JSON reads them
    seconds: float
    batch_tolerance: float  # the gate on a variant's `batch_dependence` (a reason to drop it)

    def summary(self) -> str:
        parts = []
        for name, v in self.variants.items():
            ratios = versus_baseline(self.baseline, v)
            parts.append(
                f"{name} {ratios['smaller']:.2f}x smaller, {ratios['faster']:.2f}x faster, {self.metric} "
                f"{format_change(self.metric, v['change'])} [{_bound(self.metric, v['change_low'])}, "
                f"{_bound(self.metric, v['change_high'])}] ({self._verdict(v)})"
            )
        return f"compress: {'; '.join(parts)} -> {self.report}, {self.headline} ({self.seconds:.1f} s)"

    def _verdict(self, variant: dict) -> str:
        if variant["kept"]:
            return "kept"
        return (
            "dropped: scores depend on the batch" if variant["batch_dependence"] > self.batch_tolerance else "dropped"
        )


def _bound(metric: str, value: float | None) -> str:
    return "n/a" if value is None else format_change(metric, value).removesuffix(" points")


def compress(
    features: str | Path,
    model_dir: str | Path,
    params: CompressParams,
    train: TrainParams,
    *,
    progress: bool = True,
) -> CompressionResult:
    """Build, score and time every variant in `params.variants`; write the kept ones and the report."""
    with cpu_threads(params.threads):
        return _compress(features, model_dir, params, train, progress=progress)


@dataclass
class _Inputs:
    served: dict[str, torch.Tensor]  # what the served model gets (token ids), split codes left out
    training: dict[str, torch.Tensor]  # what fine-tuning after pruning trains on, as `train` does
    test_rows: torch.Tensor
    train_rows: torch.Tensor
    labels: np.ndarray  # of the test rows


@dataclass(frozen=True)
class _Truth:
    """What a variant is measured against: the test labels, and the metric of the spec's label kind."""

    labels: np.ndarray
    spec: ModelSpec
    metric: str


@dataclass
class _Variants:
    """The models measured (the baseline first), each one's outputs, metrics and batch dependence on the test rows,
    and when each variant's own work began (unix seconds) and how long it took (building, fine-tuning, scoring)."""

    models: dict[str, MultiTaskModel | OnnxModel]
    outputs: dict[str, dict]
    scores: dict[str, dict[str, float]]
    batch_dependence: dict[str, float]
    started: dict[str, float]
    spent: dict[str, float]


def _compress(
    features: str | Path,
    model_dir: str | Path,
    params: CompressParams,
    train: TrainParams,
    *,
    progress: bool = True,
) -> CompressionResult:
    start = time.perf_counter()
    model_dir = Path(model_dir)
    arrays, _ = load_features(features)
    baseline = load_trained(model_dir, standalone=True)
    spec = baseline.spec
    inputs = _inputs(arrays, baseline)
    head = monitored_head(spec)
    metric = params.metric or ("acc2" if spec.label.kind == "regression" else "accuracy")
    outputs = {"baseline": predict(baseline, inputs.served, inputs.test_rows, CPU)}
    scores = {"baseline": head_metrics(outputs["baseline"], inputs.labels, spec, head)}
    if metric not in scores["baseline"]:  # before any fine-tuning
        raise ConfigError(f"compress.metric {metric!r} is not one of {sorted(scores['baseline'])}")
    example = {k: v[inputs.test_rows[:4]] for k, v in inputs.served.items()}
    onnx = onnx_payloads(baseline, example, params.variants, _calibration(inputs, spec, params))
    alone = {"baseline": batch_dependence(baseline, inputs.served, inputs.test_rows, outputs["baseline"])}
    variants = _Variants({"baseline": baseline}, outputs, scores, alone, {}, dict.fromkeys(params.variants, 0.0))
    _build(variants, baseline, model_dir, inputs, onnx, params, train, progress)
    payloads = {
        n: (ONNX_WEIGHTS, onnx[n]) if n in onnx else serialize(n, model) for n, model in variants.models.items()
    }
    _score(variants, inputs, spec, head, params)
    report = _report(
        variants,
        payloads,
        timings(variants.models, inputs.served, inputs.test_rows, params),
        digest(model_dir),
        head,
        _Truth(inputs.labels, spec, metric),
        params,
    )
    card = read_card(model_dir)
    with replace_directory(params.out, marker=f"*/{CARD}") as staging:  # holds exactly this run's kept variants
        for name in params.variants:
            variant = report.variants[name]
            if variant.kept:
                write_variant(staging / name, name, spec, card, report.model_digest, payloads[name], variant)
    report.write(params.report)
    measured = report.model_dump()
    headline = {name: versus_baseline(measured["baseline"], v) for name, v in measured["variants"].items()}
    write_json(params.headline, headline, nan_as_null=True)
    return CompressionResult(
        params.report,
        params.headline,
        head,
        metric,
        measured["baseline"],
        measured["variants"],
        time.perf_counter() - start,
        params.batch_tolerance,
    )


def _inputs(arrays: dict[str, np.ndarray], baseline: MultiTaskModel) -> _Inputs:
    served = model_inputs(arrays, baseline.spec, standalone=True)
    training = model_inputs(arrays, baseline.spec)
    split = served.pop("split")
    training.pop("split")
    test_rows, train_rows = split_rows(split, "test"), split_rows(split, "train")
    if not len(test_rows):
        raise ConfigError("compress measures on the test split, which has no samples")
    return _Inputs(served, training, test_rows, train_rows, served["label"][test_rows].numpy())


def _calibration(inputs: _Inputs, spec: ModelSpec, params: CompressParams) -> Iterator[dict[str, np.ndarray]]:
    """onnx_int8's calibration feeds: the first CALIBRATION_ROWS train rows in batches cut as served (never the test
    rows its change is measured on)."""
    if "onnx_int8" in params.variants and not len(inputs.train_rows):
        raise ConfigError("onnx_int8 calibrates its scales on the train split, which has no samples")
    names = input_names(spec)
    for part in inputs.train_rows[:CALIBRATION_ROWS].split(EVAL_BATCH):
        batch = trim_padding({name: inputs.served[name][part] for name in names})
        yield {name: t.numpy() for name, t in batch.items()}


def _build(
    variants: _Variants,
    baseline: MultiTaskModel,
    model_dir: Path,
    inputs: _Inputs,
    onnx: dict[str, bytes],
    params: CompressParams,
    train: TrainParams,
    progress: bool,
) -> None:
    """Each variant of `params.variants` from the baseline: quantized, run by ONNX Runtime, or pruned and
    fine-tuned on the train split."""
    for name in params.variants:
        variants.started[name], begin = time.time(), time.perf_counter()
        if name == "int8":
            variants.models[name] = quantize_int8(baseline)
        elif name in ONNX_VARIANTS:
            variants.models[name] = OnnxModel(onnx[name], baseline.spec, threads=params.threads)
        else:
            pruned = load_trained(model_dir)
            prune_model(pruned, structured=name == "prune_structured", sparsity=params.sparsity)
            if params.finetune_epochs:
                finetune(
                    pruned,
                    inputs.training,
                    inputs.train_rows,
                    train,
                    params.finetune_epochs,
                    f"fine-tune {name}",
                    progress,
                )
            make_permanent(pruned)
            variants.models[name] = standalone_copy(baseline, pruned)
        variants.spent[name] += time.perf_counter() - begin


def _score(variants: _Variants, inputs: _Inputs, spec: ModelSpec, head: str, params: CompressParams) -> None:
    """Each variant's outputs and metrics on the test rows."""
    for name in params.variants:
        begin = time.perf_counter()
        variants.outputs[name] = predict(variants.models[name], inputs.served, inputs.test_rows, CPU)
        variants.scores[name] = head_metrics(variants.outputs[name], inputs.labels, spec, head)
        variants.batch_dependence[name] = batch_dependence(
            variants.models[name], inputs.served, inputs.test_rows, variants.outputs[name]
        )
        variants.spent[name] += time.perf_counter() - begin


def _report(
    variants: _Variants,
    payloads: dict[str, tuple[str, bytes]],
    timed: dict[str, dict[str, float]],
    source: str,
    head: str,
    truth: _Truth,
    params: CompressParams,
) -> CompressionReport:
    """Every measurement of the baseline and of each variant; a variant that may be more than `tolerance` points
    worse (the worse bound of its change), or whose rows score otherwise in other batches, is not kept."""
    metric, models, scores, base = truth.metric, variants.models, variants.scores, variants.scores["baseline"]
    measured = {name: _measurement(name, variants, payloads[name][1], timed[name]) for name in models}
    reports = {}
    for name in params.variants:
        bounds = _change_bounds(variants.outputs["baseline"][head], variants.outputs[name][head], truth, params)
        # Kept when even the worse bound loses no more than the tolerance (a NaN bound: not kept), and a row served
        # in any batch scores what it scored here.
        kept = all(drop_points(metric, 0.0, b) <= params.tolerance for b in bounds) and (
            variants.batch_dependence[name] <= params.batch_tolerance
        )
        pruning = name.startswith("prune")
        reports[name] = VariantReport(
            **measured[name],
            delta={k: v - base[k] for k, v in scores[name].items()},
            max_abs_diff=max_abs_diff(variants.outputs[name], variants.outputs["baseline"]),
            change=change(metric, base[metric], scores[name][metric]),  # signed: variant - baseline
            change_low=change(metric, 0.0, bounds[0]),
            change_high=change(metric, 0.0, bounds[1]),
            kept=kept,
            path=str(Path(params.out) / name) if kept else None,
            sparsity=_sparsity(models[name], structured=name == "prune_structured") if pruning else 0.0,
            finetune_epochs=params.finetune_epochs if pruning else 0,
            started=variants.started[name],
            seconds=variants.spent[name] + timed[name]["seconds_timed"],
        )
    return CompressionReport(
        model_digest=source,
        head=head,
        metric=metric,
        tolerance=params.tolerance,
        confidence=params.confidence,
        resamples=params.resamples,
        batch_tolerance=params.batch_tolerance,
        change_unit=change_unit(metric),  # of each variant's `change`: variant - baseline, signed
        split="test",
        baseline=Measurement(**measured["baseline"]),
        variants=reports,
    )


def _measurement(name: str, variants: _Variants, payload: bytes, timed: dict[str, float]) -> dict:
    """A model's `Measurement` fields: the size of its file as written, its parameter counts, speed and scores."""
    models = variants.models
    numbers = counts(models["baseline"] if name in ONNX_VARIANTS else models[name])  # the same weights
    return {
        "size_bytes": len(payload),
        "params": numbers["params"],
        "nonzero_params": numbers["nonzero"],
        "task_params": numbers["task_params"],
        "task_nonzero_params": numbers["task_nonzero"],
        **{k: v for k, v in timed.items() if k != "seconds_timed"},
        "batch_dependence": variants.batch_dependence[name],
        "metrics": variants.scores[name],
    }


def _change_bounds(
    baseline: tuple[np.ndarray, np.ndarray],
    variant: tuple[np.ndarray, np.ndarray],
    truth: _Truth,
    params: CompressParams,
) -> tuple[float, float]:
    """Bounds of the variant's metric minus the baseline's on the head's test rows (the baseline's presence: both
    read the same inputs), from a paired bootstrap: how far a variant may really be from the float model, which one
    measurement on a small split cannot tell."""
    (reference, present), (candidate, _) = baseline, variant
    interval = paired_bootstrap(
        truth.spec.label.kind,
        truth.metric,
        reference[present],
        candidate[present],
        truth.labels[present],
        truth.spec.label.classes,
        resamples=params.resamples,
        confidence=params.confidence,
    )
    return interval.low, interval.high


def _sparsity(model: MultiTaskModel | OnnxModel, structured: bool) -> float:
    assert isinstance(model, MultiTaskModel)  # a pruned variant is a torch model (`standalone_copy`)
    return reached_sparsity(model, structured)
