"""Drift: a scored batch compared with the reference its model was registered with, per modality.

Each modality the model reads gets one p-value, of "this batch's rows are drawn like the training data's": text by
the MMD of its word pieces, images and sequences by KS tests of their summary features, and each modality's share
of rows that have it (Fisher); the predictions by KS on the scores (chi-squared on classes). The tests of one
modality are combined by Bonferroni, and so are the modalities: each is called drifted below `drift.level` divided
by their number, so a batch drawn like the training data is called drifted with a chance of at most `drift.level`.

`DriftSample` keeps a uniform sample of a stream of rows in bounded memory, however many are scored.
`compare` makes the `DriftReport`; `write_report` writes it beside the predictions (`<output>.drift.json`) with
its figure (`<output>.drift.png`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from components.core.atomic import write_bytes, write_json
from components.core.config import DriftParams
from components.monitoring import statistics
from components.monitoring.reference import DriftReference
from components.monitoring.statistics import Test
from components.monitoring.summaries import Summaries

__all__ = ["DriftReport", "DriftSample", "ModalityDrift", "compare", "report_paths", "write_report"]


class DriftSample:
    """A uniform sample of at most `limit` rows of everything `add`ed (bottom-k of random keys): bounded memory
    over a stream of any length, and the same sample for the same rows and seed."""

    def __init__(self, limit: int, seed: int) -> None:
        self.limit, self.rng = limit, np.random.default_rng(seed)
        self.rows = 0  # seen
        self.keys = np.zeros(0)
        self.inputs = Summaries(0)
        self.scores = np.zeros(0)

    def add(self, inputs: Summaries, scores: np.ndarray) -> None:
        self.rows += inputs.rows
        keys = np.concatenate([self.keys, self.rng.random(inputs.rows)])
        pooled = Summaries.concat([self.inputs, inputs])
        scores = np.concatenate([self.scores, scores]) if len(self.scores) else scores
        keep = np.sort(np.argsort(keys, kind="stable")[: self.limit])
        self.keys, self.inputs, self.scores = keys[keep], pooled.take(keep), scores[keep]


class ModalityDrift(BaseModel):
    p_value: float  # Bonferroni over `tests`
    threshold: float  # drift.level over the number of modalities compared
    drifted: bool
    rows: int  # of the batch's sample that have the modality (the prediction: all)
    tests: dict[str, dict[str, float]]  # name -> {statistic, p_value}


class DriftReport(BaseModel):
    drifted: bool
    verdict: str  # one line: what drifted, or why there is no verdict
    level: float
    rows: int  # scored
    compared: int  # of them, the uniform sample compared with the reference
    reference_rows: int
    dataset: str  # the reference's: what the model was trained on
    dataset_version: str
    modalities: dict[str, ModalityDrift]  # text, image, audio, vision, prediction: the ones compared

    def summary(self) -> str:
        return f"drift: {self.verdict}"


def compare(reference: DriftReference, sample: DriftSample, settings: DriftParams) -> DriftReport:
    """The drift report of `sample` (a scored batch) against `reference`."""
    batch, info = sample.inputs, reference.info
    base = {
        "level": settings.level,
        "rows": sample.rows,
        "compared": batch.rows,
        "reference_rows": info.rows,
        "dataset": info.dataset,
        "dataset_version": info.dataset_version,
    }
    if sample.rows < settings.min_rows:
        verdict = f"no verdict: {sample.rows} rows, fewer than drift.min_rows ({settings.min_rows})"
        return DriftReport(drifted=False, verdict=verdict, modalities={}, **base)
    rng = np.random.default_rng(settings.seed)
    tests = {m: _modality_tests(m, reference, batch, settings, rng) for m in reference.inputs.modalities}
    tests["prediction"] = [_prediction_test(reference, sample.scores)]
    threshold = settings.level / len(tests)
    modalities = {}
    for name, results in tests.items():
        p = statistics.bonferroni(results)
        rows = int(batch.present[name].sum()) if name in batch.present else batch.rows
        modalities[name] = ModalityDrift(
            p_value=p,
            threshold=threshold,
            drifted=p < threshold,
            rows=rows,
            tests={t.name: {"statistic": t.statistic, "p_value": t.p_value} for t in results},
        )
    moved = [name for name, m in modalities.items() if m.drifted]
    verdict = f"drifted: {', '.join(moved)}" if moved else "no drift"
    return DriftReport(drifted=bool(moved), verdict=verdict, modalities=modalities, **base)


def _modality_tests(
    modality: str, reference: DriftReference, batch: Summaries, settings: DriftParams, rng: np.random.Generator
) -> list[Test]:
    ours, theirs = reference.inputs.present[modality], batch.present[modality]
    results = [statistics.rate_test("present", ours, theirs)] if modality != "text" else []
    if not theirs.any():
        return results
    if modality == "text":
        assert reference.inputs.text is not None and batch.text is not None
        results.append(statistics.mmd_test(reference.inputs.text[ours], batch.text[theirs], settings.permutations, rng))
    else:
        ours_stats, theirs_stats = reference.inputs.stats[modality][ours], batch.stats[modality][theirs]
        results.append(statistics.ks_test("features", ours_stats, theirs_stats))
    return results


def _prediction_test(reference: DriftReference, scores: np.ndarray) -> Test:
    if reference.info.label == "classification":
        classes = len(reference.info.classes)
        return statistics.class_test(reference.scores.astype(np.int64), scores.astype(np.int64), classes)
    return statistics.ks_test("scores", reference.scores, scores)


def report_paths(output: Path) -> tuple[Path, Path]:
    """Where the drift report of the predictions in `output` goes: JSON and its figure, beside them."""
    return output.with_name(output.name + ".drift.json"), output.with_name(output.name + ".drift.png")


def write_report(
    report: DriftReport, output: Path, reference: DriftReference, sample: DriftSample
) -> tuple[Path, Path]:
    """The report beside the predictions `output` (JSON) and its figure: each modality's evidence against its
    threshold, and the batch's predictions over the reference's."""
    from components.core.figures import grid, png

    json_path, figure_path = report_paths(output)
    figure, (evidence, predictions) = grid(2, width=4.2)
    names = list(report.modalities)
    strength = [-np.log10(max(m.p_value, 1e-300)) for m in report.modalities.values()]
    colours = ["tab:red" if m.drifted else "tab:blue" for m in report.modalities.values()]
    evidence.barh(names, strength, color=colours)
    if names:
        evidence.axvline(-np.log10(report.modalities[names[0]].threshold), color="black", linestyle="--")
    evidence.set_xlabel("-log10 p (dashed: drifted beyond)")
    evidence.set_title(report.verdict, fontsize=9)
    if reference.info.label == "classification":
        classes = reference.info.classes
        width = 0.4
        for shift, (values, label) in enumerate(((reference.scores, "reference"), (sample.scores, "batch"))):
            share = np.bincount(values.astype(np.int64), minlength=len(classes)) / max(len(values), 1)
            predictions.bar(np.arange(len(classes)) + shift * width, share, width, label=label)
        predictions.set_xticks(np.arange(len(classes)) + width / 2, classes)
    else:
        bins = np.histogram_bin_edges(np.concatenate([reference.scores, sample.scores]), bins=30)
        predictions.hist(reference.scores, bins=bins, density=True, alpha=0.5, label="reference (held out)")
        predictions.hist(sample.scores, bins=bins, density=True, alpha=0.5, label="batch")
        predictions.set_xlabel("predicted score")
    predictions.legend(fontsize=8)
    predictions.set_title("predictions", fontsize=9)
    write_bytes(figure_path, png(figure))
    write_json(json_path, report.model_dump(mode="json"))
    return json_path, figure_path
