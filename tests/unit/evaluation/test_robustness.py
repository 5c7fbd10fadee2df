"""The robustness stage on the tiny trained model, its report's consumers (MLflow metric names, the model card, the
registration gate), and its settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.core.config import ConfigError, Params, RobustnessGate, RobustnessParams, load_params
from components.core.errors import DataError
from components.evaluation.heads import evaluate_split
from components.evaluation.logged import robustness_metrics
from components.evaluation.reports import RobustnessReport
from components.evaluation.robustness import HEADS, robustness
from components.registry.register import _robustness_section, robustness_gate
from components.serving.package import Evidence

SETTINGS = {
    "text_word_deletion": (0.5, 1.0),
    "text_sentence_shuffle": (1.0,),
    "image_occlusion": (0.5,),
    "audio_frame_drop": (0.5,),
    "vision_noise": (1.0,),
    "missing_text": (1.0,),
    "missing_image": (1.0,),
}


def _params(tmp_path, **overrides) -> RobustnessParams:
    return RobustnessParams(
        report=tmp_path / "robustness.json",
        plots=tmp_path / "plots",
        figure=tmp_path / "robustness.png",
        perturbations=SETTINGS,
        device="cpu",
        **overrides,
    )


def test_every_head_under_every_setting_deterministically(trained, tmp_path) -> None:
    params = _params(tmp_path)
    result = robustness(trained.raw, trained.features, trained.model, params, progress=False)
    report = json.loads(params.report.read_text())
    first = params.report.read_bytes()

    # Clean is what evaluate measures on the same split.
    test = evaluate_split(trained.features, trained.model, "test")
    assert report["clean"]["fusion"]["acc2"] == pytest.approx(test["fusion"]["acc2"])
    assert report["clean"]["lstm"]["mae"] == pytest.approx(test["lstm"]["mae"])
    assert report["metric"] == result.metric == "acc2" and report["samples"] == 3
    assert list(report["perturbations"]) == list(SETTINGS)
    for name, severities in SETTINGS.items():
        assert list(report["perturbations"][name]["severities"]) == [f"{s:g}" for s in severities]

    # Without its text, no text head can be scored; fusion still is, from the other modalities.
    no_text = report["perturbations"]["missing_text"]["severities"]["1"]
    assert not {"lstm", "textcnn", "han"} & set(no_text)
    assert no_text["fusion"]["samples"] == 3 and no_text["image"] == report["clean"]["image"]
    # A perturbation of one modality leaves the other modalities' heads exactly as they were.
    occluded = report["perturbations"]["image_occlusion"]["severities"]["0.5"]
    assert occluded["audio"] == report["clean"]["audio"] and occluded["lstm"] == report["clean"]["lstm"]
    # Deleting every word changes what the text heads see.
    deleted = report["perturbations"]["text_word_deletion"]["severities"]["1"]
    assert deleted["lstm"]["mae"] != report["clean"]["lstm"]["mae"]

    # Plot data: a row per severity, clean first, a column for every head name (points; this model has them all).
    with (params.plots / "text_word_deletion.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["severity"] for r in rows] == ["0", "0.5", "1"]
    assert list(rows[0]) == ["severity", *HEADS]
    assert float(rows[0]["fusion"]) == pytest.approx(100 * report["clean"]["fusion"]["acc2"], abs=1e-3)
    assert sorted(p.name for p in params.plots.iterdir()) == sorted(f"{n}.csv" for n in SETTINGS)
    with (params.plots / "missing_text.csv").open() as f:
        assert list(csv.DictReader(f))[1]["lstm"] == ""  # not scored: empty, not zero
    assert params.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert RobustnessReport.read(params.report) == result.scores and result.scores.model_dump() == report
    robustness(trained.raw, trained.features, trained.model, params, progress=False)
    assert params.report.read_bytes() == first  # seeded: the same perturbations, the same scores


def test_perturbations_of_an_absent_modality_are_skipped_and_said(trained, tmp_path) -> None:
    from dataclasses import replace

    from components.core.config import ModelParams, TrainParams
    from components.training.train import train

    text_image = train(
        trained.features,
        ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0}),
        TrainParams(out=tmp_path / "text-image", modalities=("text", "image"), epochs=1, batch_size=4),
        progress=False,
    )
    trained = replace(trained, model=text_image.out)
    params = _params(tmp_path)
    result = robustness(trained.raw, trained.features, trained.model, params, progress=False)
    assert "audio_frame_drop" not in result.scores.perturbations
    assert "audio_frame_drop: the model has no audio" in result.scores.skipped
    assert "audio_frame_drop: the model has no audio" in result.summary()


def test_an_unknown_or_lower_is_better_metric_and_a_foreign_plots_directory_are_refused(trained, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"robustness.metric 'acc9'"):
        robustness(trained.raw, trained.features, trained.model, _params(tmp_path, metric="acc9"), progress=False)
    with pytest.raises(ConfigError, match=r"robustness.metric 'mae': robustness is reported as points lost"):
        robustness(trained.raw, trained.features, trained.model, _params(tmp_path, metric="mae"), progress=False)
    params = _params(tmp_path)
    params.plots.mkdir()
    (params.plots / "train_ids.csv").write_text("id\ns00\n")
    with pytest.raises(ConfigError, match=r"holds files this stage did not write \(train_ids.csv\)"):
        robustness(trained.raw, trained.features, trained.model, params, progress=False)
    assert (params.plots / "train_ids.csv").read_text() == "id\ns00\n" and not params.report.exists()


# --- consumers of the report ------------------------------------------------------------------------------------------

REPORT = {
    "split": "test",
    "metric": "acc2",
    "head": "fusion",
    "seed": 0,
    "samples": 3,
    "clean": {"fusion": {"acc2": 0.9, "mae": 0.5}, "lstm": {"acc2": 0.8, "mae": 0.6}},
    "perturbations": {
        "missing_text": {
            "modality": "text",
            "severities": {"0.5": {"fusion": {"acc2": 0.85, "mae": 0.55}}, "1": {"fusion": {"acc2": 0.7, "mae": 0.8}}},
        }
    },
    "skipped": ["image_blur: the model has no image"],
}
TYPED = RobustnessReport.model_validate(REPORT)


def test_a_report_of_another_shape_is_a_data_error_naming_it(tmp_path) -> None:
    path = tmp_path / "robustness.json"
    path.write_text(json.dumps({key: value for key, value in REPORT.items() if key != "clean"}))
    with pytest.raises(DataError, match=f"^{path}: does not fit RobustnessReport: clean: Field required"):
        RobustnessReport.read(path)


def test_mlflow_metric_names_hold_perturbation_severity_and_metric() -> None:
    assert robustness_metrics(TYPED, "fusion", "regression") == {
        "robust_missing_text_0.5_acc2": 0.85,
        "robust_missing_text_0.5_mae": 0.55,
        "robust_missing_text_1_acc2": 0.7,
        "robust_missing_text_1_mae": 0.8,
    }
    assert robustness_metrics(TYPED, "lstm", "regression") == {}  # never scored under it: nothing logged


def test_the_model_card_has_a_row_per_perturbation() -> None:
    lines = _robustness_section(REPORT, "fusion")
    assert lines[0] == "## Robustness (test split, acc2 of `fusion` in points, clean 90.0)"
    assert "| missing_text | 0.5: 85.0, 1: 70.0 | -20.0 |" in lines  # perturbed - clean at the middle severity (1)
    assert "| perturbation | severities: score | change (points) |" in lines
    assert "- skipped: image_blur: the model has no image" in lines


def test_the_run_log_signs_a_change_as_the_model_card_does() -> None:
    """perturbed - clean, in points: negative for a loss, in the log line as in the card's table."""
    from components.evaluation.robustness import RobustnessResult

    result = RobustnessResult(Path("r.json"), Path("p"), Path("f.png"), "test", "acc2", "fusion", TYPED)
    assert "clean 90.0; lowest at middle severity: missing_text 1 70.0 (-20.0 points);" in result.summary()
    assert "| missing_text | 0.5: 85.0, 1: 70.0 | -20.0 |" in _robustness_section(REPORT, "fusion")


CHAMPION = SimpleNamespace(version="3", tags={"msa.robustness": "an edited tag: never read"})


def evidence(robust: dict[str, float], measured_on: str = "test:abc:seed0") -> Evidence:
    """What the champion's verified package records of its robustness."""
    return Evidence(
        run_id="r3",
        metric="test fusion mae",
        score=0.5,
        test_split="abc",
        variant="baseline",
        dataset="d",
        dataset_version="1",
        data_hash="d",
        params_hash="p",
        code_hash="c",
        robustness=measured_on,
        robust=robust,
    )


@pytest.mark.parametrize(
    ("champion_score", "holds", "says"),
    [
        (
            0.71,
            True,
            "; under missing_text 1 its acc2 70.0, change -1.0 points against champion v3's 71.0 "
            "(register.robustness allows down to -2.0)",
        ),
        (
            0.73,
            False,
            "; but under missing_text 1 its acc2 70.0, change -3.0 points against champion v3's 73.0 "
            "(register.robustness allows down to -2.0)",
        ),
        (0.65, True, "change +5.0 points against champion v3's 65.0"),  # a gain is positive
    ],
)
def test_the_gate_bounds_the_loss_under_a_named_perturbation(champion_score, holds, says) -> None:
    condition = RobustnessGate(perturbation="missing_text", severity=1.0, max_drop=2.0)
    signed = evidence({"robust_missing_text_1_acc2": champion_score})
    ok, why = robustness_gate(condition, REPORT, "fusion", "test:abc:seed0", CHAMPION, signed)
    assert ok is holds and says in why


def test_the_gate_condition_needs_a_comparable_champion_and_a_scored_setting() -> None:
    condition = RobustnessGate(perturbation="missing_text", severity=1.0, max_drop=2.0)
    metrics = evidence({"robust_missing_text_1_acc2": 0.99})
    assert robustness_gate(condition, REPORT, "fusion", "t", None, None) == (True, "")  # the first model
    ok, why = robustness_gate(condition, REPORT, "fusion", "test:other:seed0", CHAMPION, metrics)
    assert ok and "not applied: champion v3 has no missing_text 1 score on test:other:seed0" in why
    ok, why = robustness_gate(condition, REPORT, "fusion", "test:abc:seed0", CHAMPION, None)  # failed verification
    assert ok and "not applied: champion v3 has no missing_text 1 score" in why
    unscored = RobustnessGate(perturbation="missing_text", severity=0.25, max_drop=2.0)
    with pytest.raises(Exception, match=r"asks for missing_text 0.25, which the robustness report has no"):
        robustness_gate(unscored, REPORT, "fusion", "t", CHAMPION, metrics)


def test_settings_are_checked() -> None:
    assert load_params().robustness.perturbations["text_typos"] == (0.1, 0.3, 0.5)
    with pytest.raises(ValueError, match="severities must be distinct numbers in"):
        RobustnessParams(perturbations={"image_blur": (0.0, 0.5)})
    with pytest.raises(ValueError, match=r"robustness.plots and evaluate.plots must be separate"):
        Params.model_validate({"robustness": {"plots": "metrics/plots/robustness"}})
    assert RobustnessParams(perturbations={"image_blur": (0.5, 0.1)}).perturbations["image_blur"] == (0.1, 0.5)
    with pytest.raises(ValueError, match="severities must be distinct"):  # the same key in the report and MLflow
        RobustnessParams(perturbations={"image_blur": (0.1234561, 0.1234564)})
    gate = {"perturbation": "missing_audio", "severity": 0.3, "max_drop": 1.0}
    with pytest.raises(ValueError, match=r"asks for missing_audio at 0.3, which robustness.perturbations does not"):
        Params.model_validate({"register": {"robustness": gate}})


REPO = Path(__file__).resolve().parents[3]
SINGLE = {"text": ("lstm", "textcnn", "han"), "image": ("image",), "audio": ("audio",), "vision": ("vision",)}


@pytest.mark.parametrize("modality", SINGLE)
def test_on_the_demo_the_fused_head_without_a_modality_beats_every_head_left(modality) -> None:
    """The committed demo results (metrics/robustness/, written with dvc.lock by one `dvc repro`): with every
    test sample's `modality` removed, fusion still scores above the best single head of the modalities left."""
    with (REPO / "metrics" / "robustness" / f"missing_{modality}.csv").open() as f:
        rows = {row["severity"]: row for row in csv.DictReader(f)}
    without = rows["1"]
    assert all(without[head] == "" for head in SINGLE[modality])  # nothing left to score those heads on
    left = [float(without[h]) for m, heads in SINGLE.items() if m != modality for h in heads]
    assert float(without["fusion"]) > max(left) + 5, without
