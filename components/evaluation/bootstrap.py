"""Paired bootstrap of a metric's difference between two models scored on the same rows.

Both models are scored on each resample of the rows (drawn with replacement, the same rows for both), so what the
rows have in common cancels: two models that agree on every row differ by exactly 0 on every resample, however few
the rows, while a model that flips a handful of predictions gets an interval as wide as those rows make it. The
interval is the percentile one (Efron & Tibshirani 1993, ch. 13): its bounds are the `1 - confidence` and
`confidence` quantiles of the resampled differences, each a one-sided bound at `confidence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.evaluation.metrics import Kind, metrics_for

__all__ = ["Interval", "paired_bootstrap"]


@dataclass(frozen=True)
class Interval:
    """candidate - reference in the metric's own units: low and high bounds, each one-sided at `confidence`."""

    low: float
    high: float
    confidence: float
    resamples: int


def paired_bootstrap(
    kind: Kind,
    metric: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str] = (),
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Bounds of `metric`(candidate) - `metric`(reference) over `resamples` paired resamples of the rows.

    A resample where the metric is undefined (acc2 of rows whose labels are all 0) is left out; when every one is,
    both bounds are NaN. Seeded: the same inputs give the same interval.
    """
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if not len(reference) == len(candidate) == len(labels) > 0:
        raise ValueError(f"rows differ or are none: {len(reference)}, {len(candidate)}, {len(labels)}")
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        score = metrics_for(kind, reference[rows], labels[rows], classes)[metric]
        differences[i] = metrics_for(kind, candidate[rows], labels[rows], classes)[metric] - score
    defined = differences[np.isfinite(differences)]
    if not len(defined):
        return Interval(float("nan"), float("nan"), confidence, resamples)
    low, high = np.quantile(defined, [1 - confidence, confidence])
    return Interval(float(low), float(high), confidence, resamples)
