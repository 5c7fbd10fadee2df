"""What the compress stage logs into a pipeline run, as a `Logged` payload (components.tracking logs it): a child
run per variant, with the settings that tell it apart and its measurements, lasting as long as its own work; the
uncompressed model's measurements on the parent; the report. And the table of the variants a flow run shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.compression.report import CompressionReport, Measurement, VariantReport
from components.tracking import Artifact, ChildRun, Logged

__all__ = [
    "VARIANT",
    "VARIANT_RUN_NAMES",
    "compression_logged",
    "compression_metrics",
    "compression_table",
    "variant_params",
    "variant_span",
]

VARIANT = "msa.variant"  # the tag of a variant's run
VARIANT_RUN_NAMES = {
    "int8": "int8",
    "prune_unstructured": "unstructured prune",
    "prune_structured": "structured prune",
    "onnx_fp32": "ONNX Runtime fp32",
    "onnx_int8": "ONNX Runtime int8",
}


def compression_logged(report: CompressionReport, report_path: Path, tolerance: float) -> Logged:
    """A run per variant with its settings and measurements; the uncompressed model's measurements on the parent.

    A variant's run lasts as long as its own work: the `seconds` compress records for it (building, fine-tuning,
    scoring and timing it) from its `started`."""
    children = tuple(
        ChildRun(
            "variant",
            VARIANT_RUN_NAMES.get(name, name),
            Logged(
                metrics=compression_metrics(variant) | _change(variant),
                params=variant_params(name, variant, report.metric, tolerance) | {"confidence": report.confidence},
                tags={"msa.kept": str(variant.kept)},
            ),
            tags={VARIANT: name},
            span=variant_span(variant),
        )
        for name, variant in report.variants.items()
    )
    artifacts = (Artifact(report_path, "reports"),)
    return Logged(metrics=compression_metrics(report.baseline), artifacts=artifacts, children=children)


def variant_params(name: str, variant: VariantReport, metric: str, tolerance: float) -> dict[str, Any]:
    """The settings that tell a variant's run apart."""
    return {
        "variant": name,
        "sparsity": round(variant.sparsity, 4),
        "finetune_epochs": variant.finetune_epochs,
        "tolerance_points": tolerance,
        "metric": metric,
        "kept": variant.kept,
    }


def _change(variant: VariantReport) -> dict[str, float | None]:
    """The metric's change (variant - uncompressed, signed) and its paired bootstrap bounds: what the gate read."""
    return {"change": variant.change, "change_low": variant.change_low, "change_high": variant.change_high}


def variant_span(variant: VariantReport) -> tuple[int, int]:
    """(start, end) in ms of a variant's run: its own `seconds` of work from its `started`."""
    return int(variant.started * 1000), int((variant.started + variant.seconds) * 1000)


def compression_metrics(measured: Measurement) -> dict[str, float | None]:
    """A model's measurements: its test metrics (`test_<metric>`), size, nonzero params, latency and throughput."""
    return {f"test_{k}": v for k, v in measured.metrics.items()} | {
        "size_mb": measured.size_bytes / 1e6,
        "nonzero_params": measured.nonzero_params,
        "latency_ms_p50": measured.latency_ms_p50,
        "latency_ms_p95": measured.latency_ms_p95,
        "throughput_per_s": measured.throughput_per_s,
        "batch_dependence": measured.batch_dependence,
    }


def compression_table(report: CompressionReport) -> list[dict[str, Any]]:
    """One row per model, the uncompressed one (fp32) first: size, latency and their ratios to it, throughput, the
    change of the metric, and whether the variant was kept."""
    base = report.baseline
    return [_row("fp32", base, base)] + [_row(name, v, base) for name, v in report.variants.items()]


def _row(name: str, measured: Measurement, base: Measurement) -> dict[str, Any]:
    variant = measured if isinstance(measured, VariantReport) else None
    return {
        "variant": name,
        "size_mb": round(measured.size_bytes / 1e6, 1),
        "x_smaller": round(base.size_bytes / measured.size_bytes, 2),
        "p50_ms_batch1": round(measured.latency_ms_p50, 1),
        "x_faster": round(base.latency_ms_p50 / measured.latency_ms_p50, 2),
        "samples_per_s": round(measured.throughput_per_s),
        # variant - uncompressed, signed, and the bounds of its paired bootstrap
        "change": None if variant is None or variant.change is None else round(variant.change, 4),
        "change_low": None if variant is None or variant.change_low is None else round(variant.change_low, 4),
        "change_high": None if variant is None or variant.change_high is None else round(variant.change_high, 4),
        "kept": "baseline" if variant is None else variant.kept,
    }
