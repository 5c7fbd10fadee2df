"""Drift, where the served model meets it: the reference registration signs into the package, and the summaries of
the rows a batch scoring prepares (`components.monitoring` does the statistics).

Both sides summarize the model's own prepared input batches (`Predictor.prepare_frame`): the reference's train
rows and a scored batch's rows are tokenized, decoded and standardized by the same code the model reads them with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.core.config import DriftParams
from components.data.dataset import Dataset
from components.monitoring.reference import DriftReference, ReferenceInfo
from components.monitoring.summaries import Summaries, summarize
from components.serving.package import dataset_bounds
from components.serving.predictor import Predictor
from components.serving.values import raw_frame

__all__ = ["batch_summaries", "drift_reference", "prediction_values"]

HELD_OUT = ("valid", "test")


def batch_summaries(predictor: Predictor, batches: list[dict[str, np.ndarray]]) -> Summaries:
    """The drift summaries of prepared batches' rows (`Predictor.prepare_frame`)."""
    tokenizer = predictor.tokenizer
    vocabulary = len(tokenizer) if tokenizer is not None else 0
    return summarize(batches, vocabulary, tokenizer.all_special_ids if tokenizer is not None else ())


def prediction_values(predictor: Predictor, predictions: pd.DataFrame) -> np.ndarray:
    """What the prediction test compares: regression scores, or the predicted classes' indices."""
    label = predictor.spec.label
    if label.kind == "regression":
        return predictions["score"].to_numpy(np.float64)
    index = {name: i for i, name in enumerate(label.classes)}
    return np.array([index[c] for c in predictions["class"]], dtype=np.int64)


def drift_reference(predictor: Predictor, dataset: Dataset, settings: DriftParams) -> DriftReference:
    """The reference of the packaged model `predictor`: a uniform sample of at most `settings.reference_rows` train
    rows summarized, and its predictions on as many held-out rows (valid and test)."""
    rng = np.random.default_rng(settings.seed)
    train = _sample(raw_frame(dataset, "train"), settings.reference_rows, rng)
    inputs = batch_summaries(predictor, _prepared(predictor, dataset, train))
    held_out = pd.concat([raw_frame(dataset, s) for s in HELD_OUT if (dataset.samples["split"] == s).any()])
    held_out = _sample(held_out.reset_index(drop=True), settings.reference_rows, rng)
    scores = prediction_values(predictor, predictor.run(_prepared(predictor, dataset, held_out)))
    manifest = dataset.manifest
    info = ReferenceInfo(
        rows=inputs.rows,
        held_out_rows=len(held_out),
        vocabulary=inputs.text.shape[1] if inputs.text is not None else 0,
        label=predictor.spec.label.kind,
        classes=tuple(predictor.spec.label.classes or ()),
        dataset=manifest.name,
        dataset_version=str(manifest.version),
        seed=settings.seed,
    )
    return DriftReference(info, inputs, scores)


def _sample(frame: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    return frame.iloc[np.sort(rng.choice(len(frame), rows, replace=False))].reset_index(drop=True)


def _prepared(predictor: Predictor, dataset: Dataset, frame: pd.DataFrame) -> list[dict[str, np.ndarray]]:
    rows = frame.drop(columns=["id", "label"])
    bounds = dataset_bounds(dataset, rows, predictor.limits)
    assert dataset.root is not None  # raw_frame read the rows from disk
    return predictor.prepare_frame(rows, source=Path(dataset.root), image_root=dataset.root, bounds=bounds)
