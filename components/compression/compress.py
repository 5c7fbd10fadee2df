"""Compress stage: int8 quantization and magnitude pruning of the trained model, each measured against it.

What is compressed and measured is the *standalone* model (`load_trained(standalone=True)`: the frozen MiniLM
carried inside, running on token ids), because that is the model that gets served. Every variant and the
uncompressed baseline are scored on the same test split and timed in the same loop, taking turns.

Variants
    int8                dynamic int8 quantization of every nn.Linear (activations quantized per batch, weights per
                        output channel) and a weight-only 8-bit word-embedding table (per row, float scale/offset).
                        LSTM/GRU layers stay float: quantized, the demo model's lstm head moved from 0.72 to 1.13.
    prune_unstructured  global L1 magnitude pruning of the weights this pipeline trained (the sub-models, fusion
                        and heads; never the pretrained transformer) at `sparsity`.
    prune_structured    L2 pruning of whole output rows / channels of every trained Linear and Conv layer at
                        `sparsity`, except the heads' output layers and single-row attention scores (removing those
                        would remove outputs, not redundancy). RNN gate rows are left alone: zeroing a row of one
                        gate matrix removes no unit.
    Pruning is followed by `finetune_epochs` of training on the train split with the masks held (on precomputed
    token states, as `train` does), then made permanent.
    onnx_fp32           the standalone model exported to ONNX (dynamic batch, token and frame axes) and run by ONNX
                        Runtime: the same weights, another runtime (components.compression.onnx_model).
    onnx_int8           onnx_fp32 with ONNX Runtime's dynamic int8 quantization of every MatMul/Gemm (the recurrences
                        stay float, as in int8). Both ONNX variants report the baseline's parameter counts.

int8 uses `torch.ao.quantization`, which PyTorch marks deprecated in favour of torchao. torchao's int8 kernels need
torch.compile on x86 CPUs: measured in eager mode on MiniLM at batch 1, its dynamic int8 took 388 ms against 18.6 ms
in fp32, weight-only int8 25 ms, and its embedding quantization made the model 4x slower, while torch.ao's eager
kernels take 14 ms. onnx_int8 is the int8 that serves; int8 stays as the torch-only one (e.g. for CUDA builds).

Timing feeds every model what the served model gets: each batch cut to its longest row (`trim_padding`).

Files: `<out>/<variant>/` for each kept variant (model.json + weights: int8 as a torch state dict read back with
`torch.load(weights_only=True)`, pruned models as safetensors, ONNX variants as `model.onnx`); `report`, every
measurement of the baseline and of each variant; `headline`, the DVC metrics `dvc exp show` compares (per variant:
how many times smaller and faster at batch 1 than the baseline, and the metric's change). A variant whose metric
is more than `tolerance` points worse is measured and reported with kept=false, and not written.

Every change here, as everywhere in this project, is the variant's value minus the uncompressed model's, signed (a
variant that loses accuracy has a negative change), in points (100 x the metric) except for mae, which is in its own
units (a worse mae has a positive change): `change_unit` in the report says which.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from components.compression.onnx_model import ONNX_WEIGHTS, OnnxModel, export_onnx, quantize_onnx
from components.core.atomic import replace_directory, write_json
from components.core.config import ONNX_VARIANTS, CompressParams, CompressVariant, ConfigError, TrainParams
from components.core.devices import cpu_threads, pick_device
from components.core.errors import TrainingError
from components.core.hashing import file_sha256
from components.evaluation.metrics import metrics_for
from components.features.contract import load_features
from components.models import MultiTaskModel
from components.models.spec import ModelSpec
from components.models.store import (
    CARD,
    INT8_WEIGHTS,
    WEIGHTS,
    ModelCard,
    digest,
    load_trained,
    model_inputs,
    monitored_head,
    predict,
    read_card,
    split_rows,
    trim_padding,
)
from components.training.train import Stepper, loss_weights

CPU = torch.device("cpu")
WARMUP = 3  # untimed single-sample passes per model before timing (allocator, lazy kernel setup); one per batch size
BLOCK = 10  # timed passes a model runs back to back before the next model's turn
LOWER_IS_BETTER = frozenset({"mae"})
TRANSFORMER = "token_states."  # prefix of the carried (pretrained) transformer's modules
DEPRECATIONS = (  # torch.ao.quantization's own, its quantized tensors', and torch.load's on reading them back
    ".*torch.ao.quantization is deprecated",
    ".*quantized tensor creation functions .* are deprecated",
    "TypedStorage is deprecated",
)


@dataclass
class CompressionResult:
    report: Path
    headline: Path
    head: str
    metric: str
    baseline: dict
    variants: dict[str, dict]
    seconds: float

    def summary(self) -> str:
        parts = []
        for name, v in self.variants.items():
            ratios = versus_baseline(self.baseline, v)
            parts.append(
                f"{name} {ratios['smaller']:.2f}x smaller, {ratios['faster']:.2f}x faster, {self.metric} "
                f"{format_change(self.metric, v['change'])} ({'kept' if v['kept'] else 'dropped'})"
            )
        return f"compress: {'; '.join(parts)} -> {self.report}, {self.headline} ({self.seconds:.1f} s)"


def versus_baseline(baseline: dict, variant: dict) -> dict[str, float]:
    """A variant's headline (short keys: they are `dvc exp show`'s column names): how many times smaller than the
    baseline and faster at batch 1 (medians), and the metric's change (variant - baseline, see `change`)."""
    return {
        "smaller": round(baseline["size_bytes"] / variant["size_bytes"], 4),
        "faster": round(baseline["latency_ms_p50"] / variant["latency_ms_p50"], 4),
        "change": round(variant["change"], 4),
    }


def change_unit(metric: str) -> str:
    """The unit of a change of `metric`: points (100 x the metric) but for mae, which is in the labels' units."""
    return "mae" if metric in LOWER_IS_BETTER else "points"


def change(metric: str, reference: float, value: float) -> float:
    """`value` - `reference`, signed, in points (100 x) except for mae (own units): the project's one convention."""
    return value - reference if metric in LOWER_IS_BETTER else 100.0 * (value - reference)


def format_change(metric: str, value: float) -> str:
    return f"{value:+.4f}" if metric in LOWER_IS_BETTER else f"{value:+.2f} points"


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
    served = model_inputs(arrays, spec, standalone=True)  # what the served model gets
    training = model_inputs(arrays, spec)  # what fine-tuning after pruning trains on, as `train` does
    split = served.pop("split")
    training.pop("split")
    test_rows, train_rows = split_rows(split, "test"), split_rows(split, "train")
    if not len(test_rows):
        raise ConfigError("compress measures on the test split, which has no samples")

    head = monitored_head(spec)
    metric = params.metric or ("acc2" if spec.label.kind == "regression" else "accuracy")
    outputs = {"baseline": predict(baseline, served, test_rows, CPU)}
    labels = served["label"][test_rows].numpy()
    scores = {"baseline": _head_metrics(outputs["baseline"], labels, spec, head)}
    if metric not in scores["baseline"]:  # before any fine-tuning
        raise ConfigError(f"compress.metric {metric!r} is not one of {sorted(scores['baseline'])}")
    models: dict[str, nn.Module] = {"baseline": baseline}
    onnx = _onnx_payloads(baseline, {k: v[test_rows[:4]] for k, v in served.items()}, params.variants)
    # Each variant's own work (build, fine-tune, score, its timed passes) and when it began: its MLflow run's span.
    started, spent = {}, dict.fromkeys(params.variants, 0.0)
    for name in params.variants:
        started[name], begin = time.time(), time.perf_counter()
        if name == "int8":
            models[name] = quantize_int8(baseline)
        elif name in ONNX_VARIANTS:
            models[name] = OnnxModel(onnx[name], spec, threads=params.threads)
        else:
            pruned = load_trained(model_dir)
            prune_model(pruned, structured=name == "prune_structured", sparsity=params.sparsity)
            if params.finetune_epochs:
                _finetune(pruned, training, train_rows, train, params.finetune_epochs, f"fine-tune {name}", progress)
            _make_permanent(pruned)
            models[name] = _standalone_copy(baseline, pruned)
        spent[name] += time.perf_counter() - begin

    payloads = {n: (ONNX_WEIGHTS, onnx[n]) if n in onnx else _serialize(n, model) for n, model in models.items()}
    for name in params.variants:
        begin = time.perf_counter()
        outputs[name] = predict(models[name], served, test_rows, CPU)
        scores[name] = _head_metrics(outputs[name], labels, spec, head)
        spent[name] += time.perf_counter() - begin
    timings = _timings(models, served, test_rows, params)

    measured = {}
    for name, model in models.items():
        counts = _counts(models["baseline"] if name in ONNX_VARIANTS else model)  # the same weights
        measured[name] = {
            "size_bytes": len(payloads[name][1]),
            "params": counts["params"],
            "nonzero_params": counts["nonzero"],
            "task_params": counts["task_params"],
            "task_nonzero_params": counts["task_nonzero"],
            **timings[name],
            "metrics": scores[name],
        }
    base = measured.pop("baseline")
    base.pop("seconds_timed")
    out = Path(params.out)
    variants = {}
    for name, m in measured.items():
        timed = m.pop("seconds_timed")
        drop = _drop_points(metric, base["metrics"][metric], m["metrics"][metric])
        kept = drop <= params.tolerance  # False for a NaN drop
        pruning = name.startswith("prune")
        variants[name] = {
            **m,
            "delta": {k: v - base["metrics"][k] for k, v in m["metrics"].items()},
            "max_abs_diff": _max_abs_diff(outputs[name], outputs["baseline"]),
            "change": change(metric, base["metrics"][metric], m["metrics"][metric]),  # signed: variant - baseline
            "kept": kept,
            "path": str(out / name) if kept else None,
            "sparsity": _sparsity(models[name], structured=name == "prune_structured") if pruning else 0.0,
            "finetune_epochs": params.finetune_epochs if pruning else 0,
            "started": started[name],  # unix seconds
            "seconds": spent[name] + timed,
        }

    card, source = read_card(model_dir), digest(model_dir)
    with replace_directory(out, marker=f"*/{CARD}") as staging:  # the directory holds exactly this run's kept variants
        for name, v in variants.items():
            if v["kept"]:
                _write_variant(staging / name, name, spec, card, source, payloads[name], v)
    report = {
        "model_digest": source,  # the model these scores are of: registration refuses a report of another
        "head": head,
        "metric": metric,
        "tolerance": params.tolerance,
        "change_unit": change_unit(metric),  # of each variant's `change`: variant - baseline, signed
        "split": "test",
        "baseline": base,
        "variants": variants,
    }
    write_json(params.report, report, nan_as_null=True)
    headline = {name: versus_baseline(base, v) for name, v in variants.items()}
    write_json(params.headline, headline, nan_as_null=True)
    return CompressionResult(params.report, params.headline, head, metric, base, variants, time.perf_counter() - start)


def served_variant(report: dict, setting: str, where: Path) -> str | None:
    """The variant a registered model serves, from compress's `report` (read from `where`): `setting` "auto" is the
    fastest at batch 1 (median) of the uncompressed model and every kept variant, "baseline" the uncompressed model;
    None stands for the uncompressed model. A named variant must have been kept."""
    variants = report.get("variants", {})
    kept = {name: v for name, v in variants.items() if v["kept"]}
    if setting == "baseline":
        return None
    if setting == "auto":
        fastest = min(kept, key=lambda name: kept[name]["latency_ms_p50"], default=None)
        baseline = report.get("baseline", {}).get("latency_ms_p50", math.inf)
        return fastest if fastest is not None and kept[fastest]["latency_ms_p50"] < baseline else None
    if setting not in kept:
        why = "was not measured" if setting not in variants else "lost more than compress.tolerance"
        raise ConfigError(
            f"register.variant {setting!r}: {where} {why}; kept: {sorted(kept) or 'none'} (or use auto, baseline)"
        )
    return setting


def load_compressed(path: str | Path, spec: ModelSpec | None = None) -> MultiTaskModel | OnnxModel:
    """A variant `compress` wrote, rebuilt from its card (or from `spec`, e.g. with the text encoder's config moved);
    weights load without unpickling arbitrary objects."""
    path = Path(path)
    try:
        card = json.loads((path / CARD).read_text())
        spec = spec or ModelSpec.model_validate(card["spec"])
        weights = path / (
            ONNX_WEIGHTS if card["format"] == "onnx" else INT8_WEIGHTS if card["format"] == "int8" else WEIGHTS
        )
        if "sha256" in card and file_sha256(weights) != card["sha256"]:
            raise TrainingError(
                f"{weights}: its bytes differ from what compress recorded (damaged or replaced): run `msa compress`"
            )
        if card["format"] == "onnx":
            return OnnxModel(path / ONNX_WEIGHTS, spec)
        model = MultiTaskModel(spec, pretrained=False, standalone=True)
        if card["format"] == "int8":
            model = quantize_int8(model)
            with _known_deprecations():
                state = torch.load(path / INT8_WEIGHTS, map_location="cpu", weights_only=True)
        else:
            state = load_safetensors((path / WEIGHTS).read_bytes())
        model.load_state_dict(state)
    except TrainingError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise TrainingError(
            f"{path}: no readable compressed model ({type(e).__name__}: {e}); run `msa compress`"
        ) from None
    return model.eval()


def quantize_int8(model: MultiTaskModel) -> MultiTaskModel:
    """A copy with int8 dynamic Linear layers and an 8-bit word-embedding table; RNNs, convolutions, norms and the
    other embeddings stay float."""
    from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig: dict = {nn.Linear: per_channel_dynamic_qconfig}
    if model.token_states is not None and model.token_states.transformer is not None:
        # The word table only (47 of MiniLM's 48 MB of embeddings): the quantized lookup needs contiguous ids, and
        # BERT's token-type ids are an expanded (strided) buffer.
        table = model.token_states.transformer.get_input_embeddings()
        qconfig |= {name: float_qparams_weight_only_qconfig for name, m in model.named_modules() if m is table}
    with _known_deprecations():
        return quantize_dynamic(model, qconfig, dtype=torch.qint8).eval()


@contextmanager
def _known_deprecations() -> Iterator[None]:
    """Silence the deprecation warnings of the quantized-tensor API chosen knowingly (see the module docstring)."""
    with warnings.catch_warnings():
        for message in DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message)
        yield


def prune_model(model: MultiTaskModel, *, structured: bool, sparsity: float) -> None:
    """Attach pruning masks (torch.nn.utils.prune) to the trained weights; `_make_permanent` folds them in."""
    targets = prune_targets(model, structured)
    if structured:
        for module, name in targets:
            prune.ln_structured(module, name, amount=sparsity, n=2, dim=0)
    else:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)


def prune_targets(model: MultiTaskModel, structured: bool) -> list[tuple[nn.Module, str]]:
    """(module, weight name) pairs pruning acts on: trained layers only, see the module docstring."""
    outputs = {id(layer[-1]) for layer in model.heads.values()}
    targets = []
    for name, module in model.named_modules():
        if name.startswith(TRANSFORMER):
            continue
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            if not structured or (id(module) not in outputs and module.weight.shape[0] > 1):
                targets.append((module, "weight"))
        elif isinstance(module, nn.RNNBase) and not structured:
            targets += [(module, w) for w in module._flat_weights_names if w.startswith("weight")]
    return targets


def _make_permanent(model: nn.Module) -> None:
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def _sparsity(model: MultiTaskModel, structured: bool) -> float:
    weights = [getattr(module, name) for module, name in prune_targets(model, structured)]
    return 1.0 - sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)


def _finetune(
    model: MultiTaskModel,
    tensors: dict[str, torch.Tensor],
    rows: torch.Tensor,
    train: TrainParams,
    epochs: int,
    label: str,
    progress: bool,
) -> None:
    """`epochs` passes over `rows` with train's loss, weights, AdamW settings and clipping; the pruning masks are
    applied in every forward pass, so pruned weights stay zero. The transformer, if carried, is not trained."""
    if not len(rows):
        raise ConfigError("compress.finetune_epochs needs samples in the train split (or set it to 0)")
    spec = model.spec
    device = pick_device(train.device)
    model.to(device).train()
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(TRANSFORMER)]
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    stepper = Stepper(model, model, optimizer, loss_weights(spec, train), train.loss, train.grad_clip)
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)  # dropout
    steps = math.ceil(len(rows) / train.batch_size)
    with tqdm(
        total=epochs * steps, desc=label, unit="step", disable=None if progress else True, dynamic_ncols=True
    ) as bar:
        for _ in range(epochs):
            for part in rows[torch.randperm(len(rows), generator=generator)].split(train.batch_size):
                batch = trim_padding({k: v[part] for k, v in tensors.items()})
                stepper.step({k: v.to(device) for k, v in batch.items()})
                bar.update()
    model.cpu().eval()


def _standalone_copy(baseline: MultiTaskModel, trained: MultiTaskModel) -> MultiTaskModel:
    """`baseline` (standalone) with the trained weights of `trained` (same spec, maybe without the transformer)."""
    model = copy.deepcopy(baseline)
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or any(not k.startswith(TRANSFORMER) for k in missing):
        raise TrainingError(f"pruned weights do not fit the standalone model: {unexpected[:3] or missing[:3]}")
    return model


def _onnx_payloads(
    baseline: MultiTaskModel, example: dict[str, torch.Tensor], names: tuple[str, ...]
) -> dict[str, bytes]:
    """The ONNX files of the ONNX variants in `names`, from one export of the baseline."""
    wanted = [n for n in names if n in ONNX_VARIANTS]
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory(prefix="msa-onnx-") as tmp:
        fp32 = export_onnx(baseline, example, Path(tmp) / "fp32.onnx")
        files = {"onnx_fp32": fp32}
        if "onnx_int8" in wanted:
            files["onnx_int8"] = quantize_onnx(fp32, Path(tmp) / "int8.onnx")
        return {n: files[n].read_bytes() for n in wanted}


def _serialize(name: str, model: nn.Module) -> tuple[str, bytes]:
    """(file name, bytes) of a torch model's weights as written to disk: their length is the variant's size."""
    state = model.state_dict()
    if name == "int8":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return INT8_WEIGHTS, buffer.getvalue()
    return WEIGHTS, save_safetensors({k: v.contiguous() for k, v in state.items()})


def variant_format(name: CompressVariant) -> str:
    """How a variant's weights are stored: int8 (torch.ao state dict), onnx, or dense (safetensors)."""
    return "onnx" if name in ONNX_VARIANTS else "int8" if name == "int8" else "dense"


def _write_variant(
    directory: Path,
    name: CompressVariant,
    spec: ModelSpec,
    card: ModelCard,
    source: str,
    payload: tuple[str, bytes],
    v: dict,
) -> None:
    directory.mkdir()
    (directory / payload[0]).write_bytes(payload[1])  # inside the staging directory: atomic as a whole
    variant_card = {
        "variant": name,
        "format": variant_format(name),
        "spec": spec.model_dump(mode="json"),
        "model_digest": source,  # the trained model it was made from: packaging refuses a stale variant
        "sha256": hashlib.sha256(payload[1]).hexdigest(),  # of the weights file: every reader checks it
        "featurizer_key": card.featurizer_key,
        "dataset": card.dataset.model_dump(),
        "sparsity": v["sparsity"],
        "finetune_epochs": v["finetune_epochs"],
        "metrics": v["metrics"],
    }
    write_json(directory / CARD, variant_card, nan_as_null=True)


def _head_metrics(outputs: dict, labels: np.ndarray, spec: ModelSpec, head: str) -> dict[str, float]:
    """The scalar metrics of `head` from `predict`'s outputs (per-class tables and confusion matrices are left to
    evaluate)."""
    prediction, present = outputs[head]
    metrics = metrics_for(spec.label.kind, prediction[present], labels[present], spec.label.classes)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def _max_abs_diff(outputs: dict, baseline: dict) -> float:
    """The largest difference from the uncompressed model's output, over every head and test sample it scores."""
    return max(float(np.abs(p - baseline[h][0])[present].max(initial=0.0)) for h, (p, present) in outputs.items())


def _drop_points(metric: str, baseline: float, value: float) -> float:
    """How much worse `value` is, in percentage points (positive = worse): what `tolerance` limits, and no more than
    that (what is reported is the signed `change`)."""
    worse = value - baseline if metric in LOWER_IS_BETTER else baseline - value
    return 100.0 * worse


def _counts(model: nn.Module) -> dict[str, int]:
    """Parameters and non-zero parameters, of the whole model and of its task part (all but the transformer)."""
    counts = dict.fromkeys(("params", "nonzero", "task_params", "task_nonzero"), 0)
    for name, tensor in _weights(model):
        n, nonzero = tensor.numel(), int(tensor.count_nonzero())
        counts["params"] += n
        counts["nonzero"] += nonzero
        if not name.startswith(TRANSFORMER):
            counts["task_params"] += n
            counts["task_nonzero"] += nonzero
    return counts


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


def _timings(
    models: dict[str, nn.Module], tensors: dict[str, torch.Tensor], rows: torch.Tensor, params: CompressParams
) -> dict[str, dict[str, float]]:
    """Latency at batch 1 (median, p95 over `latency_runs` test samples) and throughput at `throughput_batch`
    (median over a tenth as many batches, at least 3), on the CPU at `threads` threads.

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
    models: dict[str, nn.Module], inputs: list[dict[str, torch.Tensor]], warmup: int
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
