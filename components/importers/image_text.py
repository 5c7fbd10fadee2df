"""Import image-text posts (MVSA / Twitter-2015 style): a CSV of `id, text, image, label[, split]`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pandas as pd

from components.dataset import (
    IMAGE_SUFFIXES,
    ClassificationLabel,
    ImageSpec,
    Manifest,
    Modalities,
    RegressionLabel,
    TextSpec,
    carve_splits,
    write_dataset,
)
from components.errors import DataError
from components.textfiles import csv_records

REQUIRED_COLUMNS = ("id", "text", "image", "label")


def import_image_text_csv(
    csv_path: Path,
    out: Path,
    *,
    image_root: Path,
    name: str | None = None,
    task: Literal["auto", "regression", "classification"] = "auto",
    classes: list[str] | None = None,
    label_min: float = -3.0,
    label_max: float = 3.0,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
) -> Path:
    """Convert the CSV and the images it references into the canonical dataset at `out`.

    Images are copied byte for byte (validation decodes them, so one bad file is reported with the others).
    An empty `image` cell means the post has no image; the manifest then allows missing images. Without a
    `split` column the rows are split at random, reproducibly for a given `seed`.
    """
    csv_path, image_root = Path(csv_path), Path(image_root)
    records = list(csv_records(csv_path))
    columns = [c.strip() for c in records[0][1]] if records else []
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            raise DataError(
                csv_path, f"missing column '{column}'; found columns {columns}; need {list(REQUIRED_COLUMNS)}"
            )

    rows, images, used_names = [], {}, set()
    root = image_root.resolve()
    for number, (_, fields) in enumerate(records[1:], start=1):
        if len(fields) != len(columns):
            raise DataError(
                csv_path, f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}", row=number
            )
        record = dict(zip(columns, fields, strict=True))
        sample_id = record["id"]
        image = None
        if record["image"].strip():
            source = _confined_image(csv_path, root, record["image"].strip(), number, sample_id)
            image = _image_name(sample_id, source.suffix.lower(), used_names)
            images[image] = source
        rows.append({**record, "image": image})

    label, values = _labels(csv_path, rows, task, classes, label_min, label_max)
    samples = pd.DataFrame(rows, columns=["id", "split", "text", "image"])
    samples["label"] = pd.Series(values, dtype=object)
    if "split" not in columns:
        samples["split"] = carve_splits(len(rows), seed=seed, fractions={"valid": valid_frac, "test": test_frac})
    samples["seq_index"] = pd.array([None] * len(rows), dtype="Int64")
    manifest = Manifest(
        name=name or csv_path.stem,
        version="1",
        source=csv_path.name,
        label=label,
        modalities=Modalities(text=TextSpec(), image=ImageSpec(allow_missing=any(r["image"] is None for r in rows))),
    )
    return write_dataset(out, manifest, samples, images=images)


def _confined_image(csv_path: Path, root: Path, value: str, row: int, sample_id: str) -> Path:
    """The image file `value` names, once resolved (symlinks followed) inside `root`; else a DataError.

    Without this a CSV could copy any file the importer can read (`../..`, `/etc/...`, a symlink) into the dataset.
    """
    source = (root / value).resolve()
    if not source.is_relative_to(root):
        raise DataError(csv_path, f"image '{value}' is outside --image-root {root}", row=row, sample_id=sample_id)
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(
            csv_path, f"image '{value}' has an unsupported suffix; use one of {list(IMAGE_SUFFIXES)}",
            row=row, sample_id=sample_id,
        )  # fmt: skip
    if not source.is_file():
        raise DataError(csv_path, f"image file not found: {root / value}", row=row, sample_id=sample_id)
    return source


def _image_name(sample_id: str, suffix: str, used: set[str]) -> str:
    """`images/<id><suffix>` with the id made filename-safe; distinct ids that sanitise alike stay distinct."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".") or "image"
    name, n = f"images/{stem}{suffix}", 1
    while name in used:
        n += 1
        name = f"images/{stem}-{n}{suffix}"
    used.add(name)
    return name


def _labels(
    path: Path,
    rows: list[dict],
    task: str,
    classes: list[str] | None,
    label_min: float,
    label_max: float,
) -> tuple[RegressionLabel | ClassificationLabel, list[str | float | None]]:
    """The manifest's label spec and the parsed label of each row.

    An empty label becomes null (validation reports it) rather than deciding the task or failing the import.
    """
    given = [r["label"].strip() or None for r in rows]
    if task == "auto":
        numeric = [_is_float(v) for v in given if v is not None]
        if any(numeric) and not all(numeric):  # one typo must not turn scores into hundreds of "classes"
            number, row = next((n, r) for n, r in enumerate(rows, 1) if given[n - 1] and not _is_float(given[n - 1]))
            raise DataError(
                path, f"label '{given[number - 1]}' is not a number, but {sum(numeric)} other labels are; fix it, or "
                "pass --task classification if the numbers are class names", row=number, sample_id=row["id"],
            )  # fmt: skip
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
    return RegressionLabel(min=label_min, max=label_max), [None if v is None else float(v) for v in given]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
