"""Evaluate stage: the metrics of every head on valid and test, and the plots that DVC and people read.

Writes
    evaluate.report (reports/evaluation.json)  {split: {head: {metric: value}}}: components.evaluation.metrics'
        keys plus `samples` (how many samples had the head's modality); class labels add per_class {class:
        {precision, recall, f1, support}}. Only numbers: NaN is null, confusion matrices go to the plot data. What
        MLflow's runs, the model card and the registration gate read (components.evaluation.reports).
    evaluate.seeds (reports/seeds.json)  every metric's mean and std over the seeds trained, and each seed's
    evaluate.headline (metrics/evaluate.json)  DVC metrics: a subset of the report under the same keys, small
        enough for `dvc metrics show` and `dvc exp show` to fit a terminal (see HEADLINE); committed to git
    evaluate.plots (metrics/plots/), plot data for `dvc plots`, committed to git
        predictions/<split>_<head>.csv  id, label, prediction (the score; class indices for class labels)
        confusion/<split>_<head>.json   [{id, actual, predicted}]: class names, or for regression labels the
                                        Acc-7 classes -3..3 (rounded after clipping to [-3, 3], as acc7 counts)
        history.csv                     per epoch: train loss and valid primary metric of every head
    evaluate.figures (reports/figures/)
        scatter_<split>.png             predicted vs true per head (regression labels only)
        confusion_<split>.png           confusion matrix per head
        training_curves.png             train loss and valid primary metric per head, best epoch marked
Both plot directories are replaced as a whole, so no file of an earlier run survives. The plots show one split:
test, or valid when test is not evaluated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from components.core.atomic import replace_directory, write_bytes, write_json, write_text
from components.core.config import EvaluateParams
from components.core.devices import cpu_threads
from components.core.errors import DataError, TrainingError
from components.core.figures import grid, png
from components.evaluation.metrics import Kind, classification_metrics, metrics_for, primary_metric
from components.evaluation.reports import EvaluationReport, SeedSummary
from components.features.contract import FEATURES
from components.models.seeds import SeedsReport
from components.models.store import (
    Monitor,
    digest,
    load_for_scoring,
    load_trained,
    model_inputs,
    predict,
    read_card,
    read_history,
    split_rows,
)

__all__ = ["CURVES_PNG", "HEADLINE", "HISTORY_CSV", "EvaluationResult", "HeadOutput", "evaluate", "select_headline"]

HISTORY_CSV = "history.csv"  # always written: also what shows that a plots directory is ours to replace
CURVES_PNG = "training_curves.png"  # the same, for the figures directory
# The headline per label kind: the monitored head's metrics on each split (MMSA's standard ones on test), and every
# other head's primary metric on the plotted split: 13 numbers for the demo's seven heads, 22 with the compression
# headline's nine, so `dvc exp show --only-changed` stays under 30 columns with a two-parameter sweep.
HEADLINE = {
    "regression": {"test": ("acc2", "f1", "acc7", "mae", "corr"), "valid": ("acc2", "mae")},
    "classification": {"test": ("accuracy", "f1_weighted", "f1_macro"), "valid": ("accuracy", "f1_weighted")},
}


@dataclass
class HeadOutput:
    """One head on the plotted split, restricted to the samples where its modality is present."""

    ids: np.ndarray
    label: np.ndarray  # scores, or class indices
    prediction: np.ndarray  # scores, or class indices (argmax of the logits)
    metrics: dict[str, Any]


@dataclass
class EvaluationResult:
    report: Path
    headline: Path
    plots: Path
    figures: Path
    split: str  # the split plotted and summarised
    metric: str  # the primary metric of the label kind
    direction: str  # "min" | "max"
    scores: EvaluationReport  # what the report holds
    seed_scores: SeedSummary  # what the seeds report holds
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{split: {head: {metric: value}}}: the report without the model's digest."""
        return self.scores.splits

    @property
    def seeds(self) -> dict[str, Any]:
        """The seeds report, as its JSON."""
        return self.seed_scores.model_dump()

    def summary(self) -> str:
        better = "lower" if self.direction == "min" else "higher"
        scores = ", ".join(f"{head} {_fmt(m[self.metric])}" for head, m in self.metrics[self.split].items())
        text = (
            f"evaluate: {self.split} {self.metric} ({better} is better): {scores}; report -> {self.report}, "
            f"headline -> {self.headline}, plots -> {self.plots}, {self.figures} ({self.seconds:.1f} s)"
        )
        return text + "".join(f"; {note}" for note in self.notes)


def evaluate(features: Path, model_dir: Path, params: EvaluateParams, *, progress: bool = True) -> EvaluationResult:
    """Score the model `train` wrote to `model_dir` on `params.splits` of `features`; write the report, the
    headline and the plots.

    Raises DataError for a split without samples, TrainingError for a missing or unreadable model, or one trained
    on other features, ConfigError for an unavailable device.
    """
    with cpu_threads(params.threads):
        return _evaluate(features, model_dir, params, progress=progress)


def _evaluate(features: Path, model_dir: Path, params: EvaluateParams, *, progress: bool = True) -> EvaluationResult:
    start = time.perf_counter()
    features, model_dir = Path(features), Path(model_dir)
    model, card, arrays, state, device = load_for_scoring(model_dir, features, params.device, "evaluate.device")
    history = read_history(model_dir)

    spec = model.spec
    kind, classes = spec.label.kind, spec.label.classes
    metric, direction = primary_metric(kind)
    tensors = model_inputs(arrays, spec)
    split_codes = tensors.pop("split")
    labels, ids = tensors["label"].numpy(), np.asarray(state.ids)
    plotted = "test" if "test" in params.splits else "valid"

    metrics, predictions, notes = _score(model, tensors, split_codes, params.splits, device, features, progress)
    outputs = {
        head: HeadOutput(
            ids[rows][present], labels[rows][present], _predicted(kind, scores[present]), metrics[plotted][head]
        )
        for head, (rows, scores, present) in predictions[plotted].items()
    }
    seeds = _seed_scores(model_dir, card, metrics, tensors, split_codes, params.splits, device, features)

    with replace_directory(params.plots, marker=HISTORY_CSV) as staging:
        _write_plot_data(staging, plotted, outputs, kind, classes)
        _write_history(staging, history, spec.heads, card.monitor, metric)
    with replace_directory(params.figures, marker=CURVES_PNG) as staging:
        _write_images(staging, plotted, outputs, kind, classes, history, spec.heads, card.monitor, metric)
    metrics = _numbers_only(metrics)
    seeds.write(params.seeds)
    # The digest of the model these scores are of: registration refuses a report of another model.
    report = EvaluationReport(model_digest=digest(model_dir), splits=metrics)
    return EvaluationResult(
        report=report.write(params.report),
        headline=write_json(
            params.headline, select_headline(metrics, kind, card.monitor.head, plotted), nan_as_null=True
        ),
        plots=Path(params.plots),
        figures=Path(params.figures),
        split=plotted,
        metric=metric,
        direction=direction,
        scores=report,
        seed_scores=seeds,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


def _score(
    model: Any,
    tensors: dict,
    split_codes: Any,
    splits: tuple[str, ...],
    device: Any,
    features: Path,
    progress: bool = False,
) -> tuple[dict, dict, list[str]]:
    """Every head's metrics on each split, over the samples that have its modality: (metrics {split: {head:
    metrics}}, predictions {split: {head: (rows, scores, present)}}, notes)."""
    spec = model.spec
    kind, classes = spec.label.kind, spec.label.classes
    labels = tensors["label"].numpy()
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    predictions: dict[str, dict[str, tuple]] = {}
    notes: list[str] = []
    for split in tqdm(splits, desc="evaluate", unit="split", disable=None if progress else True):
        rows = split_rows(split_codes, split)
        if not len(rows):
            raise DataError(features / FEATURES, f"split {split!r} has no samples to evaluate (evaluate.splits)")
        metrics[split], predictions[split] = {}, {}
        split_labels = labels[rows.numpy()]
        for head, (scores, present) in predict(model, tensors, rows, device).items():
            if not present.any():
                notes.append(f"{head} skipped on {split}: no sample has its modality")
                continue
            metrics[split][head] = {**metrics_for(kind, scores[present], split_labels[present], classes)}
            metrics[split][head]["samples"] = int(present.sum())
            predictions[split][head] = (rows.numpy(), scores, present)
    return metrics, predictions, notes


def _predicted(kind: str, scores: np.ndarray) -> np.ndarray:
    return scores.reshape(-1) if kind == "regression" else scores.argmax(axis=1)


def _seed_scores(
    model_dir: Path,
    card: Any,
    metrics: dict,
    tensors: dict,
    split_codes: Any,
    splits: tuple,
    device: Any,
    features: Path,
) -> SeedSummary:
    """The seeds report: every seed's metrics and their mean and std over seeds (MMSA reports results so). One seed
    (train.seeds 1) is a report of one, std 0."""
    from components.models.store import SEEDS, seed_dirs

    dirs = seed_dirs(model_dir)
    chosen = SeedsReport.read(model_dir / SEEDS).chosen if dirs else None
    runs = {}
    for seed, directory in dirs.items():
        if read_card(directory).featurizer_key != card.featurizer_key:
            raise TrainingError(f"{directory}: trained on other features than {features}; run `msa train`")
        runs[str(seed)] = _numbers_only(
            _score(load_trained(directory).to(device), tensors, split_codes, splits, device, features)[0]
        )
    if not runs:
        runs = {"single": _numbers_only(metrics)}
    return SeedSummary(
        seeds=[int(s) for s in dirs] or None,
        chosen=chosen,
        selected_by=f"valid {card.monitor.head} {card.monitor.metric}",
        mean=_over_seeds(runs, np.mean),
        std=_over_seeds(runs, np.std),
        runs=runs,
    )


def _over_seeds(runs: dict[str, dict], reduce: Any) -> dict:
    """{split: {head: {metric: reduce over the runs that have it}}}, over the union of the runs' scalar metrics
    (std is numpy's, ddof 0, as MMSA reports it)."""
    out: dict = {}
    for run in runs.values():
        for split, heads in run.items():
            for head, values in heads.items():
                for key, value in values.items():
                    if isinstance(value, int | float) and key != "samples":
                        out.setdefault(split, {}).setdefault(head, {}).setdefault(key, []).append(value)
    return {
        split: {head: {key: float(reduce(values)) for key, values in keys.items()} for head, keys in heads.items()}
        for split, heads in out.items()
    }


# ---------------------------------------------------------------------------------------------------------------------
# the report and its headline


def _numbers_only(value: Any) -> Any:
    """Nested dicts of numbers, as DVC metrics want them: confusion matrices (lists) go to the plot data."""
    if isinstance(value, dict):
        return {k: _numbers_only(v) for k, v in value.items() if k != "confusion_matrix"}
    return value


def select_headline(metrics: dict, kind: Kind, monitored: str, plotted: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The report's HEADLINE entries, rounded to 4 places as MMSA reports them: `test.fusion.acc2` is the same
    number in both files, and `dvc exp show` shows every head's primary metric on `plotted`."""
    primary, _ = primary_metric(kind)
    picked: dict[str, dict[str, dict[str, Any]]] = {}
    for split, heads in metrics.items():
        chosen = {monitored: HEADLINE[kind][split]} if monitored in heads else {}
        if split == plotted:
            chosen |= {head: (primary,) for head in heads if head != monitored}
        picked[split] = {head: {key: _round(heads[head].get(key)) for key in keys} for head, keys in chosen.items()}
    return picked


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------------------------------
# plot data (CSV, for `dvc plots`)


def _confusion(out: HeadOutput, kind: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list]:
    """Actual and predicted class per sample (names, or Acc-7 classes -3..3) and the confusion matrix (rows actual,
    columns predicted, in `_class_names` order)."""
    if kind == "classification":
        names = np.asarray(classes)
        return names[out.label], names[out.prediction], out.metrics["confusion_matrix"]
    # The Acc-7 classes: round half to even after clipping, as evaluation.metrics counts acc7 (and MMSA does).
    actual, predicted = (np.round(np.clip(x, -3, 3)).astype(np.int64) for x in (out.label, out.prediction))
    matrix = classification_metrics(predicted + 3, actual + 3, _class_names(kind, classes))["confusion_matrix"]
    return actual, predicted, matrix


def _class_names(kind: str, classes: tuple[str, ...]) -> list[str]:
    return list(classes) if kind == "classification" else [str(c) for c in range(-3, 4)]


def _write_plot_data(
    staging: Path, split: str, outputs: dict[str, HeadOutput], kind: str, classes: tuple[str, ...]
) -> None:
    for head, out in outputs.items():
        frame = pd.DataFrame({"id": out.ids, "label": out.label, "prediction": out.prediction})
        write_text(staging / "predictions" / f"{split}_{head}.csv", frame.to_csv(index=False))
        # JSON rather than CSV: DVC reads CSV cells as strings, and its confusion template would sort -1 before -3.
        actual, predicted, _ = _confusion(out, kind, classes)
        frame = pd.DataFrame({"id": out.ids, "actual": actual, "predicted": predicted})
        write_json(staging / "confusion" / f"{split}_{head}.json", frame.to_dict("records"))


def _write_history(staging: Path, history: list[dict], heads: tuple[str, ...], monitor: Monitor, metric: str) -> None:
    # DVC's linear template draws the last column when no y is set: the monitored head's valid metric goes last.
    valid_heads = [h for h in heads if h != monitor.head] + [monitor.head]
    rows = [
        {
            "epoch": entry["epoch"],
            **{f"train_loss_{h}": entry["train_loss"].get(h) for h in heads},
            **{f"valid_{metric}_{h}": entry["valid"].get(h, {}).get(metric) for h in valid_heads},
        }
        for entry in history
    ]
    write_text(staging / HISTORY_CSV, pd.DataFrame(rows).to_csv(index=False))


# ---------------------------------------------------------------------------------------------------------------------
# PNGs (matplotlib's object API: no pyplot state, no GUI backend)


def _write_images(
    staging: Path,
    split: str,
    outputs: dict[str, HeadOutput],
    kind: str,
    classes: tuple[str, ...],
    history: list[dict],
    heads: tuple[str, ...],
    monitor: Monitor,
    metric: str,
) -> None:
    if kind == "regression":
        write_bytes(staging / f"scatter_{split}.png", _scatter_png(split, outputs))
    write_bytes(staging / f"confusion_{split}.png", _confusion_png(split, outputs, kind, classes))
    write_bytes(staging / CURVES_PNG, _curves_png(history, heads, monitor, metric))


def _scatter_png(split: str, outputs: dict[str, HeadOutput]) -> bytes:
    figure, axes = grid(len(outputs))
    for ax, (head, out) in zip(axes, outputs.items(), strict=True):
        low = float(min(out.label.min(), out.prediction.min()))
        high = float(max(out.label.max(), out.prediction.max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
        ax.scatter(out.label, out.prediction, s=8, alpha=0.5)
        ax.set_title(f"{head}: MAE {out.metrics['mae']:.3f}, r {out.metrics['corr']:.3f}", fontsize=10)
        ax.set_xlabel("label")
        ax.set_ylabel("prediction")
    figure.suptitle(f"predicted vs true ({split})")
    return png(figure)


def _confusion_png(split: str, outputs: dict[str, HeadOutput], kind: str, classes: tuple[str, ...]) -> bytes:
    names = _class_names(kind, classes)
    figure, axes = grid(len(outputs))
    for ax, (head, out) in zip(axes, outputs.items(), strict=True):
        matrix = np.asarray(_confusion(out, kind, classes)[2])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                color = "white" if count > matrix.max() / 2 else "black"
                # Inside the axes anyway: constrained layout need not measure each count (2 s of evaluate).
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color, in_layout=False)
        ticks = range(len(names))
        ax.set_xticks(ticks, names, fontsize=8)
        ax.set_yticks(ticks, names, fontsize=8)
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        ax.set_title(f"{head}: {'accuracy' if kind == 'classification' else 'Acc-7'} {accuracy:.3f}", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
    figure.suptitle(f"confusion matrix ({split})")
    return png(figure)


def _curves_png(history: list[dict], heads: tuple[str, ...], monitor: Monitor, metric: str) -> bytes:
    figure, (loss_ax, valid_ax) = grid(2, width=5.0, height=3.6)
    epochs = [entry["epoch"] for entry in history]
    for head in heads:
        loss = [entry["train_loss"].get(head, math.nan) for entry in history]
        valid = [entry["valid"].get(head, {}).get(metric, math.nan) for entry in history]
        width = 2.2 if head == monitor.head else 1.0
        loss_ax.plot(epochs, loss, label=head, linewidth=width)
        valid_ax.plot(epochs, valid, label=head, linewidth=width)
    best = monitor.epoch
    valid_ax.axvline(best, color="grey", linestyle="--", linewidth=1)
    valid_ax.plot([best], [monitor.value], marker="*", markersize=12, color="black", linestyle="none")
    valid_ax.annotate(
        f"best: {monitor.head}, epoch {best}",
        (best, monitor.value),
        (6, 6),
        textcoords="offset points",
        fontsize=8,
    )
    for ax, title, ylabel in ((loss_ax, "train loss", "loss"), (valid_ax, f"valid {metric}", metric)):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=8)
    return png(figure)
