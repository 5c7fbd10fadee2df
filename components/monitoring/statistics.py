"""The two-sample tests of the drift report, each giving a statistic and a p-value: the chance of a difference at
least this large between the reference and a batch drawn like it.

- `mmd_test`: maximum mean discrepancy between two sets of texts, as TF-IDF vectors under a Gaussian kernel on
  their distance, its bandwidth the median distance; the p-value from permutations of the pooled rows (Gretton et
  al. 2012). One test over the whole
  vocabulary: a shift in topic, wording or length moves it without any one word moving much.
- `ks_test`: Kolmogorov-Smirnov per feature (scipy), Bonferroni over the features: a modality of a few summary
  features (an image's channel statistics, a sequence's feature means) is compared feature by feature.
- `rate_test`: Fisher's exact test of a modality's share of rows that have it (scipy).
- `class_test`: chi-squared on predicted classes' counts (scipy); regression scores go through `ks_test`.

scipy covers every test but the MMD, which is a few matrix products here; alibi-detect's MMDDrift would bring
TensorFlow or a second torch code path, and Evidently a web stack, for one statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse, stats

__all__ = ["Test", "bonferroni", "class_test", "ks_test", "mmd_test", "rate_test"]

_PERMUTATION_BLOCK = 250  # permutations per matrix product: memory of [rows, block] floats


@dataclass(frozen=True)
class Test:
    name: str
    statistic: float
    p_value: float


def bonferroni(tests: list[Test]) -> float:
    """The p-value of "any of these differs": the smallest, times their number (at most 1)."""
    return min(1.0, min((t.p_value for t in tests), default=1.0) * len(tests))


def _idf(counts: sparse.csr_matrix) -> np.ndarray:
    """Smoothed inverse document frequency of each word piece over these texts (scikit-learn's form)."""
    frequency = np.bincount(counts.indices, minlength=counts.shape[1])
    return (np.log((1 + counts.shape[0]) / (1 + frequency)) + 1).astype(np.float32)


def _tfidf(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """Rows as unit vectors of sublinear term frequency times inverse document frequency (a row without words stays
    zero)."""
    tf = counts.copy()
    tf.data = (1 + np.log(tf.data)) * _idf(counts)[tf.indices]
    norms = np.sqrt(np.asarray(tf.multiply(tf).sum(1)).ravel())
    return sparse.diags(1 / np.where(norms > 0, norms, 1)) @ tf


def _squared_distances(x: sparse.csr_matrix) -> np.ndarray:
    gram = (x @ x.T).toarray().astype(np.float64)
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


def mmd_test(
    reference: sparse.csr_matrix, batch: sparse.csr_matrix, permutations: int, rng: np.random.Generator
) -> Test:
    """MMD^2 (the biased estimate) between two sets of texts' word-piece counts, with its permutation p-value.

    The document frequencies and the bandwidth (the median squared distance) are the pooled rows': computed from
    the reference alone, a word only the batch has would weigh most and sit on the batch's side in the observed
    split only, and the test would call drift too often."""
    distances = _squared_distances(_tfidf(sparse.vstack([reference, batch], format="csr")))
    pairs = distances[np.triu_indices(len(distances), k=1)]
    bandwidth = float(np.median(pairs)) if len(pairs) else 0.0
    kernel = np.exp(-distances / (bandwidth if bandwidth > 0 else 1.0))
    n, m = reference.shape[0], batch.shape[0]
    signs = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)])
    observed = float(signs @ kernel @ signs)
    exceeded = 0
    for start in range(0, permutations, _PERMUTATION_BLOCK):
        block = min(_PERMUTATION_BLOCK, permutations - start)
        shuffled = rng.permuted(np.repeat(signs[:, None], block, axis=1), axis=0)
        exceeded += int(((shuffled * (kernel @ shuffled)).sum(0) >= observed - 1e-12).sum())
    return Test("mmd", observed, (1 + exceeded) / (1 + permutations))


def ks_test(name: str, reference: np.ndarray, batch: np.ndarray) -> Test:
    """Two-sample Kolmogorov-Smirnov on each column; the largest statistic and the Bonferroni p-value."""
    if len(reference) == 0 or len(batch) == 0:
        return Test(name, 0.0, 1.0)
    result = stats.ks_2samp(reference, batch, axis=0)
    statistics, p_values = np.atleast_1d(result.statistic), np.atleast_1d(result.pvalue)
    return Test(name, float(statistics.max()), min(1.0, float(np.nanmin(p_values)) * len(p_values)))


def rate_test(name: str, reference: np.ndarray, batch: np.ndarray) -> Test:
    """Fisher's exact test of the share of True in `batch` against `reference`; the statistic is the difference."""
    table = [[int(reference.sum()), int((~reference).sum())], [int(batch.sum()), int((~batch).sum())]]
    difference = float(batch.mean() - reference.mean()) if len(batch) and len(reference) else 0.0
    return Test(name, difference, float(stats.fisher_exact(table).pvalue))


def class_test(reference: np.ndarray, batch: np.ndarray, classes: int) -> Test:
    """Chi-squared test of the predicted classes' counts (class indices) in `batch` against `reference`."""
    table = np.stack([np.bincount(reference, minlength=classes), np.bincount(batch, minlength=classes)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return Test("classes", 0.0, 1.0)
    result = stats.chi2_contingency(table)
    return Test("classes", float(result.statistic), float(result.pvalue))
