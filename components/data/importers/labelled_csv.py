"""What the CSV importers share: one labelled sample per row, whose file columns name files under a root directory.

The image-text and the clips importers differ only in which file columns they read and which modalities those
declare; reading the rows, confining each named file to its root, naming the copies and parsing the labels are here
once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pandas as pd

from components.core.errors import DataError
from components.core.textfiles import csv_records
from components.data.dataset import SPLITS, ClassificationLabel, RegressionLabel, carve_splits, label_range

__all__ = [
    "TASKS",
    "Task",
    "check_table",
    "confined_file",
    "file_stem",
    "labels",
    "read_rows",
    "root_dir",
    "with_splits",
]

Task = Literal["auto", "regression", "classification"]
TASKS: tuple[Task, ...] = ("auto", "regression", "classification")


def read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and each row of `csv_path` by column; a row with another number of fields than the header is a
    DataError naming it."""
    records = list(csv_records(csv_path))
    columns = [c.strip() for c in records[0][1]] if records else []
    rows = []
    for number, (_, fields) in enumerate(records[1:], start=1):
        if len(fields) != len(columns):
            raise DataError(
                csv_path, f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}", row=number
            )
        rows.append(dict(zip(columns, fields, strict=True)))
    return columns, rows


def check_table(
    csv_path: Path, columns: list[str], rows: list[dict], required: tuple[str, ...], any_of: tuple[str, ...] = ()
) -> None:
    """A DataError naming the first `required` column missing, all of `any_of` when none is there, the lack of any
    row after the header, an id that repeats an earlier row's, or a `split` cell other than train, valid or test
    (written exactly so: a split is never guessed from "TRAIN " or "Valid")."""
    need = f"need {list(required)}" + (f" and at least one of {list(any_of)}" if any_of else "")
    for column in required:
        if column not in columns:
            raise DataError(csv_path, f"missing column '{column}'; found columns {columns}; {need}")
    if any_of and not set(any_of) & set(columns):
        missing = " or ".join(f"'{c}'" for c in any_of)
        raise DataError(csv_path, f"missing column {missing}; found columns {columns}; {need}")
    if not rows:
        raise DataError(csv_path, "no rows after the header: nothing to import")
    first_row: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        sample_id = row["id"]
        if (first := first_row.setdefault(sample_id, number)) != number:
            raise DataError(csv_path, f"same id as row {first}: ids must be unique", row=number, sample_id=sample_id)
        if "split" in row and row["split"] not in SPLITS:
            raise DataError(
                csv_path,
                f"split {row['split']!r} is not one of {', '.join(SPLITS)} (lower case, no spaces)",
                row=number,
                sample_id=sample_id,
            )


def root_dir(path: Path, option: str) -> Path:
    """The directory `option` names, resolved: what the CSV's file paths must stay inside."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise DataError(path, f"not a directory: {option} must be the directory the CSV's paths are under")
    return root


def confined_file(
    csv_path: Path,
    root: Path,
    value: str,
    *,
    column: str,
    option: str,
    suffixes: Iterable[str],
    row: int,
    sample_id: str,
) -> Path:
    """The file `value` names, once resolved (symlinks followed) inside `root` (the directory `option` gave); else a
    DataError. Without this a CSV could copy any file the importer can read (`../..`, `/etc/...`, a symlink) into
    the dataset."""
    source = (root / value).resolve()
    if not source.is_relative_to(root):
        raise DataError(csv_path, f"{column} '{value}' is outside {option} {root}", row=row, sample_id=sample_id)
    if source.suffix.lower() not in suffixes:
        raise DataError(
            csv_path,
            f"{column} '{value}' has an unsupported suffix; use one of {list(suffixes)}",
            row=row,
            sample_id=sample_id,
        )
    if not source.is_file():
        raise DataError(csv_path, f"{column} file not found: {root / value}", row=row, sample_id=sample_id)
    return source


def file_stem(sample_id: str, used: set[str], fallback: str) -> str:
    """The id made filename-safe, which names the sample's copied files (`fallback` for an id with nothing left); ids
    that sanitise alike (or differ only in case, for case-insensitive file systems) get distinct stems."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".") or fallback
    stem, n = base, 1
    while stem.casefold() in used:
        n += 1
        stem = f"{base}-{n}"
    used.add(stem.casefold())
    return stem


def labels(
    path: Path, rows: list[dict], task: Task, classes: list[str] | None, label_min: float, label_max: float
) -> tuple[RegressionLabel | ClassificationLabel, list[str | float | None]]:
    """The manifest's label spec and the parsed label of each row.

    An empty label becomes null (validation reports it) rather than deciding the task or failing the import.
    """
    given = [r["label"].strip() or None for r in rows]
    if task == "auto":
        numeric = [_is_float(v) for v in given if v is not None]
        if any(numeric) and not all(numeric):  # one typo must not turn scores into hundreds of "classes"
            number, row = next(
                (n, r) for n, (r, v) in enumerate(zip(rows, given, strict=True), 1) if v and not _is_float(v)
            )
            raise DataError(
                path,
                f"label '{given[number - 1]}' is not a number, but {sum(numeric)} other labels are; fix it, or "
                "pass --task classification if the numbers are class names",
                row=number,
                sample_id=row["id"],
            )
        task = "regression" if all(numeric) else "classification"
    if task == "classification":
        classes = classes or sorted({v for v in given if v is not None})
        if len(set(classes)) < 2:
            raise DataError(path, f"classification needs at least 2 classes, found {classes}; pass them as classes")
        return ClassificationLabel(classes=classes), given
    for number, (row, value) in enumerate(zip(rows, given, strict=True), start=1):
        if value is not None and not _is_float(value):
            raise DataError(
                path, f"label '{value}' is not a number (task is regression)", row=number, sample_id=row["id"]
            )
    return label_range(label_min, label_max), [None if v is None else float(v) for v in given]


def with_splits(
    samples: pd.DataFrame, columns: list[str], *, seed: int, valid_frac: float, test_frac: float
) -> pd.DataFrame:
    """`samples` with the CSV's own `split` column, else one carved at random (the same for the same `seed`)."""
    if "split" not in columns:
        samples["split"] = carve_splits(len(samples), seed=seed, fractions={"valid": valid_frac, "test": test_frac})
    return samples


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
