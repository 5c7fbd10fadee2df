"""Import utterance clips (MMSA-FET's label.csv, flattened): a CSV of `id, text, label[, split]` with an `audio`
and/or a `video` column naming each utterance's WAV/FLAC and MP4/WebM files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pandas as pd

from components.dataset import (
    CLIP_COLUMNS,
    CLIP_SUFFIXES,
    Manifest,
    Modalities,
    SequenceSpec,
    TextSpec,
    carve_splits,
    write_dataset,
)
from components.errors import ConfigError, DataError
from components.importers.image_text import _labels  # the same label rules as the image-text CSV
from components.textfiles import csv_records

REQUIRED_COLUMNS = ("id", "text", "label")
# 20 s of frames at featurize's defaults: audio 25 frames a second, vision 5.
MAX_LEN_AUDIO = 500
MAX_LEN_VISION = 100
MODALITY = {"audio": "audio", "video": "vision"}  # the modality each clip column feeds


def import_clips_csv(
    csv_path: Path,
    out: Path,
    *,
    media_root: Path,
    name: str | None = None,
    task: Literal["auto", "regression", "classification"] = "auto",
    classes: list[str] | None = None,
    label_min: float = -3.0,
    label_max: float = 3.0,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    max_len_audio: int = MAX_LEN_AUDIO,
    max_len_vision: int = MAX_LEN_VISION,
) -> Path:
    """Convert the CSV and the clips it references into the canonical dataset at `out`.

    Clips are copied byte for byte into `audio/` and `video/` (validation decodes them, so every bad file is
    reported together). An `audio` column declares the audio modality, a `video` column the vision one; an empty
    cell means the utterance has no such clip, and the manifest then allows it to be missing (a row with a video
    but no audio file gets its audio from the video's soundtrack). Text is declared when any row has some.
    Without a `split` column the rows are split at random, reproducibly for a given `seed`.
    """
    csv_path, media_root = Path(csv_path), Path(media_root)
    for option, value in (("--max-len-audio", max_len_audio), ("--max-len-vision", max_len_vision)):
        if value < 1:
            raise ConfigError(f"{option} must be at least 1; got {value}")
    records = list(csv_records(csv_path))
    columns = [c.strip() for c in records[0][1]] if records else []
    need = f"need {list(REQUIRED_COLUMNS)} and at least one of {list(CLIP_COLUMNS)}"
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            raise DataError(csv_path, f"missing column '{column}'; found columns {columns}; {need}")
    clip_columns = [c for c in CLIP_COLUMNS if c in columns]
    if not clip_columns:
        raise DataError(csv_path, f"missing column 'audio' or 'video'; found columns {columns}; {need}")

    rows, clips, used_stems = [], {}, set()
    root = media_root.resolve()
    if not root.is_dir():
        raise DataError(media_root, "not a directory: --media-root must be the directory the clip paths are under")
    for number, (_, fields) in enumerate(records[1:], start=1):
        if len(fields) != len(columns):
            raise DataError(
                csv_path, f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}", row=number
            )
        record = dict(zip(columns, fields, strict=True))
        sample_id = record["id"]
        row = {**record, **dict.fromkeys(CLIP_COLUMNS)}
        stem = _clip_stem(sample_id, used_stems)
        for column in clip_columns:
            if value := record[column].strip():
                source = _confined_clip(csv_path, root, column, value, number, sample_id)
                row[column] = f"{column}/{stem}{source.suffix.lower()}"
                clips[row[column]] = source
        rows.append(row)

    label, values = _labels(csv_path, rows, task, classes, label_min, label_max)
    has_text = any(r["text"].strip() for r in rows)
    samples = pd.DataFrame(rows, columns=["id", "split", "text", *CLIP_COLUMNS])
    if not has_text:
        samples["text"] = None
    samples["label"] = pd.Series(values, dtype=object)
    if "split" not in columns:
        samples["split"] = carve_splits(len(rows), seed=seed, fractions={"valid": valid_frac, "test": test_frac})
    samples["image"] = None
    samples["seq_index"] = pd.array([None] * len(rows), dtype="Int64")

    # A sample has audio from its audio file, else from its video's soundtrack; vision only from its video.
    no_audio = any(r["audio"] is None and r["video"] is None for r in rows)
    no_video = any(r["video"] is None for r in rows)
    specs = {
        "audio": SequenceSpec(source="clips", max_len=max_len_audio, allow_missing=no_audio),
        "vision": SequenceSpec(source="clips", max_len=max_len_vision, allow_missing=no_video),
    }
    manifest = Manifest(
        name=name or csv_path.stem,
        version="1",
        source=csv_path.name,
        label=label,
        modalities=Modalities(
            text=TextSpec() if has_text else None, **{MODALITY[c]: specs[MODALITY[c]] for c in clip_columns}
        ),
    )
    return write_dataset(out, manifest, samples, clips=clips)


def _confined_clip(csv_path: Path, root: Path, column: str, value: str, row: int, sample_id: str) -> Path:
    """The clip file `value` names, once resolved (symlinks followed) inside `root`; else a DataError.

    Without this a CSV could copy any file the importer can read (`../..`, `/etc/...`, a symlink) into the dataset.
    """
    source = (root / value).resolve()
    if not source.is_relative_to(root):
        raise DataError(csv_path, f"{column} '{value}' is outside --media-root {root}", row=row, sample_id=sample_id)
    suffixes = CLIP_SUFFIXES[column]
    if source.suffix.lower() not in suffixes:
        raise DataError(
            csv_path, f"{column} '{value}' has an unsupported suffix; use one of {list(suffixes)}",
            row=row, sample_id=sample_id,
        )  # fmt: skip
    if not source.is_file():
        raise DataError(csv_path, f"{column} file not found: {root / value}", row=row, sample_id=sample_id)
    return source


def _clip_stem(sample_id: str, used: set[str]) -> str:
    """The id made filename-safe, which names the sample's `audio/<stem>.wav` and `video/<stem>.mp4`; ids that
    sanitise alike (or differ only in case, for case-insensitive file systems) get distinct stems."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".") or "clip"
    stem, n = base, 1
    while stem.casefold() in used:
        n += 1
        stem = f"{base}-{n}"
    used.add(stem.casefold())
    return stem
