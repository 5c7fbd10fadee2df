"""Seeds: each rank's random stream per epoch (`stream_seed`), and the files of a multi-seed training (train.seeds
N > 1): every seed's model in `out/seeds/seed-<s>/`, the best on valid copied to `out`, and `out/seeds.json`
(`SeedsReport`) naming it. Rank 0 alone writes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from components.core.atomic import write_bytes
from components.evaluation.metrics import Kind, is_better
from components.models.seeds import SeedsReport
from components.models.store import CHECKPOINT, MODEL_FILES, SEEDS, SEEDS_DIR, remove_seed_models
from components.training.runtime import rank

__all__ = ["best_seed", "forget_seeds", "keep_best_seed", "seed_dir", "start_seeds", "stream_seed"]


def stream_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random stream (dropout) in one epoch; rank 0's differs from no other process's."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_dir(out: Path, seed: int) -> Path:
    """Where seed `seed` of a multi-seed training in `out` trains: its model files and its own checkpoint."""
    return out / SEEDS_DIR / f"seed-{seed}"


def start_seeds(out: Path, seeds: Iterable[int]) -> None:
    """Before a multi-seed training: no single-seed checkpoint, no seeds record, no model of a seed not in `seeds`."""
    if rank() == 0:
        (out / CHECKPOINT).unlink(missing_ok=True)  # a single-seed run's, which nothing here continues
        (out / SEEDS).unlink(missing_ok=True)  # written again last: a killed run leaves no record of other models
        remove_seed_models(out, keep={seed_dir(out, seed).name for seed in seeds})


def best_seed(kind: Kind, valid: Mapping[int, float]) -> int:
    """The seed with the best valid value (the first of equals)."""
    chosen = next(iter(valid))
    for seed, value in valid.items():
        if is_better(kind, value, valid[chosen]):
            chosen = seed
    return chosen


def keep_best_seed(out: Path, report: SeedsReport) -> None:
    """The chosen seed's model at the top of `out`, where evaluate, compress and registration read it, and the
    record that names it."""
    if rank() == 0:
        for name in MODEL_FILES:
            write_bytes(out / name, (seed_dir(out, report.chosen) / name).read_bytes())
        report.write(out / SEEDS)


def forget_seeds(out: Path) -> None:
    """A single-seed training leaves no multi-seed record behind (it would describe another model)."""
    if rank() == 0:
        (out / SEEDS).unlink(missing_ok=True)
        remove_seed_models(out)
