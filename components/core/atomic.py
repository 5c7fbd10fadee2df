"""Write files and directories so that a reader sees the old version or the new one, never half of either."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.core.errors import DataError

__all__ = [
    "FILE_MODE",
    "UMASK",
    "check_replaceable",
    "chmod_new",
    "replace_directory",
    "write_bytes",
    "write_json",
    "write_text",
]


def _read_umask() -> int:
    """The process's umask, read once at import: from /proc where Linux shows it (no change to the process), else by
    the os.umask round-trip, done here while importing and not later, when another thread may be creating files."""
    try:
        with Path("/proc/self/status").open(encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
# What open() would give a new file: mkstemp creates its file 0600, which left every report, model and tuned
# params file this project writes unreadable to the user's group (a shared runner, a web server serving reports).
FILE_MODE = 0o666 & ~UMASK


def chmod_new(fd: int) -> None:
    """Give a file made by tempfile.mkstemp the mode the user's umask gives any new file."""
    os.fchmod(fd, FILE_MODE)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`; its mode is what the user's
    umask gives a new file (as with open()), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        chmod_new(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, nan_as_null: bool = False) -> Path:
    """Strict JSON (NaN and inf are an error, or with `nan_as_null` written as null, e.g. an undefined metric)."""
    if nan_as_null:
        obj = _nan_as_null(obj)
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _nan_as_null(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_as_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_as_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@contextmanager
def replace_directory(path: str | Path, *, marker: str) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `path`, on error it is removed.

    `path` is replaced only when it is missing, empty, or holds `marker` (a glob, e.g. the manifest.yaml every
    dataset has): a directory this project wrote. Anything else (a mistyped `--out` naming a folder of photos, the
    project root) is refused with the path named, before anything is written, and stays byte-identical.

    The staging directory sits beside `path` (same filesystem, so the final renames are atomic). The old
    directory is moved aside before the new one is renamed in and deleted only after that succeeds.
    """
    path = Path(path)
    check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = path.parent / f".{path.name}.staging-{token}"
    staging.mkdir()
    try:
        yield staging
        if not any(staging.glob(marker)) and any(staging.iterdir()):
            raise AssertionError(f"a writer of {path} must write {marker}, the proof that it wrote the directory")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = path.parent / f".{path.name}.old-{token}"
    if path.exists() or path.is_symlink():
        path.replace(retired)
    staging.replace(path)
    if retired.is_symlink() or retired.is_file():
        retired.unlink()
    else:
        shutil.rmtree(retired, ignore_errors=True)


def check_replaceable(path: Path, marker: str) -> None:
    """Raise DataError unless `replace_directory(path, marker=marker)` may replace `path`: a command checks before
    its work, so a mistyped target fails at once rather than after a long import."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise DataError(path, "is a file, not a directory this project wrote: refusing to replace it")
    if any(path.iterdir()) and not any(path.glob(marker)):
        raise DataError(
            path,
            f"holds files this project did not write (no {marker}): refusing to replace it; "
            "name a new or empty directory",
        )
