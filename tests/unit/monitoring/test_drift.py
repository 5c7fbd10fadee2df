"""The drift tests on synthetic summaries: how often a batch drawn like the reference is called drifted (at most the
configured level, over many draws), how often a shifted one is (nearly always), and the bounded uniform sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse, stats

from components.core.config import DriftParams
from components.monitoring.drift import DriftSample, compare, write_report
from components.monitoring.reference import DriftReference, ReferenceInfo, read_reference, write_reference
from components.monitoring.summaries import Summaries

VOCABULARY = 400
LEVEL = 0.05  # large enough that its false alarms are countable in a few hundred draws
SETTINGS = DriftParams(level=LEVEL, permutations=400, min_rows=20, sample_rows=150)
ZIPF = 1 / np.arange(1, VOCABULARY + 1) ** 1.1
ZIPF /= ZIPF.sum()


def texts(rng: np.random.Generator, rows: int, topic_shift: float = 0.0) -> sparse.csr_matrix:
    """Rows of 5 to 20 word pieces from a Zipf vocabulary; `topic_shift` of them from the words its tail ranks."""
    shifted = ZIPF[::-1]
    data, indices, indptr = [], [], [0]
    for _ in range(rows):
        length = rng.integers(5, 21)
        words = np.where(
            rng.random(length) < topic_shift,
            rng.choice(VOCABULARY, length, p=shifted),
            rng.choice(VOCABULARY, length, p=ZIPF),
        )
        ids, counts = np.unique(words, return_counts=True)
        indices += ids.tolist()
        data += counts.tolist()
        indptr.append(len(indices))
    return sparse.csr_matrix((np.array(data, np.float32), indices, indptr), shape=(rows, VOCABULARY))


def summaries(rng: np.random.Generator, rows: int, **shift: float) -> tuple[Summaries, np.ndarray]:
    """Rows like a text + image + audio dataset, and their predicted scores; `shift` moves one part of them:
    text (share of words from another topic), image (channel means, in standard deviations), audio_missing (share
    of rows without audio, from 0.1), prediction (scores, in standard deviations)."""
    image = rng.normal(size=(rows, 6)).astype(np.float32)
    image[:, :3] += shift.get("image", 0.0)
    audio = rng.normal(size=(rows, 5)).astype(np.float32)
    inputs = Summaries(
        rows,
        texts(rng, rows, shift.get("text", 0.0)),
        {"image": image, "audio": audio},
        {
            "text": np.ones(rows, bool),
            "image": np.ones(rows, bool),
            "audio": rng.random(rows) > 0.1 + shift.get("audio_missing", 0.0),
        },
    )
    return inputs, rng.normal(shift.get("prediction", 0.0), 1.0, rows)


def reference(seed: int = 0, rows: int = 300) -> DriftReference:
    inputs, scores = summaries(np.random.default_rng(seed), rows)
    info = ReferenceInfo(
        rows=rows,
        held_out_rows=rows,
        vocabulary=VOCABULARY,
        label="regression",
        dataset="synthetic",
        dataset_version="1",
        seed=seed,
    )
    return DriftReference(info, inputs, scores)


def batch(seed: int, rows: int = 150, **shift: float) -> DriftSample:
    sample = DriftSample(SETTINGS.sample_rows, seed)
    sample.add(*summaries(np.random.default_rng(seed), rows, **shift))
    return sample


def test_a_batch_like_the_reference_is_called_drifted_at_most_at_the_configured_level() -> None:
    # The level holds over draws of both samples, as for any two-sample test: with one reference fixed, the share of
    # batches called drifted varies around it (the reference's own sampling error; drift.reference_rows narrows it).
    draws = 300
    reports = [compare(reference(seed), batch(seed + 5000), SETTINGS) for seed in range(draws)]
    alarms = sum(r.drifted for r in reports)
    # at most the level: fewer alarms than the level's 99.9% binomial bound over these draws
    assert alarms <= stats.binom.ppf(0.999, draws, LEVEL), f"{alarms} false alarms in {draws} draws"
    # and not by being silent: the text test's p-values spread evenly over (0, 1], as an exact test's do
    p_values = np.array([r.modalities["text"].p_value for r in reports])
    assert 0.35 < (p_values < 0.5).mean() < 0.65 and (p_values < 0.1).mean() > 0.04


@pytest.mark.parametrize(
    ("shift", "modality"),
    [
        ({"text": 0.3}, "text"),
        ({"image": 0.5}, "image"),
        ({"audio_missing": 0.2}, "audio"),
        ({"prediction": 0.5}, "prediction"),
    ],
)
def test_a_shifted_batch_is_called_drifted_in_the_modality_that_moved(shift: dict, modality: str) -> None:
    ours = reference()
    reports = [compare(ours, batch(seed, **shift), SETTINGS) for seed in range(20)]
    assert sum(r.modalities[modality].drifted for r in reports) >= 18, [r.verdict for r in reports]
    assert all(r.drifted for r in reports if r.modalities[modality].drifted)
    others = [m for m in reports[0].modalities if m != modality]
    assert sum(r.modalities[m].drifted for r in reports for m in others) <= 2


def test_permutations_must_resolve_the_level() -> None:
    # level 0.01 over five modalities: drifted below 0.002, so the text test must reach p = 0.0005
    with pytest.raises(ValueError, match=r"drift\.permutations must be at least 1999 at drift\.level 0\.01"):
        DriftParams(level=0.01, permutations=500)


def test_too_few_rows_get_no_verdict() -> None:
    report = compare(reference(), batch(3, rows=10), SETTINGS)
    assert not report.drifted and report.verdict.startswith("no verdict: 10 rows") and report.modalities == {}


def test_the_sample_is_bounded_uniform_and_repeatable() -> None:
    def stream(seed: int) -> DriftSample:
        sample = DriftSample(100, seed)
        for chunk in range(20):
            inputs = Summaries(
                500, None, {"image": np.full((500, 1), chunk, np.float32)}, {"image": np.ones(500, bool)}
            )
            sample.add(inputs, np.full(500, chunk, np.float64))
        return sample

    sample = stream(7)
    assert sample.rows == 10_000 and sample.inputs.rows == 100 and len(sample.scores) == 100
    assert np.array_equal(sample.scores, sample.inputs.stats["image"][:, 0])  # rows stay whole
    assert 7 < sample.scores.mean() < 12  # chunks 0..19 alike: the first ones are not favoured, nor the last
    assert np.array_equal(stream(7).scores, sample.scores)


def test_the_reference_round_trips_through_the_package(tmp_path: Path) -> None:
    ours = reference(rows=50)
    write_reference(tmp_path, ours)
    back = read_reference(tmp_path)
    assert back is not None and back.info == ours.info
    assert back.inputs.text is not None and ours.inputs.text is not None
    assert (back.inputs.text != ours.inputs.text).nnz == 0
    assert np.array_equal(back.inputs.present["audio"], ours.inputs.present["audio"])
    assert np.array_equal(back.scores, ours.scores)
    sample = batch(1, text=0.5)
    report = compare(back, sample, SETTINGS)
    json_path, figure = write_report(report, tmp_path / "scores.parquet", back, sample)
    assert json_path.name == "scores.parquet.drift.json" and figure.read_bytes()[:4] == b"\x89PNG"
    assert '"drifted": true' in json_path.read_text()
