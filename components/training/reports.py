"""What tuning writes for others to read, typed: the tune report (`TuneReport`, `tune.report`, one `TrialResult` per
trial). The multi-seed record training writes (`SeedsReport`, `train.out/seeds.json`) describes the trained model's
files and lives beside them (components.models.seeds).

Each stage writes through its model (`write`), so the JSON keeps its shape and key order; each reader validates the
file (`read`), and a file that does not fit is a DataError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.core.reports import Report

__all__ = ["TrialResult", "TuneReport"]


@dataclass
class TrialResult:
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    values: dict[str, Any]  # the settings it tried, by dotted key
    value: float | None  # the best valid value its training reached (None when pruned before any, or failed)
    epochs: int
    seconds: float
    retry_of: int | None = None  # the killed trial it continued

    def summary(self) -> str:
        score = "" if self.value is None else f" {self.value:.4f}"
        retry = "" if self.retry_of is None else f", retry of trial {self.retry_of}"
        return f"trial {self.number}: {self.state}{score} after {self.epochs} epochs ({self.seconds:.1f} s{retry})"


class TuneReport(Report):
    rerun = "run `msa tune`"

    """A study as `msa tune` concluded it: every trial, the best completed one, and how it differs from the
    settings the study was concluded with."""

    study: str
    storage: str  # its URL without a password
    monitor: str  # "valid <head> <metric>"
    direction: str  # minimize or maximize
    space: dict[str, dict[str, Any]]  # setting -> its search dimension, unset fields left out
    best: TrialResult | None
    best_is_current: bool  # the settings as they are scored best: no experiment to run
    changes: dict[str, Any]  # the best trial's values that differ from the current settings
    trials: list[TrialResult]
