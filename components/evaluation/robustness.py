"""Robustness stage: every head scored on one split with its inputs perturbed, at each severity params.yaml sets.

After Robust-MSA and OpenVNA: noisy and missing modalities, replaced or removed words. Text is perturbed as text
and featurized again exactly as featurize does (tokenizer, HAN's sentence grid, the frozen transformer's token
states); images and audio/vision frames are perturbed as the model reads them (fitted pixels, standardized frames);
a missing modality is one the sample no longer has. evaluation.perturbations says what each severity means. The draws
are seeded per sample, so a run is deterministic and a higher severity perturbs a superset of a lower one.

Writes
    robustness.report (reports/robustness.json)  {model_digest, split, metric, head, seed, clean: {head: metrics},
        perturbations: {name: {modality, severities: {"0.1": {head: metrics}}}}, skipped: [why]}. A head that no
        sample can be scored on under a setting (text heads with every text missing) is absent from it
        (components.evaluation.reports.RobustnessReport).
    robustness.plots (metrics/robustness/<perturbation>.csv)  severity (0: clean) and one column per head name,
        robustness.metric in points; what `dvc plots` draws, a line per head. Replaced as a whole.
    robustness.figure (reports/robustness.png)  the same, one panel per perturbation.
"""

from __future__ import annotations

import csv
import io
import math
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.atomic import replace_directory, write_bytes
from components.core.config import ConfigError, Head, RobustnessParams
from components.core.devices import cpu_threads
from components.core.errors import DataError
from components.data.dataset import SPLITS, read_dataset
from components.evaluation import perturbations
from components.evaluation.metrics import metrics_for
from components.evaluation.reports import Perturbation, RobustnessReport, Scores
from components.features.contract import FEATURES, FeaturizerState, encode_texts, load_tokenizer
from components.models import MultiTaskModel
from components.models.multitask import OTHER_MODALITIES
from components.models.store import (
    EVAL_BATCH,
    digest,
    load_for_scoring,
    model_inputs,
    monitored_head,
    trim_padding,
)

__all__ = ["HEADS", "RobustnessResult", "robustness", "severity_key"]

HEADS: tuple[str, ...] = typing.get_args(Head)  # every plot file has all of them, so one dvc.yaml fits any dataset
PLOTS_MARKER = "*_*.csv"  # every file is <perturbation>.csv, and every perturbation name has an underscore
TEXT_BATCH = 64  # texts per transformer pass when token states are recomputed


LOWER_IS_BETTER = frozenset({"mae"})  # points lost need a metric where more is better


def robustness_metric(kind: str, metric: str | None) -> str:
    """The metric robustness plots and gates on: `metric`, or acc2 for scores and accuracy for classes."""
    if metric in LOWER_IS_BETTER:
        raise ConfigError(
            f"robustness.metric {metric!r}: robustness is reported as points lost, which needs a metric where higher "
            "is better (acc2, f1, acc7, corr; accuracy, f1_weighted for classes); every metric is in the report"
        )
    return metric or ("acc2" if kind == "regression" else "accuracy")


def check_plots_directory(path: Path) -> None:
    """robustness.plots is replaced as a whole: refuse, before any work, a directory holding anything but the plot
    files this stage writes (`<perturbation>.csv`)."""
    ours = {f"{name}.csv" for name in perturbations.MODALITY}
    if path.is_dir() and (foreign := sorted(p.name for p in path.iterdir() if p.name not in ours)):
        raise ConfigError(
            f"robustness.plots {path} holds files this stage did not write ({', '.join(foreign[:3])}): it replaces "
            "the directory as a whole, so point robustness.plots at a directory of its own"
        )


def severity_key(severity: float) -> str:
    """A severity as the report, the plots and MLflow's metric names write it: 0.1, 0.25, 1."""
    return f"{severity:g}"


@dataclass
class RobustnessResult:
    report: Path
    plots: Path
    figure: Path
    split: str
    metric: str
    head: str  # the monitored head, summarised
    scores: RobustnessReport  # what the report holds
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        clean = self.scores.clean[self.head][self.metric]
        assert clean is not None  # a number (NaN at worst) until the report is read back from its file
        worst = []
        for name, entry in self.scores.perturbations.items():
            severities = entry.severities
            middle = list(severities)[len(severities) // 2]
            value = severities[middle].get(self.head, {}).get(self.metric)
            if value is not None:
                # change = perturbed - clean, signed, in points: the project's one convention for every change
                worst.append((value, f"{name} {middle} {100 * value:.1f} ({100 * (value - clean):+.1f} points)"))
        lowest = ", ".join(text for _, text in sorted(worst)[:3])
        text = (
            f"robustness: {self.split} {self.head} {self.metric} clean {100 * clean:.1f}; lowest at middle severity: "
            f"{lowest or 'n/a'}; report -> {self.report}, plots -> {self.plots}, {self.figure} ({self.seconds:.1f} s)"
        )
        return text + "".join(f"; {note}" for note in self.notes)


def robustness(
    raw: str | Path, features: str | Path, model_dir: str | Path, params: RobustnessParams, *, progress: bool = True
) -> RobustnessResult:
    """Score the model `train` wrote to `model_dir` on `params.split` of `features` under every perturbation of
    `params.perturbations`; `raw` (the canonical dataset) gives the texts. Writes the report, plots and figure.

    Raises DataError for an empty split or features of another dataset, TrainingError for a missing model or one
    trained on other features, ConfigError for an unknown metric or an unavailable device.
    """
    with cpu_threads(params.threads):
        return _robustness(raw, features, model_dir, params, progress=progress)


def _robustness(
    raw: str | Path, features: str | Path, model_dir: str | Path, params: RobustnessParams, *, progress: bool = True
) -> RobustnessResult:
    start = time.perf_counter()
    from tqdm.auto import tqdm

    check_plots_directory(Path(params.plots))
    model_dir = Path(model_dir)
    model, _, arrays, state, device = load_for_scoring(model_dir, features, params.device, "robustness.device")
    spec = model.spec
    kind, head = spec.label.kind, monitored_head(spec)
    metric = robustness_metric(kind, params.metric)
    rows = np.flatnonzero(arrays["split"] == SPLITS.index(params.split))
    if not len(rows):
        raise DataError(Path(features) / FEATURES, f"split {params.split!r} has no samples (robustness.split)")
    clean = {k: v[rows] for k, v in arrays.items() if k != "split"}
    ids = [state.ids[i] for i in rows]
    scorer = _Scorer(model, device, clean)
    scores = scorer(Perturbed(_flags(clean)))
    if metric not in scores.get(head, {}):
        raise ConfigError(f"robustness.metric {metric!r} is not one of {sorted(scores.get(head, {}))}")

    runnable, skipped = _settings(params, spec)
    text = _TextInputs(raw, state, params, ids, spec) if any(n.startswith("text_") for n, _ in runnable) else None
    severities: dict[str, dict[str, dict[str, Scores]]] = {}
    for name, severity in tqdm(runnable, desc="robustness", unit="setting", disable=None if progress else True):
        perturbed = _perturb(name, severity, clean, ids, params.seed, state, text)
        severities.setdefault(name, {})[severity_key(severity)] = scorer(perturbed)
    entries = {n: Perturbation(modality=perturbations.MODALITY[n], severities=s) for n, s in severities.items()}
    report = RobustnessReport(
        model_digest=digest(model_dir),
        split=params.split,
        metric=metric,
        head=head,
        seed=params.seed,
        samples=len(ids),
        clean=scores,
        perturbations=entries,
        skipped=skipped,
    )

    with replace_directory(params.plots, marker=PLOTS_MARKER) as staging:
        for name, entry in report.perturbations.items():
            write_bytes(staging / f"{name}.csv", _plot_csv(scores, entry.severities, metric))
    write_bytes(params.figure, _figure_png(report, metric, head))
    return RobustnessResult(
        report=report.write(params.report),
        plots=Path(params.plots),
        figure=Path(params.figure),
        split=params.split,
        metric=metric,
        head=head,
        scores=report,
        notes=skipped,
        seconds=time.perf_counter() - start,
    )


def _settings(params: RobustnessParams, spec: Any) -> tuple[Sequence[tuple[str, float]], list[str]]:
    """The (perturbation, severity) settings the model has the modality for, and a note for each it has not."""
    modalities = _modalities(spec)
    settings = [(name, s) for name, severities in params.perturbations.items() for s in severities]
    runnable = [(name, s) for name, s in settings if perturbations.MODALITY[name] in modalities]
    skipped = [
        f"{name}: the model has no {perturbations.MODALITY[name]}"
        for name in params.perturbations
        if perturbations.MODALITY[name] not in modalities
    ]
    return runnable, skipped


def _modalities(spec: Any) -> set[str]:
    return ({"text"} if spec.text is not None else set()) | {m for m in OTHER_MODALITIES if getattr(spec, m)}


@dataclass(frozen=True)
class Perturbed:
    """One perturbation of the split: presence as it now is, and the rows whose `modality` inputs changed, with
    their perturbed arrays (a missing modality changes presence alone)."""

    flags: dict[str, np.ndarray]  # the presence arrays of the whole split (_PRESENCE_KEYS)
    modality: str | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class _Scorer:
    """Every head's metrics on a (perturbed) split, each over the samples that still have its modality.

    The clean split's encoder representations are computed once; a perturbation of one modality reruns only that
    modality's encoders (a missing one none: presence alone changes), then fusion and the heads. The same outputs as
    the whole model on the perturbed split, at a fraction of the cost.
    """

    def __init__(self, model: MultiTaskModel, device: torch.device, clean: dict[str, np.ndarray]) -> None:
        self.model, self.device, self.labels = model, device, clean["label"]
        self.clean = self._represent(clean, None)

    def _represent(self, arrays: dict[str, np.ndarray], modality: str | None) -> dict[str, torch.Tensor]:
        tensors = model_inputs(arrays, self.model.spec)
        chunks: dict[str, list[torch.Tensor]] = {}
        with torch.inference_mode():
            for part in torch.arange(len(arrays["label"])).split(EVAL_BATCH):
                batch = trim_padding({k: v[part] for k, v in tensors.items()})
                batch = {k: v.to(self.device) for k, v in batch.items()}
                for name, value in self.model.represent(batch, None if modality is None else {modality}).items():
                    chunks.setdefault(name, []).append(value.float())
        return {name: torch.cat(values) for name, values in chunks.items()}

    def __call__(self, perturbed: Perturbed) -> dict[str, dict[str, Any]]:
        spec, representations = self.model.spec, dict(self.clean)
        if perturbed.modality is not None and len(perturbed.rows):
            rows = torch.from_numpy(perturbed.rows).to(self.device)
            for name, value in self._represent(perturbed.arrays, perturbed.modality).items():
                representations[name] = representations[name].index_copy(0, rows, value)
        flags = {k: torch.from_numpy(v).to(self.device) for k, v in perturbed.flags.items()}
        with torch.inference_mode():
            outputs = self.model.heads_from(representations, flags)
            presence = self.model.presence(flags)
        scores = {}
        for head, prediction in outputs.items():
            present = presence[head].cpu().numpy()
            if present.any():
                values = prediction.float().cpu().numpy()[present]
                metrics = metrics_for(spec.label.kind, values, self.labels[present], spec.label.classes)
                scores[head] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
                scores[head]["samples"] = int(present.sum())
        return scores


_PRESENCE_KEYS = ("text.attention_mask", *(f"{m}.present" for m in OTHER_MODALITIES))  # what presence reads


class _TextInputs:
    """The split's texts, the train split's vocabulary (what replaced words are drawn from), and featurize's text
    path: the tokenizer, and the frozen transformer when the model reads precomputed token states."""

    def __init__(self, raw: str | Path, state: FeaturizerState, params: RobustnessParams, ids: list[str], spec: Any):
        from components.features.text_model import resolve_text_model

        samples = read_dataset(raw).samples
        by_id = dict(zip(samples["id"], samples["text"], strict=True))
        if missing := [i for i in ids if i not in by_id]:
            raise DataError(
                Path(raw), f"sample {missing[0]!r} of the features is not in the dataset: run `msa featurize`"
            )
        self.texts = [by_id[i] for i in ids]
        self.vocabulary = perturbations.vocabulary(samples.loc[samples["split"] == "train", "text"].tolist())
        text_state = state.text
        assert text_state is not None  # text perturbations run only on a model that reads text
        self.state = text_state
        path = resolve_text_model(text_state.model)
        self.tokenizer = load_tokenizer(path)
        self.transformer = None
        if spec.text.mode == "frozen":
            from components.features.contract import text_transformer

            self.transformer = text_transformer(path, params.device)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        from components.features.contract import token_states

        encoded = encode_texts(self.tokenizer, texts, self.state)
        if self.transformer is not None:
            ids, mask = encoded["text.input_ids"], encoded["text.attention_mask"]
            encoded["text.states"] = token_states(self.transformer, ids, mask, batch_size=TEXT_BATCH)
        return encoded


def _perturb(
    name: str,
    severity: float,
    clean: dict[str, np.ndarray],
    ids: list[str],
    seed: int,
    state: FeaturizerState,
    text: _TextInputs | None,
) -> Perturbed:
    """The split with one perturbation applied (the clean arrays are never changed)."""
    flags = _flags(clean)
    modality = perturbations.MODALITY[name]
    if name.startswith("missing_"):
        key = "text.attention_mask" if modality == "text" else f"{modality}.present"
        # numpy's stub types any(axis) as scalar-or-array: over axis 1 of the [N, T] mask it is the array [N]
        present = typing.cast(np.ndarray, clean[key].any(1)) if modality == "text" else clean[key]
        kept = perturbations.drop_modality(present, ids, severity, seed, name)
        return Perturbed(flags | {key: clean[key] & (kept[:, None] if modality == "text" else kept)})
    if modality == "text":
        assert text is not None
        perturbed = perturbations.perturb_texts(name, text.texts, ids, severity, seed, text.vocabulary)
        # Only the texts that changed are featurized and encoded again: a transformer pass each.
        rows = np.flatnonzero([new != old for new, old in zip(perturbed, text.texts, strict=True)])
        if not len(rows):
            return Perturbed(flags)
        arrays = {k: v[rows] for k, v in clean.items()} | text.encode([perturbed[i] for i in rows])
        return Perturbed(flags, modality, rows, arrays)
    arrays = dict(clean)
    if modality == "image":
        arrays["image.pixels"] = perturbations.perturb_images(name, clean["image.pixels"], ids, severity, seed)
    else:
        sequence = getattr(state, modality)
        silence = -np.asarray(sequence.mean, np.float32) / np.asarray(sequence.std, np.float32)
        features, mask = clean[f"{modality}.features"], clean[f"{modality}.mask"]
        arrays[f"{modality}.features"], arrays[f"{modality}.mask"] = perturbations.perturb_sequences(
            name, features, mask, ids, severity, seed, silence
        )
    return Perturbed(flags, modality, np.arange(len(ids)), arrays)


def _flags(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k in _PRESENCE_KEYS}


# ---------------------------------------------------------------------------------------------------------------------
# plot data and figure


def _points(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{100 * value:.4f}"


def _plot_csv(clean: dict[str, Scores], severities: dict[str, dict[str, Scores]], metric: str) -> bytes:
    """severity, one column per head name (points; empty where the model lacks the head or nothing was scored)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["severity", *HEADS])
    for severity, heads in {"0": clean, **severities}.items():
        writer.writerow([severity, *(_points(heads.get(h, {}).get(metric)) for h in HEADS)])
    return buffer.getvalue().encode()


def _figure_png(report: RobustnessReport, metric: str, monitored: str) -> bytes:
    from components.core.figures import grid, png

    entries = report.perturbations
    figure, axes = grid(max(len(entries), 1), width=3.4, height=2.9)
    heads = list(report.clean)
    for ax, (name, entry) in zip(axes, entries.items(), strict=False):
        severities = {"0": report.clean, **entry.severities}
        x = [float(s) for s in severities]
        for head in heads:
            y = [float(_points(scores.get(head, {}).get(metric)) or "nan") for scores in severities.values()]
            ax.plot(x, y, marker="o", markersize=3, label=head, linewidth=2.2 if head == monitored else 1.0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("severity", fontsize=8)
        ax.set_ylabel(f"{metric} (points)", fontsize=8)
        ax.tick_params(labelsize=7)
    if entries:
        axes[0].legend(fontsize=7)
    figure.suptitle(f"{report.split} {metric} under perturbation, per head ({monitored} thick)")
    return png(figure)
