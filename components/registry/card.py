"""The model card: the Markdown (`model_card.md`) logged into a registered version's run, from what the stages
reported of its data, code, metrics, compression, robustness and seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from components.evaluation.reports import RobustnessReport

if TYPE_CHECKING:
    from components.compression.report import CompressionReport
    from components.evaluation.reports import HeadScores, SeedSummary
    from components.models.store import ModelCard

__all__ = ["model_card", "seeds_tag"]


_USE_AND_LIMITS = (
    "## Intended use",
    "",
    "Scoring the sentiment of short opinion utterances or posts (text, with an image and/or audio/visual "
    "feature sequences where the training data had them), for research and for comparing models in this "
    "pipeline. Input: the raw columns in the model's signature; output: `score` and `class`.",
    "",
    "## Limits",
    "",
    "- Trained on one dataset: scores outside its domain, language and label range are not calibrated.",
    "- Audio/visual sequences must be extracted exactly as in training (same feature extractor and dimension).",
    "- The text encoder is frozen or fine-tuned from a general-purpose sentence model; sarcasm and long texts "
    "(beyond the tokenizer's max_tokens) are truncated or missed.",
    "- Not for decisions about individuals.",
)


def model_card(
    tags: Mapping[str, str],
    synthetic: bool,
    card: ModelCard,
    metrics: Mapping[str, Mapping[str, HeadScores]],
    compression: CompressionReport | None,
    served: str = "baseline",
    robust: RobustnessReport | None = None,
    seeds: SeedSummary | None = None,
) -> str:
    """Markdown for the run's `model_card.md`; `tags` are the run's (`run_tags`): dataset, data hash, commit.
    `metrics`: the evaluate report's scores, split -> head -> metrics."""
    head, dataset, version = card.monitor.head, tags["dataset"], tags["dataset_version"]
    lines = [
        f"# Multimodal sentiment model: {dataset} v{version}",
        "",
        f"- **Data**: dataset `{dataset}` version `{version}` (content hash `{tags['data_hash']}`, "
        f"data.dvc md5 `{tags['data_dvc_md5']}`)" + (" - SYNTHETIC demo data, not real sentiment" if synthetic else ""),
        f"- **Code**: git `{tags['git_commit']}`, components hash `{tags['code_hash']}`; "
        f"params hash `{tags['params_hash']}`",
        f"- **Architecture**: heads {', '.join(card.spec.heads)}; predictions come from `{head}`",
        f"- **Selected by**: valid {card.monitor.metric} {card.monitor.value:.4f} at epoch {card.monitor.epoch}",
        *_seeds_lines(seeds, head),
        "",
        "## Metrics (test split)",
        "",
    ]
    keys = [k for k, v in metrics["test"][head].items() if isinstance(v, int | float)]
    lines += ["| head | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for h, values in metrics["test"].items():
        lines.append(f"| {h} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    if compression is not None:
        lines += ["", *_compression_section(compression, head, served)]
    if robust is not None:
        lines += ["", *_robustness_section(robust, head)]
    lines += ["", *_USE_AND_LIMITS]
    if synthetic:
        lines.append("- This model was trained on SYNTHETIC demo data: its metrics say nothing about real sentiment.")
    return "\n".join(lines) + "\n"


def seeds_tag(seeds: SeedSummary | None) -> str:
    """`3 seeds (0, 1, 2), chosen 1` for a multi-seed training, `1` otherwise."""
    if seeds is None or not seeds.seeds:
        return "1"
    return f"{len(seeds.seeds)} seeds ({', '.join(map(str, seeds.seeds))}), chosen {seeds.chosen}"


def _seeds_lines(seeds: SeedSummary | None, head: str) -> list[str]:
    """The model card's seeds line: which seed this is, and the test metrics as mean ± std over every seed."""
    if seeds is None or not seeds.seeds:
        return []
    test = {k: (v, seeds.std["test"][head][k]) for k, v in seeds.mean.get("test", {}).get(head, {}).items()}
    spread = ", ".join(
        f"{k} {m:.4f} ± {sd:.4f}"
        for k, (m, sd) in test.items()
        if k in ("acc2", "f1", "mae", "corr", "accuracy", "f1_weighted")
    )
    return [
        f"- **Seeds**: trained with seeds {', '.join(map(str, seeds.seeds))}; this is seed {seeds.chosen}, the "
        f"best by {seeds.selected_by} (never by test). Test `{head}` over the seeds: {spread}"
    ]


def _compression_section(compression: CompressionReport, head: str, served: str) -> list[str]:
    """What this version serves, and each variant's size, speed and change against the uncompressed model."""
    lines = [f"## Compression (test split, {compression.metric} of `{head}`)", ""]
    serving = "the uncompressed model" if served == "baseline" else f"`{served}`"
    lines += [f"This version serves {serving} (register.variant).", ""]
    # variant - uncompressed, signed (negative: it scores lower), in the report's change_unit
    unit = compression.change_unit
    change_head = f"change ({unit}, vs uncompressed)"
    bounds_head = f"{100 * compression.confidence:.0f}% bounds"
    lines += [
        f"| variant | size MB | non-zero params | p50 ms (batch 1) | per s (batch 64) | {change_head} | {bounds_head} "
        "| kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("uncompressed", compression.baseline, "(reference)", "", True)]
    rows += [
        (name, v, _signed(v.change, unit), f"{_signed(v.change_low, unit)}, {_signed(v.change_high, unit)}", v.kept)
        for name, v in compression.variants.items()
    ]
    for variant, f, change, bounds, kept in rows:
        lines.append(
            f"| {variant} | {f.size_bytes / 1e6:.1f} | {f.nonzero_params:,} | {f.latency_ms_p50:.1f} | "
            f"{f.throughput_per_s:.0f} | {change} | {bounds} | {kept} |"
        )
    lines += [
        "",
        f"A variant is kept when the worse of its bounds (a paired bootstrap over the test rows, "
        f"{compression.resamples} resamples) loses at most {compression.tolerance:g} points.",
    ]
    return lines


def _robustness_section(report: RobustnessReport | Mapping[str, Any], head: str) -> list[str]:
    """The monitored head's robustness metric under each perturbation, in points, and its change at the middle
    severity (perturbed - clean, signed: negative is what the model loses when its inputs are noisy or missing). A
    report as JSON is validated first."""
    report = RobustnessReport.model_validate(report)
    metric = report.metric
    clean = cast("float", report.clean[head][metric])
    lines = [
        f"## Robustness ({report.split} split, {metric} of `{head}` in points, clean {100 * clean:.1f})",
        "",
        "Inputs perturbed at each severity (components/evaluation/perturbations.py, seed "
        f"{report.seed}); the change is perturbed - clean at the middle severity (negative: a loss).",
        "",
        "| perturbation | severities: score | change (points) |",
        "|---|---|---|",
    ]
    for name, entry in report.perturbations.items():
        scores = {s: v.get(head, {}).get(metric) for s, v in entry.severities.items()}
        middle = scores[list(scores)[len(scores) // 2]]
        cells = ", ".join(f"{s}: {'n/a' if v is None else f'{100 * v:.1f}'}" for s, v in scores.items())
        change = "n/a" if middle is None else f"{100 * (middle - clean):+.1f}"
        lines.append(f"| {name} | {cells} | {change} |")
    lines += [f"- skipped: {why}" for why in report.skipped]
    return lines


def _signed(value: float | None, unit: str) -> str:
    """A change (new - reference) with its sign: +0.00 points, -0.0123 mae."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.2f}" if unit == "points" else f"{value:+.4f}"


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
