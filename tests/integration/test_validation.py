"""The validate stage end to end: a real GX checkpoint over tiny datasets, one broken input per test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.core.config import ValidateParams
from components.core.errors import DataError
from components.data.dataset import (
    SAMPLES,
    ClassificationLabel,
    ImageSpec,
    Manifest,
    Modalities,
    RegressionLabel,
    SequenceArray,
    TextSpec,
)
from components.data.validation import ValidationReport, validate_dataset
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def params(tmp_path: Path) -> ValidateParams:
    return ValidateParams(report=tmp_path / "reports" / "validation.json", data_docs=tmp_path / "reports" / "docs")


def failure(report: ValidationReport, rule: str):
    """The failure whose rule name starts with `rule` (rule names may carry bounds, e.g. 'label within [-3, 3]')."""
    assert not report.success, report.summary()
    found = [f for f in report.failures if f.rule.startswith(rule)]
    assert found, f"no failed rule '{rule}' in:\n{report.summary()}"
    return found[0]


def failed_ids(report: ValidationReport, rule: str) -> set[str]:
    return {e["id"] for e in failure(report, rule).examples}


def test_valid_dataset_passes_and_writes_report_and_docs(make_dataset, params):
    report = validate_dataset(make_dataset(), params)

    assert report.success, report.summary()
    assert report.failures == []
    assert report.n_samples == 12
    assert report.evaluated >= 20
    assert report.summary().startswith(f"Validation of 'tiny' v1 passed: {report.evaluated} expectations")
    written = json.loads(params.report.read_text())
    assert written["success"] is True
    assert written["evaluated"] == report.evaluated
    rules = {e["rule"] for e in written["expectations"]}
    assert {"unique ids", "splits disjoint", "images exist and decode", "no content shared across splits"} <= rules
    assert all(e["success"] for e in written["expectations"])
    assert (params.data_docs / "index.html").is_file()
    assert report.data_docs == params.data_docs / "index.html"
    assert report.html == params.report.with_suffix(".html") and written["html"] == str(report.html)
    page = report.html.read_text(encoding="utf-8")
    assert "passed: " in page and "unique ids" in page and page.count("<tr>") == report.evaluated + 1
    assert f"report: {report.html}" in report.summary()
    assert_offline(page)


def assert_offline(page: str) -> None:
    """Nothing in the page is fetched: no external script, style sheet, image or font."""
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page


def test_the_offline_page_names_each_failed_rule_its_count_and_the_offending_ids(make_dataset, params):
    report = validate_dataset(make_dataset(_set(11, "text", "x" * 2001)), params)
    page = report.html.read_text(encoding="utf-8")
    assert "FAILED: 1 of " in page
    row = next(r for r in page.split("<tr>") if "text length within [1, 2000]" in r)
    assert "FAIL" in row and '<td class="n">1</td>' in row and "<code>s11</code>" in row
    assert_offline(page)


def test_the_offline_page_escapes_what_the_data_holds():
    from components.data.validation import render_html

    evil = "<script src='https://example.com/x.js'></script>"
    report = {
        "success": False,
        "dataset": "d<b>",
        "version": "1",
        "n_samples": 1,
        "evaluated": 1,
        "failed": 1,
        "failures": [
            {
                "rule": "text not blank",
                "column": "text",
                "unexpected_count": 1,
                "message": evil,
                "examples": [{"id": evil, "value": evil}],
            }
        ],
        "expectations": [
            {"rule": "text not blank", "expectation": "e", "column": "text", "success": False, "unexpected_count": 1}
        ],
        "data_docs": None,
    }
    page = render_html(report)
    assert "<script" not in page and "&lt;script" in page and "d&lt;b&gt;" in page
    assert_offline(page)


def test_data_docs_are_replaced_not_accumulated(make_dataset, params):
    path = make_dataset()
    validate_dataset(path, params)
    stale = params.data_docs / "validations" / "stale.html"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("from an earlier run")

    validate_dataset(path, params)

    assert not stale.exists()
    assert (params.data_docs / "index.html").is_file()
    assert not [p for p in params.data_docs.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_unreadable_samples_file_raises_data_error(make_dataset, params):
    path = make_dataset()
    (path / SAMPLES).write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"samples.parquet"):
        validate_dataset(path, params)


# ---- broken rows: each edit breaks one rule for one sample ---------------------------------------------------


def _set(row: int, column: str, value):
    def edit(samples, sequences, images):
        samples.loc[row, column] = value

    return edit


def _duplicate_id(samples, sequences, images):
    samples.loc[1, "id"] = "s00"  # both in train


def _id_in_two_splits(samples, sequences, images):
    samples.loc[9, "id"] = "s00"  # s00 is train, row 9 is valid


def _empty_split(samples, sequences, images):
    samples.loc[samples["split"] == "valid", "split"] = "train"


def _feature(modality: str, row: int, value: float):
    def edit(samples, sequences, images):
        sequences[modality].features[row, 1, 0] = value

    return edit


def _wrong_dim(samples, sequences, images):
    features = sequences["audio"].features
    sequences["audio"] = SequenceArray(np.zeros((*features.shape[:2], 5), np.float32), sequences["audio"].lengths)


def _sequence_length(samples, sequences, images):
    sequences["vision"].lengths[7] = 9  # max_len is 4


def _missing_image(samples, sequences, images):
    del images["images/s03.png"]


def _truncated_image(samples, sequences, images):
    data = png_bytes(size=64)
    images["images/s05.png"] = data[: len(data) // 2]


def _escaping_image(samples, sequences, images):
    samples.loc[6, "image"] = "../outside.png"


BROKEN = {
    "duplicate id": (_duplicate_id, "unique ids", "s00", None),
    "id in two splits": (_id_in_two_splits, "splits disjoint", "s00", "id in several splits"),
    "label out of range": (_set(4, "label", 7.5), "label within [-3, 3]", "s04", "7.5"),
    "missing label": (_set(8, "label", np.nan), "labels present", "s08", None),
    "NaN in a sequence": (
        _feature("vision", 3, np.nan),
        "sequences fit the manifest",
        "s03",
        "vision features contain NaN",
    ),
    "inf in a sequence": (
        _feature("audio", 2, np.inf),
        "sequences fit the manifest",
        "s02",
        "audio features contain inf",
    ),
    "wrong sequence shape": (_wrong_dim, "sequences fit the manifest", "s00", "[12, 4, 5]"),
    "sequence length": (_sequence_length, "sequences fit the manifest", "s07", "vision length 9 out of [0, 4]"),
    "seq_index out of range": (_set(10, "seq_index", 12), "seq_index within [0, 11]", "s10", "12"),
    "missing image": (_missing_image, "images exist and decode", "s03", "missing file images/s03.png"),
    "corrupt image": (_truncated_image, "images exist and decode", "s05", "cannot decode images/s05.png"),
    "image outside the dataset": (_escaping_image, "images exist and decode", "s06", "escapes the dataset root"),
    "empty text": (_set(2, "text", ""), "text not blank", "s02", None),
    "text too long": (_set(11, "text", "x" * 2001), "text length within [1, 2000]", "s11", None),
}


@pytest.mark.parametrize(("edit", "rule", "sample_id", "fragment"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_sample_fails_naming_rule_and_id(make_dataset, params, edit, rule, sample_id, fragment):
    report = validate_dataset(make_dataset(edit), params)

    assert sample_id in failed_ids(report, rule)
    summary = report.summary()
    line = next(line for line in summary.splitlines() if line.startswith(f"  ✗ {rule}"))
    assert sample_id in line
    if fragment:
        assert fragment in line
    assert json.loads(params.report.read_text())["success"] is False


def test_empty_split_fails_naming_it(make_dataset, params):
    report = validate_dataset(make_dataset(_empty_split), params)
    assert "missing: valid" in failure(report, "all splits present").message


def test_unknown_class_names_the_value(make_dataset, params):
    manifest = Manifest(
        name="tiny",
        label=ClassificationLabel(classes=["negative", "neutral", "positive"]),
        modalities=Modalities(text=TextSpec(), image=ImageSpec()),
    )

    def classify(samples, sequences, images):
        sequences.clear()
        samples["label"] = ["negative", "neutral", "positive"] * 4
        samples.loc[5, "label"] = "sarcastic"
        samples["seq_index"] = pd.array([None] * len(samples), dtype="Int64")

    report = validate_dataset(make_dataset(classify, manifest=manifest), params)

    assert failure(report, "label is a known class").examples == [{"id": "s05", "value": "sarcastic"}]
    assert report.failures == [failure(report, "label is a known class")]


def test_text_only_dataset_passes_and_rejects_stray_images(make_dataset, params):
    manifest = Manifest(name="tiny", label=RegressionLabel(), modalities=Modalities(text=TextSpec()))

    def text_only(samples, sequences, images):
        sequences.clear()
        samples["seq_index"] = pd.array([None] * len(samples), dtype="Int64")
        samples["image"] = None
        samples.loc[3, "image"] = "images/s03.png"

    report = validate_dataset(make_dataset(text_only, manifest=manifest), params)

    assert failed_ids(report, "no image without an image modality") == {"s03"}
    assert [f.rule for f in report.failures] == ["no image without an image modality"]


# ---- broken schema: written around write_dataset, which would enforce it -------------------------------------


def _rewrite_samples(path: Path, change) -> Path:
    samples = pd.read_parquet(path / SAMPLES)
    change(samples)
    samples.to_parquet(path / SAMPLES, index=False)
    return path


def test_missing_column_is_named_once(make_dataset, params):
    path = _rewrite_samples(make_dataset(), lambda s: s.pop("label"))
    report = validate_dataset(path, params)

    assert "missing column(s): label" in failure(report, "required columns present").message
    assert [f.rule for f in report.failures] == ["required columns present"]  # no confusing follow-up errors


def test_wrong_label_dtype_fails_clearly(make_dataset, params):
    def as_strings(samples):
        samples["label"] = samples["label"].astype(str)

    report = validate_dataset(_rewrite_samples(make_dataset(), as_strings), params)

    broken = failure(report, "label is a float")
    assert broken.unexpected_count == 12
    assert broken.examples[0]["id"] == "s00"
    assert all(not f.message.startswith("could not be evaluated") for f in report.failures)


# ---- leakage ---------------------------------------------------------------------------------------------------


def _leak_train_into_test(samples, sequences, images):
    """Sample s11 (test) becomes s00 (train) under another id: same text (up to case and spaces), image, sequences."""
    samples.loc[11, "text"] = "  SAMPLE number 0   was bad "
    images["images/s11.png"] = images["images/s00.png"]
    for array in sequences.values():
        array.features[11] = array.features[0]
        array.lengths[11] = array.lengths[0]


def test_leakage_across_splits_fails(make_dataset, params):
    report = validate_dataset(make_dataset(_leak_train_into_test), params)

    leak = failure(report, "no content shared across splits")
    assert {e["id"] for e in leak.examples} == {"s00", "s11"}
    assert "same content in several splits (leakage)" in leak.message
    assert [f.rule for f in report.failures] == ["no content shared across splits"]


def test_leakage_tolerance_lets_a_few_repeats_pass(make_dataset, params):
    tolerant = params.model_copy(update={"leakage_tolerance": 0.2})  # 2 of 12 rows share content
    report = validate_dataset(make_dataset(_leak_train_into_test), tolerant)

    assert report.success, report.summary()
    assert "2 rows within tolerance" in report.summary()


def test_clips_are_checked_present_inside_decodable_and_within_bounds(params, tmp_path):
    """Each broken clip fails the clip rule naming its sample and what is wrong; a good media dataset passes."""
    import shutil

    from components.data.demo import generate_demo

    good = generate_demo(tmp_path / "good", size=30, seed=1, media=True)
    assert validate_dataset(good, params).success
    raw = Path(shutil.copytree(good, tmp_path / "raw"))
    samples = pd.read_parquet(raw / SAMPLES)
    (raw / "video" / "demo-00001.mp4").write_bytes((raw / "video" / "demo-00001.mp4").read_bytes()[:500])
    (raw / "audio" / "demo-00002.wav").write_bytes(b"RIFF....WAVEnot really")
    (raw / "audio" / "demo-00003.wav").unlink()
    samples.loc[4, "audio"] = "../../outside.wav"
    samples.loc[5, "video"] = None  # vision from clips, not allowed missing
    samples.loc[6, "audio"] = "audio/demo-00006.mp3"
    samples.to_parquet(raw / SAMPLES)
    manifest = (raw / "manifest.yaml").read_text()
    (raw / "manifest.yaml").write_text(manifest + "clip_bounds:\n  max_seconds: 1.5\n")

    report = validate_dataset(raw, params.model_copy(update={"examples": 50}))
    found = failure(report, "clips exist and decode")
    reasons = {example["id"]: example["value"] for example in found.examples}
    assert "video/demo-00001.mp4: " in reasons["demo-00001"]
    assert "audio/demo-00002.wav: " in reasons["demo-00002"]
    assert "missing file audio/demo-00003.wav" in reasons["demo-00003"]
    assert "path escapes the dataset root: ../../outside.wav" in reasons["demo-00004"]
    assert "no video clip for vision" in reasons["demo-00005"]
    assert "not a .wav or .flac file: audio/demo-00006.mp3" in reasons["demo-00006"]
    too_long = [i for i, value in reasons.items() if "more than the 1.5 s allowed" in value]
    assert too_long and found.unexpected_count == len(reasons)
