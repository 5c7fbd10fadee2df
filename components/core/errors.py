"""The errors users see. Each is a problem the user can fix, so the CLI prints its message as one line and exits 1
(`flows.cli` catches `UserError` in one place); anything else is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "DataError",
    "TrackingError",
    "TrainingError",
    "TrainingInterrupted",
    "UntrustedModelError",
    "UserError",
    "first_line",
]


class UserError(Exception):
    """Base of every error caused by input, settings or the environment rather than by this code."""


class DataError(UserError, ValueError):
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


class ConfigError(UserError, ValueError):
    """`params.yaml` is missing, unparsable, or breaks its schema; or a setting this machine cannot satisfy."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on: a non-finite loss, or a checkpoint that does not fit this model."""


class TrainingInterrupted(UserError):
    """Ctrl-C (or SIGTERM) during training: says where it stopped and what the next `msa train` does."""

    exit_code = 130  # the shell's convention for a run ended by SIGINT


class TrackingError(UserError, RuntimeError):
    """MLflow could not log or register: an unreachable server, a conflicting registered model, a failed step."""


class UntrustedModelError(UserError):
    """A model this project did not package: loading it runs its code (pickle), so it needs --trust-model."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line: what a one-line report or a log line quotes."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
