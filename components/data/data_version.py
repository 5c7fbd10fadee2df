"""Keeping DVC's record of a dataset in step with the bytes just written to it.

`msa data demo` and `msa data import` write the canonical dataset. Where a `.dvc` file tracks that directory, as
`data.dvc` tracks `data/raw`, the new bytes go into DVC's cache and the `.dvc` file at once: otherwise `dvc status`
reports "not in cache" and `dvc push` uploads nothing until someone remembers `dvc commit`. A directory no `.dvc`
file tracks, or a project that is not a DVC repository, is left alone: adding data to DVC is the user's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.core.errors import DataError, UserError, first_line

__all__ = ["Pushed", "Recorded", "push_dataset", "record_in_dvc"]


@dataclass(frozen=True)
class Recorded:
    dvcfile: Path | None  # the .dvc file that tracks the dataset (None: DVC failed before finding it)
    changed: bool  # whether it now records other bytes (and so needs a git commit)
    problem: str | None = None  # why DVC could not record them (the dataset itself is written either way)

    def summary(self) -> str:
        if self.problem:
            return f"DVC: the dataset is not in DVC's cache ({self.problem}); `dvc commit` records it"
        if self.changed:
            return f"DVC: {self.dvcfile} records the new data and its cache holds it; `git add {self.dvcfile}`"
        return f"DVC: {self.dvcfile} already recorded these bytes; its cache holds them"


def record_in_dvc(path: str | Path) -> Recorded | None:
    """Commit `path` to the DVC cache through the `.dvc` file that tracks it; None where none does."""
    path = Path(path).resolve()
    if not any((parent / ".dvc").is_dir() for parent in path.parents):
        return None  # not inside a DVC repository: DVC is not even imported
    from dvc.exceptions import DvcException, NotDvcRepoError, OutputNotFoundError
    from dvc.repo import Repo

    try:
        with Repo(str(path.parent)) as repo:
            outs = repo.find_outs_by_path(str(path))
            stage = outs[0].stage
            if not stage.is_data_source:  # a stage's output: `dvc repro` records it
                return None
            dvcfile = Path(stage.path)
            before = dvcfile.read_bytes()
            repo.commit(str(dvcfile), force=True)
    except (NotDvcRepoError, OutputNotFoundError):
        return None
    except DvcException as e:  # no git around the .dvc directory, another DVC command holding the lock, ...
        return Recorded(None, changed=False, problem=first_line(e))
    shown = dvcfile.relative_to(Path.cwd()) if dvcfile.is_relative_to(Path.cwd()) else dvcfile
    return Recorded(shown, dvcfile.read_bytes() != before)


@dataclass(frozen=True)
class Pushed:
    dvcfile: Path
    md5: str  # the dataset version: the directory's hash the .dvc file records
    uploaded: int  # files the remote did not hold yet
    dataset: str  # the manifest's name and version
    version: str

    def summary(self) -> str:
        return (
            f"data push: {self.dataset} v{self.version} ({self.dvcfile}, md5 {self.md5[:12]}): "
            f"{self.uploaded} files uploaded to the DVC remote"
        )


def push_dataset(dvcfile: str | Path, remote: str | None = None) -> Pushed:
    """Upload the dataset version `dvcfile` (e.g. data.dvc) records to the DVC remote (`dvc push <dvcfile>`)."""
    import yaml
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from components.data.dataset import read_manifest

    dvcfile = Path(dvcfile)
    try:
        record = yaml.safe_load(dvcfile.read_text())
        out = record["outs"][0]
        md5, path = str(out["md5"]), dvcfile.parent / out["path"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(dvcfile, f"not a .dvc file that tracks a dataset ({type(e).__name__}: {e})") from None
    manifest = read_manifest(path)
    try:
        with Repo(str(dvcfile.parent)) as repo:
            uploaded = repo.push(targets=[str(dvcfile)], remote=remote)
    except DvcException as e:
        raise UserError(f"dvc push {dvcfile}: {first_line(e)}") from None
    return Pushed(dvcfile, md5, int(uploaded or 0), manifest.name, str(manifest.version))
