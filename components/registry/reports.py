"""The stages' reports as registration reads them: each through its stage's typed report, refused as registration
always refused one it could not read (a TrackingError naming the stage to run); nothing is registered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from components.compression.report import CompressionReport
from components.core.errors import DataError, TrackingError
from components.evaluation.reports import EvaluationReport, RobustnessReport, SeedSummary
from components.models.seeds import SeedsReport

__all__ = ["compression", "evaluation", "robustness", "seed_summary", "trained_seeds", "validation_metrics"]

Report = TypeVar("Report")


def evaluation(path: Path) -> EvaluationReport:
    """evaluate.report."""
    return _read(EvaluationReport.read, path, "; run `msa evaluate`")


def compression(path: Path) -> CompressionReport | None:
    """compress.report; None when compress did not run."""
    return _read(CompressionReport.read, path) if path.exists() else None


def robustness(path: Path) -> RobustnessReport:
    """robustness.report."""
    return _read(RobustnessReport.read, path, "; run `msa robustness`")


def seed_summary(path: Path) -> SeedSummary | None:
    """evaluate.seeds; None when evaluate wrote none."""
    return _read(SeedSummary.read, path, "; run `msa evaluate`") if path.is_file() else None


def trained_seeds(path: Path) -> SeedsReport:
    """The seeds record training writes in train.out with train.seeds > 1."""
    return _read(SeedsReport.read, path)


def validation_metrics(path: Path) -> dict[str, int]:
    """The validate stage's report (it has no typed reader) as the run's metrics: expectations evaluated, failed."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise TrackingError(f"{path}: missing or unreadable ({type(e).__name__}); run `msa validate`") from None
    return {"validation_expectations": report["evaluated"], "validation_failed": report["failed"]}


def _read(read: Callable[[Path], Report], path: Path, fix: str = "") -> Report:
    """`read(path)`; its refusal a TrackingError, with `fix` where the report's own message names no stage."""
    try:
        return read(path)
    except DataError as e:
        raise TrackingError(f"{e}{fix}") from None
