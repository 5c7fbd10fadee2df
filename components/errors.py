"""The one exception type users see: it names the file, the row and the rule that was broken."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input: `str()` reads `FILE, row N (id X): rule broken`."""

    def __init__(self, path: str | Path, rule: str, *, row: int | None = None, sample_id: str | None = None):
        self.path = Path(path)
        self.rule = rule
        self.row = row
        self.sample_id = sample_id
        where = str(self.path)
        if row is not None:
            where += f", row {row}"
        if sample_id is not None:
            where += f" (id {sample_id})"
        super().__init__(f"{where}: {rule}")


class TrainingError(RuntimeError):
    """Training cannot go on: a non-finite loss, or a checkpoint that does not fit this model."""


class TrackingError(RuntimeError):
    """MLflow could not log or register: an unreachable server, a conflicting registered model, a failed step."""
