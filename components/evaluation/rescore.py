"""A model's score on one split of a dataset from its predictions, in the metric the registration gate compares.

Evaluation scores what it is given: whoever loads the model (the registry, through serving) predicts the split's rows
in the dataset's order and passes the predictions here; nothing here loads or runs a model.
"""

from __future__ import annotations

import pandas as pd

from components.data.dataset import Dataset
from components.evaluation.metrics import metrics_for

__all__ = ["rescore"]


def rescore(predicted: pd.DataFrame, dataset: Dataset, split: str, metric: str) -> float | None:
    """`metric` of predictions (`score` for regression, `class` otherwise) of the `split` rows of `dataset`, in the
    order the dataset holds them. None when the model predicts classes the dataset does not have: it is not scored."""
    labels = dataset.samples.loc[dataset.samples["split"] == split, "label"].to_numpy()
    if dataset.manifest.label.kind == "regression":
        return float(metrics_for("regression", predicted["score"].to_numpy(), labels)[metric])
    classes = list(dataset.manifest.label.classes)
    if not set(predicted["class"]) <= set(classes):
        return None
    indices = [classes.index(c) for c in predicted["class"]]
    truth = [classes.index(c) for c in labels]
    return float(metrics_for("classification", indices, truth, classes)[metric])
