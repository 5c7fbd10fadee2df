"""The compress report (`CompressionReport`, `compress.report`): every measurement of the uncompressed model and of
each variant, written by the compress stage, read by registration (the variant to serve: `served_variant`) and the
model card. And the one convention of a change (`change`): the variant's value minus the uncompressed model's,
signed, in points (100 x the metric) except for mae, in its own units (`change_unit`).

The stage writes through the model (NaN as null), so the JSON keeps its shape and key order; `read` validates a
file, and one that does not fit is a DataError naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from components.core.config import ConfigError
from components.core.reports import Report

__all__ = [
    "LOWER_IS_BETTER",
    "CompressionReport",
    "Measurement",
    "VariantReport",
    "change",
    "change_unit",
    "drop_points",
    "format_change",
    "served_variant",
    "versus_baseline",
]

LOWER_IS_BETTER = frozenset({"mae"})
ChangeUnit = Literal["points", "mae"]


class Measurement(BaseModel):
    """A model's size, parameter counts (the task part: all but the carried transformer), speed on the CPU and test
    metrics: the uncompressed model's, and each variant's."""

    model_config = ConfigDict(extra="forbid")

    size_bytes: int  # of its weights file
    params: int
    nonzero_params: int
    task_params: int
    task_nonzero_params: int
    latency_ms_p50: float  # at batch 1
    latency_ms_p95: float
    throughput_per_s: float  # at compress.throughput_batch
    # How far a test row's outputs move when it is scored alone rather than in a batch (measure.batch_dependence).
    batch_dependence: float
    metrics: dict[str, float | None]  # the monitored head's scalar test metrics (None: undefined)


class VariantReport(Measurement):
    delta: dict[str, float | None]  # per metric: variant - baseline, in the metric's units
    max_abs_diff: float | None  # the largest difference from the baseline's outputs
    change: float | None  # of the report's metric: variant - baseline, signed, in `change_unit`
    # The change's paired bootstrap bounds over the test rows, each one-sided at the report's `confidence`.
    change_low: float | None
    change_high: float | None
    kept: bool  # its worse bound within compress.tolerance, batch_dependence within BATCH_TOLERANCE: in `path`
    path: str | None
    sparsity: float
    finetune_epochs: int
    started: float  # unix seconds: when its own work began
    seconds: float  # its own work: building, fine-tuning, scoring and timing it


class CompressionReport(Report):
    rerun = "run `msa compress`"

    model_digest: str  # the trained model these are of: registration refuses a report of another
    head: str
    metric: str
    tolerance: float
    confidence: float  # of each bound of a variant's change (`change_low`, `change_high`)
    resamples: int  # of the paired bootstrap that gives the bounds
    batch_tolerance: float  # the most a kept variant's outputs move when a row is scored alone (batch_dependence)
    change_unit: ChangeUnit
    split: Literal["test"]
    baseline: Measurement
    variants: dict[str, VariantReport]


def served_variant(report: CompressionReport | Mapping[str, Any], setting: str, where: Path) -> str | None:
    """The variant a registered model serves, from compress's `report` (read from `where`; typed, or as JSON, {} when
    compress did not run): `setting` "auto" is the fastest at batch 1 (median) of the uncompressed model and every
    kept variant, "baseline" the uncompressed model; None stands for the uncompressed model. A named variant must
    have been kept."""
    if isinstance(report, CompressionReport):
        report = report.model_dump()
    variants = report.get("variants", {})
    kept = {name: v for name, v in variants.items() if v["kept"]}
    if setting == "baseline":
        return None
    if setting == "auto":
        fastest = min(kept, key=lambda name: kept[name]["latency_ms_p50"], default=None)
        baseline = report.get("baseline", {}).get("latency_ms_p50", math.inf)
        return fastest if fastest is not None and kept[fastest]["latency_ms_p50"] < baseline else None
    if setting not in kept:
        why = "was not measured" if setting not in variants else "lost more than compress.tolerance"
        raise ConfigError(
            f"register.variant {setting!r}: {where} {why}; kept: {sorted(kept) or 'none'} (or use auto, baseline)"
        )
    return setting


def versus_baseline(baseline: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, float | bool | None]:
    """A variant's headline (short keys: they are `dvc exp show`'s column names): how many times smaller than the
    baseline and faster at batch 1 (medians), the metric's change (variant - baseline, see `change`), the bounds
    of that change (`low`, `high`) and whether the variant was kept."""
    return {
        "smaller": round(baseline["size_bytes"] / variant["size_bytes"], 4),
        "faster": round(baseline["latency_ms_p50"] / variant["latency_ms_p50"], 4),
        "change": round(variant["change"], 4),
        "low": None if variant.get("change_low") is None else round(variant["change_low"], 4),
        "high": None if variant.get("change_high") is None else round(variant["change_high"], 4),
        "kept": variant.get("kept"),
    }


def change_unit(metric: str) -> ChangeUnit:
    """The unit of a change of `metric`: points (100 x the metric) but for mae, which is in the labels' units."""
    return "mae" if metric in LOWER_IS_BETTER else "points"


def change(metric: str, reference: float, value: float) -> float:
    """`value` - `reference`, signed, in points (100 x) except for mae (own units): the project's one convention."""
    return value - reference if metric in LOWER_IS_BETTER else 100.0 * (value - reference)


def format_change(metric: str, value: float) -> str:
    return f"{value:+.4f}" if metric in LOWER_IS_BETTER else f"{value:+.2f} points"


def drop_points(metric: str, baseline: float, value: float) -> float:
    """How much worse `value` is, in percentage points (positive = worse): what `tolerance` limits, and no more than
    that (what is reported is the signed `change`)."""
    worse = value - baseline if metric in LOWER_IS_BETTER else baseline - value
    return 100.0 * worse
