"""The served model runs the compressed variant registration chose, with the same preprocessing and bounds."""

from __future__ import annotations

import json

import pytest

from components.compression.compress import compress, served_variant
from components.compression.onnx_model import OnnxModel
from components.core.config import CompressParams, ConfigError, TrainParams
from components.core.errors import DataError
from components.data.dataset import read_dataset
from components.evaluation.metrics import regression_metrics
from components.models.store import WEIGHTS
from components.serving.package import package_model
from components.serving.predictor import Predictor
from components.serving.values import raw_frame


def report(**latencies: float | None) -> dict:
    """A compress report with these batch-1 medians; None: measured but not kept."""
    variants = {
        name: {"kept": ms is not None, "latency_ms_p50": ms if ms is not None else 0.1}
        for name, ms in latencies.items()
        if name != "baseline"
    }
    return {"baseline": {"latency_ms_p50": latencies["baseline"]}, "variants": variants}


@pytest.mark.parametrize(
    ("latencies", "setting", "expected"),
    [
        ({"baseline": 20.0, "int8": 15.0, "onnx_int8": 5.0, "onnx_fp32": 8.0}, "auto", "onnx_int8"),
        ({"baseline": 20.0, "int8": 15.0, "onnx_int8": None, "onnx_fp32": 8.0}, "auto", "onnx_fp32"),  # not kept
        ({"baseline": 4.0, "int8": 15.0}, "auto", None),  # nothing beats the uncompressed model
        ({"baseline": 20.0, "int8": 15.0, "onnx_int8": 5.0}, "baseline", None),
        ({"baseline": 20.0, "int8": 15.0, "onnx_int8": 5.0}, "int8", "int8"),
    ],
)
def test_choice(latencies, setting, expected, tmp_path):
    assert served_variant(report(**latencies), setting, tmp_path / "compression.json") == expected


def test_a_named_variant_must_have_been_kept(tmp_path):
    with pytest.raises(ConfigError, match=r"'onnx_int8'.*lost more than compress.tolerance; kept: \['int8'\]"):
        served_variant(report(baseline=20.0, int8=15.0, onnx_int8=None), "onnx_int8", tmp_path / "c.json")
    with pytest.raises(ConfigError, match="was not measured"):
        served_variant(report(baseline=20.0, int8=15.0), "onnx_fp32", tmp_path / "c.json")
    assert served_variant({}, "auto", tmp_path / "c.json") is None  # no compress report: the uncompressed model


def test_package_serves_the_onnx_variant_like_the_torch_model(trained, tmp_path):
    params = CompressParams(
        out=tmp_path / "compressed",
        report=tmp_path / "compression.json",
        headline=tmp_path / "headline.json",
        variants=("onnx_fp32",),
        latency_runs=3,
        throughput_batch=4,
        tolerance=100.0,
    )
    compress(trained.features, trained.model, params, TrainParams(batch_size=2), progress=False)
    torch_package = package_model(trained.model, trained.features, tmp_path / "torch")
    onnx_package = package_model(trained.model, trained.features, tmp_path / "onnx", variant=params.out / "onnx_fp32")
    assert not (onnx_package / WEIGHTS).exists()  # the ONNX file carries the weights
    served = Predictor(onnx_package)
    assert isinstance(served.model, OnnxModel)

    rows = raw_frame(read_dataset(trained.raw), "test", inline_images=True).drop(columns=["id", "label"])
    expected, got = Predictor(torch_package).predict(rows), served.predict(rows)
    assert got["score"].to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-4)
    assert list(got["class"]) == list(expected["class"])
    one = served.predict(rows.iloc[:1])  # one row runs over its own tokens and frames only
    assert one["score"].iloc[0] == pytest.approx(expected["score"].iloc[0], abs=1e-4)


@pytest.mark.parametrize("variant", ["onnx_fp32", "onnx_int8"])
def test_the_package_scores_the_raw_test_rows_as_compress_measured_its_variant(trained, tmp_path, variant):
    """Served as measured: what registration signs as the served model's score (compress's figure for the variant
    it serves) is what the package gives for the test split's raw rows, though serving batches rows by its own rule
    (onnx_int8's activation scales are fixed, not the batch's)."""
    params = CompressParams(
        out=tmp_path / "compressed",
        report=tmp_path / "compression.json",
        headline=tmp_path / "headline.json",
        variants=(variant,),
        latency_runs=3,
        throughput_batch=4,
        tolerance=100.0,
    )
    compress(trained.features, trained.model, params, TrainParams(batch_size=2), progress=False)
    measured = json.loads(params.report.read_text())["variants"][variant]["metrics"]
    package = package_model(trained.model, trained.features, tmp_path / "package", variant=params.out / variant)
    frame = raw_frame(read_dataset(trained.raw), "test", inline_images=True)
    scores = Predictor(package).predict(frame.drop(columns=["id", "label"]))["score"].to_numpy()
    served = regression_metrics(scores, frame["label"].to_numpy(dtype=float))
    assert served.keys() == measured.keys()
    for metric, value in served.items():
        assert value == pytest.approx(measured[metric], abs=1e-5), metric


def test_a_variant_of_another_model_is_refused(trained, tmp_path):
    variant = tmp_path / "compressed" / "onnx_fp32"
    variant.mkdir(parents=True)
    (variant / "model.json").write_text(json.dumps({"model_digest": "0" * 64, "format": "onnx"}))
    with pytest.raises(DataError, match=r"was compressed from another model.*run `msa compress`"):
        package_model(trained.model, trained.features, tmp_path / "package", variant=variant)
    assert not (tmp_path / "package").exists()
