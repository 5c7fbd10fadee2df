"""The multi-seed record of a trained model (`SeedsReport`, `train.out/seeds.json`, `SEEDS` in
components.models.store), typed: training writes it through `write`, evaluation and registration read it through
`read`, which refuses a file that does not fit with a DataError naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError

from components.core.atomic import write_bytes
from components.core.errors import DataError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; only annotations name it

__all__ = ["SeedsReport"]


class SeedsReport(BaseModel):
    """A training of train.seeds > 1: its seeds, each one's best valid value, and the seed whose model is the model
    (the best on valid, never chosen on test)."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int]
    chosen: int
    selected_by: str  # "valid <head> <metric>"
    valid: dict[str, float | None]  # seed (as a JSON key) -> its best monitored valid value (None: never a number)

    @classmethod
    def read(cls, path: str | Path) -> Self:
        fix = "run `msa train`"
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
