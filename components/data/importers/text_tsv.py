"""Import text-only `text<TAB>label` files (e.g. the CMU-MOSI transcripts of Cross-Modal-BERT)."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from components.core.errors import DataError
from components.core.textfiles import csv_records
from components.data.dataset import Manifest, Modalities, TextSpec, carve_splits, label_range, write_dataset

__all__ = ["import_text_tsv"]

HEADER = ["text", "label"]


def import_text_tsv(
    train: Path,
    out: Path,
    *,
    valid: Path | None = None,
    test: Path | None = None,
    name: str | None = None,
    label_min: float = -3.0,
    label_max: float = 3.0,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
) -> Path:
    """Convert one TSV per split into the canonical dataset at `out`.

    Splits without a file of their own are carved from the train file (reproducibly for a given `seed`).
    Ids are `<file's split>-<row index in that file>`, so a carved row keeps the id that points at its source.
    """
    label = label_range(label_min, label_max)
    train = Path(train)
    files = {"train": train, "valid": valid, "test": test}
    frames = [_read(Path(path), split) for split, path in files.items() if path is not None]
    carve = {"valid": valid_frac, "test": test_frac}
    carve = {split: fraction for split, fraction in carve.items() if files[split] is None}
    if carve:
        frames[0]["split"] = carve_splits(len(frames[0]), seed=seed, fractions=carve)
    samples = pd.concat(frames, ignore_index=True)
    samples["image"] = None
    samples["seq_index"] = pd.array([None] * len(samples), dtype="Int64")
    manifest = Manifest(
        name=name or train.stem,
        version="1",
        source=", ".join(Path(p).name for p in files.values() if p is not None),
        label=label,
        modalities=Modalities(text=TextSpec()),
    )
    return write_dataset(out, manifest, samples)


def _read(path: Path, split: str) -> pd.DataFrame:
    """One file's rows; any line that is not `text<TAB>number` is an error naming its line."""
    records = csv_records(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    _, header = next(records, (1, []))
    if [h.strip() for h in header] != HEADER:
        raise DataError(path, f"line 1: expected the header 'text<TAB>label', found {header}")
    texts, labels = [], []
    for line, fields in records:
        if len(fields) != 2:
            raise DataError(path, f"line {line}: expected 2 tab-separated fields (text, label), found {len(fields)}")
        try:
            labels.append(float(fields[1]))
        except ValueError:
            raise DataError(path, f"line {line}: label '{fields[1]}' is not a number") from None
        texts.append(fields[0])
    if not texts:
        raise DataError(path, "no rows after the header: nothing to import")
    width = max(4, len(str(len(texts) - 1)))
    ids = [f"{split}-{i:0{width}d}" for i in range(len(texts))]
    return pd.DataFrame({"id": ids, "split": split, "text": texts, "label": labels})
