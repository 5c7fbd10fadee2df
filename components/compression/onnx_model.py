"""The standalone model in ONNX, run by ONNX Runtime: the served form on CPUs.

`export_onnx` writes the standalone model (frozen transformer inside, every head) with torch's TorchScript ONNX
exporter (`torch.export`'s gave the same graph outputs but took 10-15x longer on this model): one graph whose batch,
token, sentence-grid and frame axes are dynamic, so a request of one short text runs over exactly its own tokens.

`quantize_onnx` makes the int8 variant with ONNX Runtime's static quantization: int8 weights per channel, and int8
activations at fixed scales calibrated on train rows. Dynamic quantization (scales computed per batch) needs no
calibration, but a row's scores then depend on its batchmates: on the demo, a row scored alone moved by up to 0.19
from the same row scored in a batch, so a served row would not score what compress measured. At fixed scales it
moves by float rounding.

`OnnxModel` runs either file behind the same interface as `MultiTaskModel` (a batch dict in, head -> tensor out;
`presence`), so compression scores and times it in the same loops as the torch variants, and the served model
switches backend without another code path.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from components.core.errors import TrainingError, first_line
from components.data.dataset import SEQUENCE_MODALITIES
from components.models.multitask import MultiTaskModel, presence
from components.models.spec import ModelSpec
from components.models.store import PADDED_AXES

__all__ = [
    "AXIS_NAMES",
    "CALIBRATION_ROWS",
    "ONNX_WEIGHTS",
    "OPSET",
    "QUANTIZED",
    "OnnxModel",
    "dynamic_axes",
    "export_onnx",
    "input_names",
    "quantize_onnx",
]

ONNX_WEIGHTS = "model.onnx"
OPSET = 18
# The names of each padded input's axes after the batch, by the mask that governs them (model_store.PADDED_AXES).
AXIS_NAMES = {
    "text.attention_mask": ("tokens",),
    "text.sentence_mask": ("sentences", "sentence_tokens"),
    **{f"{m}.mask": (f"{m}_frames",) for m in SEQUENCE_MODALITIES},
}
QUANTIZED = ["MatMul", "Gemm", "Gather"]  # op types onnx_int8 quantizes (Gather: the embedding tables)
CALIBRATION_ROWS = 1024  # train rows whose activations set onnx_int8's scales (a bound on compress's time)


def dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    """Input name -> {axis: name} of the axes that vary per request: the batch, and the padded axes that
    `trim_padding` cuts to a batch's longest row (tokens, HAN's sentence grid, frames); the image size is fixed."""
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in input_names(spec)}
    for mask, padded in PADDED_AXES.items():
        for name in padded:
            if name in axes:
                axes[name] |= dict(enumerate(AXIS_NAMES[mask], start=1))
    return axes


def input_names(spec: ModelSpec) -> list[str]:
    """The standalone model's inputs (what `Predictor.features` makes), sorted: the order in which the exporter
    flattens the batch dict into the graph's inputs."""
    names = []
    if spec.text is not None:
        names += ["text.input_ids", "text.attention_mask", "text.sentence_index", "text.sentence_mask"]
    if spec.image is not None:
        names += ["image.pixels", "image.present"]
    for m in SEQUENCE_MODALITIES:
        if getattr(spec, m) is not None:
            names += [f"{m}.features", f"{m}.mask", f"{m}.present"]
    return sorted(names)


class _Heads(nn.Module):
    """The model with a tuple of head outputs (ONNX graphs return tuples, not dicts)."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model
        self.heads = list(model.spec.heads)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        outputs = self.model(batch)
        return tuple(outputs[h] for h in self.heads)


def export_onnx(model: MultiTaskModel, example: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write `model` (standalone, float32, eval mode) to `path` as ONNX; `example` is a batch of real inputs
    (`Predictor.features` or `model_inputs(standalone=True)` rows), any size."""
    path = Path(path)
    spec = model.spec
    axes = dynamic_axes(spec)
    example = _distinct_sizes({k: example[k] for k in axes}, axes)
    with warnings.catch_warnings():  # the exporter's own progress chatter and deprecations of torch internals
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Heads(model).eval(),  # a new module is in training mode, which the exporter restores after
            (example, {}),  # the trailing {} keeps the batch dict positional: a last dict would be read as kwargs
            str(path),
            input_names=list(axes),
            output_names=list(spec.heads),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def _distinct_sizes(example: dict[str, Tensor], axes: dict[str, dict[int, str]]) -> dict[str, Tensor]:
    """`example` padded so that every dynamic axis has a size of its own, equal to no fixed size: the exporters
    may treat equal sizes as one symbol (a 32-frame example would tie the frames to HAN's 32-token sentences), and
    a batch or length of 1 as a constant. Rows repeat to fill the batch; padding is masked, so no output moves."""
    fixed = {s for k, t in example.items() for axis, s in enumerate(t.shape) if axis not in axes[k]}
    taken = {0, 1, *fixed}
    sizes: dict[str, int] = {}
    for k, named in axes.items():
        for axis, name in named.items():
            if name not in sizes:
                size = example[k].shape[axis]
                while size in taken:
                    size += 1
                sizes[name] = size
                taken.add(size)
    out = {}
    for k, t in example.items():
        t = t[torch.arange(sizes["batch"]) % len(t)]
        for axis, name in axes[k].items():
            if axis and (missing := sizes[name] - t.shape[axis]) > 0:
                pad = torch.zeros((*t.shape[:axis], missing, *t.shape[axis + 1 :]), dtype=t.dtype)
                t = torch.cat((t, pad), dim=axis)
            elif axis:
                t = t.narrow(axis, 0, sizes[name])
        out[k] = t
    return out


def quantize_onnx(source: str | Path, dest: str | Path, calibration: Iterable[Mapping[str, np.ndarray]]) -> Path:
    """`source` with int8 weights (per channel) and int8 activations at scales fixed by the ranges they take over
    `calibration` (batch feeds by input name, e.g. train rows). The MatMuls of two activations (attention's query x
    key and weights x value) stay float: their ranges vary most from row to row, and quantized they moved the demo's
    scores most; the recurrences (LSTM/GRU) stay float, as in int8."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(source), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    two_activations = [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]
    # The quantizer's hint to pre-process goes to the root logger on every call: not for users.
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            Path(source),
            Path(dest),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTIZED,
            nodes_to_exclude=two_activations,
            calibrate_method=CalibrationMethod.MinMax,  # the others need every batch the same shape
        )
    finally:
        logging.disable(logging.NOTSET)
    return Path(dest)


class _Calibration:
    """An iterable of feeds as ONNX Runtime's CalibrationDataReader, which is any class with `get_next`."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self.feeds, None)
        return None if feed is None else dict(feed)


class OnnxModel(nn.Module):
    """An ONNX file of the standalone model behind `MultiTaskModel`'s interface, on ONNX Runtime's CPU provider.

    `threads` sizes ONNX Runtime's intra-op pool; None: as many as torch uses (`torch.get_num_threads()`), so one
    setting governs both runtimes of a process.
    """

    def __init__(self, model: str | Path | bytes, spec: ModelSpec, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads, options.inter_op_num_threads = threads or torch.get_num_threads(), 1
        try:
            source = model if isinstance(model, bytes) else str(model)
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for unreadable files
            where = "ONNX bytes" if isinstance(model, bytes) else model
            raise TrainingError(f"{where}: no readable ONNX model ({type(e).__name__}: {first_line(e)})") from None
        self.spec = spec
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.heads = [o.name for o in self.session.get_outputs()]

    def forward(self, batch: Mapping[str, Tensor | np.ndarray]) -> dict[str, Tensor]:
        feeds = {name: np.ascontiguousarray(_numpy(batch[name])) for name in self.inputs}
        return dict(zip(self.heads, map(torch.from_numpy, self.session.run(None, feeds)), strict=True))

    def presence(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return presence(self.spec, batch)


def _numpy(value: Tensor | np.ndarray) -> np.ndarray:
    return value.numpy() if isinstance(value, Tensor) else value
