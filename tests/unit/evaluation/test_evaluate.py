"""Evaluate stage on tiny trained models: the report against hand-computed values, its headline, plot files, error
cases."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from components.core.config import EvaluateParams, FeaturizeParams, ModelParams, TrainParams
from components.core.errors import DataError, TrainingError
from components.data.dataset import (
    SPLITS,
    ImageSpec,
    Manifest,
    Modalities,
    RegressionLabel,
    SequenceSpec,
    TextSpec,
)
from components.evaluation.evaluate import evaluate
from components.evaluation.reports import EvaluationReport, SeedSummary
from components.features.contract import load_features
from components.features.featurize import featurize
from components.models.store import CARD, HISTORY, digest, load_trained, predict
from components.training.train import train
from flows.cli import app
from tests.conftest import TWO_CLASS_MANIFEST, two_classes

HEADS = ["lstm", "textcnn", "han", "image", "audio", "vision", "fusion"]
QUIET = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})
PNG = b"\x89PNG\r\n\x1a\n"


def settings(tmp_path: Path, **changes) -> EvaluateParams:
    return EvaluateParams(
        headline=tmp_path / "metrics" / "evaluate.json",
        report=tmp_path / "reports" / "evaluation.json",
        seeds=tmp_path / "reports" / "seeds.json",
        plots=tmp_path / "metrics" / "plots",
        figures=tmp_path / "reports" / "figures",
        **changes,
    )


def train_on(raw: Path, text_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Featurize and train `raw` like the `trained` fixture (2 epochs); return (features, model) directories."""
    settings = FeaturizeParams(out=tmp_path / f"{raw.name}-features", text_model=str(text_model), image_size=8)
    features = featurize(raw, settings, progress=False).out
    params = TrainParams(out=tmp_path / f"{raw.name}-models", epochs=2, batch_size=2, patience=10)
    return features, train(features, QUIET, params, progress=False).out


def numbers_only(value) -> bool:
    if isinstance(value, dict):
        return all(numbers_only(v) for v in value.values())
    return value is None or isinstance(value, int | float)


def test_report_matches_metrics_computed_by_hand(trained, tmp_path):
    params = settings(tmp_path)
    for directory, marker in ((params.plots, "history.csv"), (params.figures, "training_curves.png")):
        directory.mkdir(parents=True)
        (directory / marker).write_text("an earlier run's plots: ours to replace\n")
        (directory / "stale.csv").write_text("from an earlier run\n")
    result = evaluate(trained.features, trained.model, params, progress=False)

    metrics = json.loads(params.report.read_text())
    assert EvaluationReport.read(params.report) == result.scores and result.scores.model_dump() == metrics
    assert SeedSummary.read(params.seeds).model_dump() == result.seeds == json.loads(params.seeds.read_text())
    assert metrics.pop("model_digest") == digest(trained.model)  # the report names the model it scored
    assert list(metrics) == ["valid", "test"] and result.metrics == metrics
    assert all(list(metrics[split]) == HEADS for split in metrics)
    assert numbers_only(metrics)
    assert set(metrics["test"]["fusion"]) == {
        "acc2_has0",
        "f1_has0",
        "acc2",
        "f1",
        "acc5",
        "acc7",
        "mae",
        "corr",
        "samples",
    }

    # The fusion head's test predictions, scored with numpy.
    arrays, _ = load_features(trained.features)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    rows = torch.nonzero(tensors.pop("split") == SPLITS.index("test")).flatten()
    scores, present = predict(load_trained(trained.model), tensors, rows, torch.device("cpu"))["fusion"]
    pred, label = scores[present].reshape(-1), arrays["label"][rows.numpy()][present]
    fusion = metrics["test"]["fusion"]
    assert fusion["samples"] == len(label) == 3
    assert fusion["mae"] == pytest.approx(np.abs(pred - label).mean())
    assert fusion["acc2_has0"] == pytest.approx(np.mean((pred >= 0) == (label >= 0)))
    assert fusion["acc7"] == pytest.approx(np.mean(np.round(np.clip(pred, -3, 3)) == np.round(label)))

    # Plot data: per-sample predictions and Acc-7 classes of the test split, history per epoch.
    plots = params.plots
    assert not (plots / "stale.csv").exists() and not (params.figures / "stale.csv").exists()  # replaced, not added to
    predictions = pd.read_csv(plots / "predictions" / "test_fusion.csv")
    assert list(predictions.columns) == ["id", "label", "prediction"]
    np.testing.assert_allclose(predictions["prediction"], pred, rtol=1e-6)
    confusion = json.loads((plots / "confusion" / "test_fusion.json").read_text())
    assert [c["id"] for c in confusion] == list(predictions["id"])
    assert np.mean([c["actual"] == c["predicted"] for c in confusion]) == pytest.approx(fusion["acc7"])
    history = pd.read_csv(plots / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert history.columns[-1] == "valid_mae_fusion" and "train_loss_lstm" in history.columns
    for name in ("scatter_test.png", "confusion_test.png", "training_curves.png"):
        assert (params.figures / name).read_bytes().startswith(PNG)
    assert sorted(p.name for p in (plots / "predictions").iterdir()) == sorted(f"test_{h}.csv" for h in HEADS)

    summary = result.summary()
    assert summary.startswith("evaluate: test mae (lower is better): lstm ")
    assert f"fusion {fusion['mae']:.4f}" in summary and str(params.report) in summary and str(plots) in summary


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "missing or unreadable (FileNotFoundError)"),
        ("{not json", "not JSON (JSONDecodeError)"),
        ('{"model_digest": "d", "test": {"fusion": 0.5}}', "does not fit EvaluationReport: test.fusion: "),
    ],
    ids=["missing", "not-json", "bad-shape"],
)
def test_a_bad_report_is_a_data_error_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "evaluation.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError, match=f"^{path}: {re.escape(problem)}"):
        EvaluationReport.read(path)


def test_the_headline_is_the_reports_key_numbers_under_the_same_keys(trained, tmp_path):
    params = settings(tmp_path)
    evaluate(trained.features, trained.model, params, progress=False)
    report, headline = (json.loads(path.read_text()) for path in (params.report, params.headline))

    assert headline["valid"] == {"fusion": {k: round(report["valid"]["fusion"][k], 4) for k in ("acc2", "mae")}}
    test = headline["test"]
    assert list(test) == ["fusion", *HEADS[:-1]]  # the monitored head first, then every other head's MAE
    assert list(test["fusion"]) == ["acc2", "f1", "acc7", "mae", "corr"]
    assert all(list(test[head]) == ["mae"] for head in HEADS[:-1])
    for head, values in test.items():
        assert values == {k: round(report["test"][head][k], 4) for k in values}
    assert sum(len(values) for heads in headline.values() for values in heads.values()) == 5 + 2 + 6


def test_undefined_metrics_are_null_and_a_head_without_samples_is_skipped(make_dataset, tiny_text_model, tmp_path):
    def zero_test_labels_no_test_images(samples, sequences, images):
        test = samples["split"] == "test"
        samples.loc[test, "label"] = 0.0  # acc2 and f1 count only non-zero labels: undefined
        for path in samples.loc[test, "image"]:
            del images[path]
        samples.loc[test, "image"] = None

    seq = SequenceSpec(dim=3, max_len=4)
    manifest = Manifest(
        name="zeros",
        label=RegressionLabel(min=-3, max=3),
        modalities=Modalities(text=TextSpec(), image=ImageSpec(allow_missing=True), audio=seq, vision=seq),
    )
    raw = make_dataset(zero_test_labels_no_test_images, name="zeros", manifest=manifest)
    features, model = train_on(raw, tiny_text_model, tmp_path)
    params = settings(tmp_path)
    result = evaluate(features, model, params, progress=False)

    text = params.report.read_text()
    assert "NaN" not in text and "NaN" not in params.headline.read_text()
    metrics = json.loads(text)
    assert metrics["test"]["fusion"]["acc2"] is None and metrics["test"]["fusion"]["f1"] is None
    assert json.loads(params.headline.read_text())["test"]["fusion"]["acc2"] is None
    assert isinstance(metrics["test"]["fusion"]["acc2_has0"], float)  # over all samples: still defined
    assert "image" in metrics["valid"] and "image" not in metrics["test"]
    assert result.notes == ["image skipped on test: no sample has its modality"]
    assert "image skipped on test" in result.summary()
    assert not (params.plots / "predictions" / "test_image.csv").exists()


def test_classification_labels_get_per_class_metrics_and_named_confusion(make_dataset, tiny_text_model, tmp_path):
    dataset = make_dataset(two_classes, name="cls", manifest=TWO_CLASS_MANIFEST)
    features, model = train_on(dataset, tiny_text_model, tmp_path)
    params = settings(tmp_path)
    result = evaluate(features, model, params, progress=False)

    metrics = json.loads(params.report.read_text())
    assert metrics.pop("model_digest") == digest(model)
    assert numbers_only(metrics) and "confusion_matrix" not in metrics["test"]["fusion"]
    headline = json.loads(params.headline.read_text())
    assert list(headline["test"]["fusion"]) == ["accuracy", "f1_weighted", "f1_macro"]
    assert headline["test"]["lstm"] == {"f1_weighted": round(metrics["test"]["lstm"]["f1_weighted"], 4)}
    per_class = metrics["test"]["fusion"]["per_class"]
    assert list(per_class) == ["neg", "pos"]
    # Precision and recall recomputed from the per-sample confusion data.
    confusion = json.loads((params.plots / "confusion" / "test_fusion.json").read_text())
    for name in ("neg", "pos"):
        hits = sum(c["actual"] == c["predicted"] == name for c in confusion)
        actual = sum(c["actual"] == name for c in confusion)
        predicted = sum(c["predicted"] == name for c in confusion)
        assert per_class[name]["support"] == actual
        assert per_class[name]["recall"] == pytest.approx(hits / actual if actual else 0.0)
        assert per_class[name]["precision"] == pytest.approx(hits / predicted if predicted else 0.0)
    assert {c["actual"] for c in confusion} <= {"neg", "pos"} and len(confusion) == 3
    images = sorted(p.name for p in params.figures.iterdir())
    assert images == ["confusion_test.png", "training_curves.png"]  # no predicted-vs-true scatter for classes
    assert result.summary().startswith("evaluate: test f1_weighted (higher is better): ")


def test_a_split_without_samples_is_an_error_naming_features_and_split(make_dataset, tiny_text_model, tmp_path):
    def no_test(samples, sequences, images):
        samples.loc[samples["split"] == "test", "split"] = "train"

    features, model = train_on(make_dataset(no_test, name="notest"), tiny_text_model, tmp_path)
    with pytest.raises(DataError, match=r"notest-features/features\.safetensors: split 'test' has no samples"):
        evaluate(features, model, settings(tmp_path), progress=False)
    # Without test, valid is scored and plotted.
    result = evaluate(features, model, settings(tmp_path, splits=("valid",)), progress=False)
    assert result.split == "valid" and list(result.metrics) == ["valid"]
    assert (tmp_path / "reports" / "figures" / "scatter_valid.png").is_file()
    assert list(json.loads((tmp_path / "metrics" / "evaluate.json").read_text())) == ["valid"]


def test_missing_or_mismatched_model_is_a_clear_error(trained, tmp_path):
    with pytest.raises(TrainingError, match=r"nothing/model\.json: no readable model card"):
        evaluate(trained.features, tmp_path / "nothing", settings(tmp_path), progress=False)

    broken = shutil.copytree(trained.model, tmp_path / "broken")
    (broken / HISTORY).write_text("{not json")
    with pytest.raises(TrainingError, match=r"broken/history\.json: no readable training history"):
        evaluate(trained.features, broken, settings(tmp_path), progress=False)

    other = shutil.copytree(trained.model, tmp_path / "other")
    card = json.loads((other / CARD).read_text())
    (other / CARD).write_text(json.dumps({**card, "featurizer_key": "0" * 64}))
    with pytest.raises(TrainingError, match="trained on other features"):
        evaluate(trained.features, other, settings(tmp_path), progress=False)
    assert not (tmp_path / "reports").exists() and not (tmp_path / "metrics").exists()  # nothing written on failure


def test_cli_prints_the_summary_and_reports_errors_in_one_line(trained, tmp_path):
    params = {
        "featurize": {"out": str(trained.features)},
        "train": {"out": str(trained.model)},
        "evaluate": settings(tmp_path).model_dump(mode="json"),
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["evaluate", "--params", str(path)])
    assert result.exit_code == 0, result.output
    assert "evaluate: test mae (lower is better)" in result.output

    params["train"]["out"] = str(tmp_path / "nothing")
    path.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["evaluate", "--params", str(path)])
    assert result.exit_code == 1 and "error:" in result.output and "no readable model card" in result.output
