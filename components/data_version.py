"""Keeping DVC's record of a dataset in step with the bytes just written to it.

`msa data demo` and `msa data import` write the canonical dataset. Where a `.dvc` file tracks that directory, as
`data.dvc` tracks `data/raw`, the new bytes go into DVC's cache and the `.dvc` file at once: otherwise `dvc status`
reports "not in cache" and `dvc push` uploads nothing until someone remembers `dvc commit`. A directory no `.dvc`
file tracks, or a project that is not a DVC repository, is left alone: adding data to DVC is the user's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recorded:
    dvcfile: Path  # the .dvc file that tracks the dataset
    changed: bool  # whether it now records other bytes (and so needs a git commit)

    def summary(self) -> str:
        if self.changed:
            return f"DVC: {self.dvcfile} records the new data and its cache holds it; `git add {self.dvcfile}`"
        return f"DVC: {self.dvcfile} already recorded these bytes; its cache holds them"


def record_in_dvc(path: str | Path) -> Recorded | None:
    """Commit `path` to the DVC cache through the `.dvc` file that tracks it; None where none does."""
    path = Path(path).resolve()
    if not any((parent / ".dvc").is_dir() for parent in path.parents):
        return None  # not inside a DVC repository: DVC is not even imported
    from dvc.exceptions import NotDvcRepoError, OutputNotFoundError
    from dvc.repo import Repo

    try:
        repo = Repo(str(path.parent))
    except NotDvcRepoError:
        return None
    with repo:
        try:
            outs = repo.find_outs_by_path(str(path))
        except OutputNotFoundError:
            return None
        stage = outs[0].stage
        if not stage.is_data_source:  # a stage's output: `dvc repro` records it
            return None
        dvcfile = Path(stage.path)
        before = dvcfile.read_bytes()
        repo.commit(str(dvcfile), force=True)
        relative = dvcfile.relative_to(Path.cwd()) if dvcfile.is_relative_to(Path.cwd()) else dvcfile
        return Recorded(relative, dvcfile.read_bytes() != before)
