"""Evaluation metrics: pure functions on numpy arrays (lists and torch tensors are accepted too).

`regression_metrics` reproduces MMSA's MOSI/MOSEI regression metrics (thuiar/MMSA, `utils/metricsTop.py`,
`MetricsTop.__eval_mosei_regression`) so that numbers are comparable with the literature; the key map is

    MMSA            here
    Has0_acc_2      acc2_has0     label >= 0 vs < 0 over all samples
    Has0_F1_score   f1_has0       weighted F1 of the same
    Non0_acc_2      acc2          label > 0 vs < 0 over the samples whose label is not 0
    Non0_F1_score   f1            weighted F1 of the same
    Mult_acc_5      acc5          round(clip(x, -2, 2)) equal
    Mult_acc_7      acc7          round(clip(x, -3, 3)) equal
    MAE             mae
    Corr            corr          Pearson r

Values are fractions (not percent) and are NOT rounded (MMSA rounds to 4 places; callers round for display).

`classification_metrics` covers class-index targets; `metrics_for` dispatches on the task kind, and
`primary_metric` / `is_better` define the one number used for early stopping and model comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "KINDS",
    "Kind",
    "classification_metrics",
    "is_better",
    "metrics_for",
    "primary_metric",
    "regression_metrics",
]

Kind = Literal["regression", "classification"]
KINDS: tuple[str, ...] = ("regression", "classification")

# (metric key, direction) per task kind: the number early stopping and model comparison look at.
_PRIMARY: dict[str, tuple[str, Literal["min", "max"]]] = {
    "regression": ("mae", "min"),
    "classification": ("f1_weighted", "max"),
}

NO_SAMPLES = "no samples to evaluate"


# ---------------------------------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any) -> np.ndarray:
    """np.asarray, after detaching a torch tensor from autograd and moving it to the CPU (torch is not imported)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
    return np.asarray(x)


def _column(x: np.ndarray, what: str) -> np.ndarray:
    """[N] or [N, 1] (or [N, 1, 1], as models often emit) -> [N]; a 0-d scalar counts as one sample."""
    if x.ndim <= 1:
        return x.reshape(-1)
    if all(d == 1 for d in x.shape[1:]):
        return x.reshape(x.shape[0])
    raise ValueError(f"{what} must have shape [N] or [N, 1], got {list(x.shape)}")


def _check_sizes(n_pred: int, n_label: int) -> None:
    if n_pred != n_label:
        raise ValueError(f"pred and label differ in length: {n_pred} predictions, {n_label} labels")
    if n_pred == 0:
        raise ValueError(NO_SAMPLES)


def _check_finite(x: np.ndarray, what: str) -> None:
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{bad} of {np.size(x)} {what} are not finite (NaN or inf)")


def _as_float(x: Any, what: str) -> np.ndarray:
    try:
        return _to_numpy(x).astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric: {exc}") from exc


def _as_class_indices(x: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    """Float or int values that must be whole numbers in [0, n_classes) -> int64 indices."""
    _check_finite(x, what)
    if not np.array_equal(x, np.round(x)):
        raise ValueError(f"{what} must be class indices (whole numbers), got e.g. {x[x != np.round(x)][0]!r}")
    out = x.astype(np.int64)
    outside = out[(out < 0) | (out >= n_classes)]
    if outside.size:
        raise ValueError(
            f"{outside.size} {what} are outside the class range 0..{n_classes - 1}, e.g. {int(outside[0])}"
        )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# regression (MOSI / MOSEI sentiment score in [-3, 3])


def _pearson(pred: np.ndarray, label: np.ndarray) -> float:
    # Pearson r is cov / (std_pred * std_label). When either side is constant (which includes N == 1) that is 0/0:
    # np.corrcoef (what MMSA calls) returns NaN with a RuntimeWarning. We define r = 0.0 there instead: a constant
    # predictor carries no linear information about the label, and a NaN would poison model comparison and logging.
    if pred.max() == pred.min() or label.max() == label.min():
        return 0.0
    with np.errstate(all="ignore"):
        r = float(np.corrcoef(pred, label)[0, 1])
    return r if math.isfinite(r) else 0.0


def _multiclass_acc(pred: np.ndarray, label: np.ndarray, bound: float) -> float:
    # MMSA's __multiclass_acc on clipped values. np.round rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2,
    # -0.5 -> -0.0 == 0), exactly like MMSA; Python's round() would agree but int(x + 0.5) would not.
    p = np.round(np.clip(pred, -bound, bound))
    y = np.round(np.clip(label, -bound, bound))
    return float(np.mean(p == y))


def _binary(pred: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 of boolean predictions, the numbers MMSA gets from sklearn (labels inferred, F1 0
    where it divides by zero), with sklearn's arithmetic in numpy: sklearn's input checks take ~10 ms a call, and
    training scores every head after every epoch. tests/unit/evaluation/test_metrics.py holds the two to the same
    bits."""
    true = np.array([np.sum(~label), np.sum(label)])  # per class False, True; a class with no sample weighs 0
    predicted = np.array([np.sum(~pred), np.sum(pred)])
    hits = np.array([np.sum(~label & ~pred), np.sum(label & pred)])
    both = true + predicted
    f1 = np.divide(2.0 * hits, both, out=np.zeros(2), where=both > 0)
    return float(np.mean(pred == label)), float(np.average(f1, weights=true))


def regression_metrics(pred: Any, label: Any) -> dict[str, float]:
    """MMSA's MOSI/MOSEI regression metrics for scores `pred` vs `label`, each of shape [N] or [N, 1].

    Keys: acc2_has0, f1_has0, acc2, f1, acc5, acc7, mae, corr (plain floats, fractions in [0, 1] except mae and
    corr). acc2 / f1 use only the samples whose label is not 0; when every label is 0 there are none, and both
    are NaN (the other keys are still defined). corr is 0.0 when pred or label is constant (see `_pearson`).

    Raises ValueError: no samples, pred and label of different lengths, non-finite predictions or labels.
    """
    p = _column(_as_float(pred, "pred"), "pred")
    y = _column(_as_float(label, "label"), "label")
    _check_sizes(p.size, y.size)
    _check_finite(p, "predictions")
    _check_finite(y, "labels")

    # Has0: negative (< 0) vs non-negative (>= 0), every sample counts.
    acc2_has0, f1_has0 = _binary(p >= 0, y >= 0)

    # Non0: negative vs positive over the samples with a non-zero label; the prediction side is `> 0`, so a
    # prediction of exactly 0 counts as negative (as in MMSA).
    nonzero = y != 0
    if nonzero.any():
        acc2, f1 = _binary(p[nonzero] > 0, y[nonzero] > 0)
    else:
        # Every label is 0: no sample to score, so both are undefined (MMSA itself raises an IndexError here).
        acc2 = f1 = math.nan

    return {
        "acc2_has0": acc2_has0,
        "f1_has0": f1_has0,
        "acc2": acc2,
        "f1": f1,
        "acc5": _multiclass_acc(p, y, 2.0),
        "acc7": _multiclass_acc(p, y, 3.0),
        "mae": float(np.mean(np.abs(p - y))),
        "corr": _pearson(p, y),
    }


# ---------------------------------------------------------------------------------------------------------------------
# classification


def classification_metrics(pred: Any, label: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics for class-index targets `label` [N] against `pred`: class indices [N] or scores [N, C] (argmax).

    Returns
      accuracy, f1_macro, f1_weighted: floats. f1_macro averages over the classes that occur in label or pred
        (sklearn's default), so a class absent from both does not count as an F1 of 0;
      per_class: {class name: {precision, recall, f1 (floats), support (int)}} for every class, in `classes` order;
      confusion_matrix: C x C list of lists of ints, rows = true class, columns = predicted class, both in
        `classes` order (a class absent from the data still has its row and column, all zeros).
    Precision, recall and F1 that divide by zero (e.g. a class that is never predicted) are 0.0, without warnings.

    Raises ValueError: no samples, different lengths, non-finite predictions, indices outside 0..C-1, a score
    matrix whose width is not C, empty or duplicate class names.
    """
    # Imported here: sklearn takes seconds to import, and regression scores need none of it.
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    names = [str(c) for c in classes]
    n_classes = len(names)
    if n_classes == 0:
        raise ValueError("classes must name at least one class")
    if len(set(names)) != n_classes:
        raise ValueError(f"class names must be unique, got {names}")

    p = _as_float(pred, "pred")
    y = _column(_as_float(label, "label"), "label")
    if p.ndim == 2 and p.shape[1] == n_classes:  # logits or probabilities
        _check_sizes(p.shape[0], y.size)
        _check_finite(p, "predictions")
        p_idx = np.argmax(p, axis=1).astype(np.int64)
    elif p.ndim <= 1 or (p.ndim == 2 and p.shape[1] == 1):
        p = _column(p, "pred")
        _check_sizes(p.size, y.size)
        p_idx = _as_class_indices(p, n_classes, "predictions")
    else:
        raise ValueError(f"pred must be class indices [N] or scores [N, {n_classes}], got shape {list(p.shape)}")
    y_idx = _as_class_indices(y, n_classes, "labels")

    labels = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_idx, p_idx, labels=labels, average=None, zero_division=0.0
    )
    return {
        "accuracy": float(accuracy_score(y_idx, p_idx)),
        "f1_macro": float(f1_score(y_idx, p_idx, average="macro", zero_division=0.0)),
        "f1_weighted": float(f1_score(y_idx, p_idx, average="weighted", zero_division=0.0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": confusion_matrix(y_idx, p_idx, labels=labels).tolist(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# dispatch and model selection


def _check_kind(kind: str) -> str:
    if kind not in _PRIMARY:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {list(KINDS)}")
    return kind


def metrics_for(kind: Kind, pred: Any, label: Any, classes: Sequence[str] = ()) -> dict[str, Any]:
    """`regression_metrics(pred, label)` or `classification_metrics(pred, label, classes)`; classes is ignored
    for regression."""
    if _check_kind(kind) == "regression":
        return regression_metrics(pred, label)
    return classification_metrics(pred, label, classes)


def primary_metric(kind: Kind) -> tuple[str, Literal["min", "max"]]:
    """(metric key, "min" | "max"): the number early stopping and model comparison use for this task kind."""
    return _PRIMARY[_check_kind(kind)]


def is_better(kind: Kind, new: float | Mapping[str, Any], old: float | Mapping[str, Any] | None) -> bool:
    """Whether `new` strictly improves on `old` by the primary metric of `kind`.

    `new` and `old` are either the primary metric's value or a metrics dict holding it. Anything beats
    `old=None` (no model yet) or a NaN old value; a NaN new value never wins; a tie is not an improvement, so the
    earlier model is kept.
    """
    key, mode = primary_metric(kind)

    def value(v: float | Mapping[str, Any]) -> float:
        if isinstance(v, Mapping):
            if key not in v:
                raise KeyError(f"metrics have no {key!r} (the primary metric for {kind}); got {sorted(v)}")
            return float(v[key])
        return float(v)

    new_v = value(new)
    if math.isnan(new_v):
        return False
    if old is None:
        return True
    old_v = value(old)
    if math.isnan(old_v):
        return True
    return new_v < old_v if mode == "min" else new_v > old_v
