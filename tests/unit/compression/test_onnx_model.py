"""ONNX export of the standalone model: one graph for any batch, token and frame length, equal to torch's outputs."""

from __future__ import annotations

import pytest
import torch

from components.compression.onnx_model import (
    AXIS_NAMES,
    OnnxModel,
    dynamic_axes,
    export_onnx,
    input_names,
    quantize_onnx,
)
from components.core.errors import TrainingError
from components.features.contract import load_features
from components.models.store import PADDED_AXES, load_trained, model_inputs, trim_padding

TOLERANCE = 1e-4  # float32 kernels of two runtimes, summed in other orders


@pytest.fixture
def exported(trained, tmp_path):
    model = load_trained(trained.model, standalone=True)
    tensors = model_inputs(load_features(trained.features)[0], model.spec, standalone=True)
    path = export_onnx(model, {k: v[:2] for k, v in tensors.items()}, tmp_path / "model.onnx")
    return model, tensors, path


def largest_difference(model, onnx, batch) -> float:
    with torch.inference_mode():
        expected = model(batch)
    got = onnx(batch)
    assert got.keys() == expected.keys()
    return max(float((got[h] - expected[h]).abs().max()) for h in expected)


def test_one_graph_serves_every_batch_size_and_length(exported):
    model, tensors, path = exported
    onnx = OnnxModel(path, model.spec, threads=1)
    assert onnx.inputs == input_names(model.spec) and onnx.heads == list(model.spec.heads)
    full = {k: v for k, v in tensors.items() if k in onnx.inputs}
    shortened = dict(full)  # the first rows get fewer frames than the rest of the batch
    for key in ("audio.mask", "vision.mask"):
        shortened[key] = full[key].clone()
        shortened[key][:3, 2:] = False
    for batch in (
        {k: v[:1] for k, v in full.items()},
        trim_padding({k: v[:1] for k, v in full.items()}),  # exactly one row's own tokens and frames
        trim_padding({k: v[3:8] for k, v in full.items()}),
        full,
        shortened,
        trim_padding({k: v[:3] for k, v in shortened.items()}),
    ):
        assert largest_difference(model, onnx, batch) < TOLERANCE


def test_dynamic_axes_cover_the_padded_inputs(trained):
    spec = load_trained(trained.model).spec
    assert AXIS_NAMES.keys() == PADDED_AXES.keys()
    axes = dynamic_axes(spec)
    assert axes["text.input_ids"] == {0: "batch", 1: "tokens"}
    assert axes["audio.features"] == {0: "batch", 1: "audio_frames"}
    assert axes["text.sentence_index"] == {0: "batch", 1: "sentences", 2: "sentence_tokens"}
    assert axes["image.pixels"] == {0: "batch"}  # the featurizer fixes the image size


def test_int8_quantizes_the_weights_at_fixed_scales_and_stays_close(exported, tmp_path):
    """Static int8: scales calibrated on some rows, so another row's scores do not depend on its batchmates.
    (At this tiny width the per-channel scales outweigh the bytes saved: size is the demo benchmark's to show.)"""
    import onnx

    model, tensors, path = exported
    served = {k: v for k, v in tensors.items() if k in input_names(model.spec)}
    calibration = [
        {k: v.numpy() for k, v in trim_padding({k: v[i : i + 8] for k, v in served.items()}).items()} for i in (0, 8)
    ]
    quantized = quantize_onnx(path, tmp_path / "int8.onnx", calibration)
    graph = onnx.load(quantized).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    assert {"LSTM", "GRU"} <= ops  # the recurrences stay float
    int8 = OnnxModel(quantized, model.spec)
    assert largest_difference(model, int8, served) < 1.0  # scores span [-3, 3]
    rows = trim_padding(served)
    batched = int8(rows)
    for i in range(len(rows["text.input_ids"])):
        alone = int8(trim_padding({k: v[i : i + 1] for k, v in rows.items()}))
        assert max(float((alone[h][0] - batched[h][i]).abs().max()) for h in alone) < 1e-5


def test_unreadable_file_is_one_clear_error(trained, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(TrainingError, match="no readable ONNX model") as error:
        OnnxModel(bad, load_trained(trained.model).spec)
    assert "\n" not in str(error.value)
