"""The paired bootstrap (components.evaluation.bootstrap): what it says of identical, slightly and clearly different
predictions, and how it behaves at its edges."""

from __future__ import annotations

import numpy as np
import pytest

from components.evaluation.bootstrap import paired_bootstrap


def labelled(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.uniform(-3, 3, n)
    return labels + rng.normal(0, 1, n), labels  # a model right about 3 times in 4


def test_identical_predictions_differ_by_exactly_nothing():
    prediction, labels = labelled()
    interval = paired_bootstrap("regression", "acc2", prediction, prediction.copy(), labels)
    assert (interval.low, interval.high) == (0.0, 0.0)


def test_a_few_flipped_rows_give_an_interval_around_the_change_that_covers_zero_when_they_cancel():
    prediction, labels = labelled()
    flipped = prediction.copy()
    right = np.flatnonzero(np.sign(prediction) == np.sign(labels))[:2]
    wrong = np.flatnonzero(np.sign(prediction) != np.sign(labels))[:2]
    flipped[right] *= -1  # two rows lost, two won: the same acc2 on these rows
    flipped[wrong] *= -1
    interval = paired_bootstrap("regression", "acc2", prediction, flipped, labels, seed=1)
    assert interval.low < 0 < interval.high
    assert interval.high - interval.low < 0.06, "paired: only the four rows that differ move the difference"


def test_a_clearly_worse_candidate_has_both_bounds_below_zero_and_more_confidence_widens():
    prediction, labels = labelled()
    worse = prediction.copy()
    worse[np.flatnonzero(np.sign(prediction) == np.sign(labels))[:15]] *= -1  # 15 of 120 rows now wrong
    narrow = paired_bootstrap("regression", "acc2", prediction, worse, labels, confidence=0.8)
    wide = paired_bootstrap("regression", "acc2", prediction, worse, labels, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high < 0
    assert narrow.low < -15 / 120 < narrow.high + 0.02  # around the measured change (on the non-zero labels)


def test_seeded_and_works_for_mae_and_classification():
    prediction, labels = labelled()
    shifted = prediction + 0.1
    a = paired_bootstrap("regression", "mae", prediction, shifted, labels, seed=3)
    assert a == paired_bootstrap("regression", "mae", prediction, shifted, labels, seed=3)
    classes = ("negative", "neutral", "positive")
    logits = np.random.default_rng(0).normal(size=(60, 3))
    truth = logits.argmax(1)
    c = paired_bootstrap("classification", "accuracy", logits, logits[::-1].copy(), truth, classes)
    assert c.high < 0  # the reversed logits are right only where they happen to agree


def test_undefined_everywhere_is_nan_and_bad_inputs_are_refused():
    zeros = np.zeros(10)
    interval = paired_bootstrap("regression", "acc2", zeros + 1, zeros - 1, zeros)  # acc2 needs a non-zero label
    assert np.isnan(interval.low) and np.isnan(interval.high)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap("regression", "mae", zeros, zeros, zeros, confidence=0.4)
    with pytest.raises(ValueError, match="rows"):
        paired_bootstrap("regression", "mae", zeros, zeros[:5], zeros)
