"""What tuning writes for others to read, typed: the tune report (`TuneReport`, `tune.report`, one `TrialResult` per
trial). The multi-seed record training writes (`SeedsReport`, `train.out/seeds.json`) describes the trained model's
files and lives beside them (components.models.seeds).

Each stage writes through its model (`write`), so the JSON keeps its shape and key order; each reader validates the
file (`read`), and a file that does not fit is a DataError naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from components.core.atomic import write_bytes
from components.core.errors import DataError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; only annotations name it

__all__ = ["TrialResult", "TuneReport"]


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def _read(cls, path: str | Path, fix: str) -> Self:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise DataError(path, f"missing or unreadable ({type(e).__name__}); {fix}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}" for err in e.errors())
            raise DataError(path, f"not a {cls.__name__} ({problems}); {fix}") from None

    def write(self, path: str | Path) -> None:
        """Indented JSON, in the fields' order (a NaN stays NaN, as json.dumps writes it)."""
        write_bytes(path, (json.dumps(self.model_dump(mode="json"), indent=2) + "\n").encode())


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


class TuneReport(_Report):
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

    @classmethod
    def read(cls, path: str | Path) -> Self:
        return cls._read(path, "run `msa tune`")
