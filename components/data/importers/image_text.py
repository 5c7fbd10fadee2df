"""Import image-text posts (MVSA / Twitter-2015 style): a CSV of `id, text, image, label[, split]`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.data.dataset import IMAGE_SUFFIXES, ImageSpec, Manifest, Modalities, TextSpec, write_dataset
from components.data.importers.labelled_csv import (
    Task,
    check_table,
    confined_file,
    file_stem,
    labels,
    read_rows,
    root_dir,
    with_splits,
)

__all__ = ["import_image_text_csv"]

REQUIRED_COLUMNS = ("id", "text", "image", "label")


def import_image_text_csv(
    csv_path: Path,
    out: Path,
    *,
    image_root: Path,
    name: str | None = None,
    task: Task = "auto",
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
    csv_path = Path(csv_path)
    columns, records = read_rows(csv_path)
    check_table(csv_path, columns, records, REQUIRED_COLUMNS)
    rows: list[dict[str, str | None]] = []
    images: dict[str, Path] = {}
    used_stems: set[str] = set()
    root = root_dir(image_root, "--image-root")
    for number, record in enumerate(records, start=1):
        image = None
        if value := record["image"].strip():
            source = confined_file(
                csv_path,
                root,
                value,
                column="image",
                option="--image-root",
                suffixes=IMAGE_SUFFIXES,
                row=number,
                sample_id=record["id"],
            )
            image = f"images/{file_stem(record['id'], used_stems, 'image')}{source.suffix.lower()}"
            images[image] = source
        rows.append({**record, "image": image})

    label, values = labels(csv_path, rows, task, classes, label_min, label_max)
    samples = pd.DataFrame(rows, columns=["id", "split", "text", "image"])
    samples["label"] = pd.Series(values, dtype=object)
    samples = with_splits(samples, columns, seed=seed, valid_frac=valid_frac, test_frac=test_frac)
    samples["seq_index"] = pd.array([None] * len(rows), dtype="Int64")
    manifest = Manifest(
        name=name or csv_path.stem,
        version="1",
        source=csv_path.name,
        label=label,
        modalities=Modalities(text=TextSpec(), image=ImageSpec(allow_missing=any(r["image"] is None for r in rows))),
    )
    return write_dataset(out, manifest, samples, images=images)
