"""The multi-seed record of a trained model (`SeedsReport`, `train.out/seeds.json`, `SEEDS` in
components.models.store), typed: training writes it through `write`, evaluation and registration read it through
`read`, which refuses a file that does not fit with a DataError naming it."""

from __future__ import annotations

from components.core.reports import Report

__all__ = ["SeedsReport"]


class SeedsReport(Report):
    """A training of train.seeds > 1: its seeds, each one's best valid value, and the seed whose model is the model
    (the best on valid, never chosen on test)."""

    rerun = "run `msa train`"

    seeds: list[int]
    chosen: int
    selected_by: str  # "valid <head> <metric>"
    valid: dict[str, float | None]  # seed (as a JSON key) -> its best monitored valid value (None: never a number)
