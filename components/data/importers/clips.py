"""Import utterance clips: a CSV of `id, text, label[, split]` with an `audio` and/or a `video` column naming each
utterance's WAV/FLAC and MP4/WebM files; or MMSA-FET's own `label.csv` as it is (`video_id, clip_id, text, label,
..., mode`, the clips at `Raw/<video_id>/<clip_id>.mp4`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.core.errors import ConfigError
from components.data.dataset import (
    CLIP_COLUMNS,
    CLIP_SUFFIXES,
    Manifest,
    Modalities,
    SequenceSpec,
    TextSpec,
    write_dataset,
)
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

__all__ = ["MAX_LEN_AUDIO", "MAX_LEN_VISION", "import_clips_csv"]

REQUIRED_COLUMNS = ("id", "text", "label")
# 20 s of frames at featurize's defaults: audio 25 frames a second, vision 5.
MAX_LEN_AUDIO = 500
MAX_LEN_VISION = 100
MODALITY = {"audio": "audio", "video": "vision"}  # the modality each clip column feeds
MMSA_FET_COLUMNS = ("video_id", "clip_id")  # a label.csv with these (and no id) is MMSA-FET's layout


def import_clips_csv(
    csv_path: Path,
    out: Path,
    *,
    media_root: Path,
    name: str | None = None,
    task: Task = "auto",
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
    csv_path = Path(csv_path)
    for option, value in (("--max-len-audio", max_len_audio), ("--max-len-vision", max_len_vision)):
        if value < 1:
            raise ConfigError(f"{option} must be at least 1; got {value}")
    columns, records = read_rows(csv_path)
    if "id" not in columns and set(MMSA_FET_COLUMNS) <= set(columns):
        columns, records = _from_mmsa_fet(columns, records)
    check_table(csv_path, columns, records, REQUIRED_COLUMNS, any_of=CLIP_COLUMNS)
    clip_columns = [c for c in CLIP_COLUMNS if c in columns]
    rows, clips = _clip_rows(csv_path, records, clip_columns, root_dir(media_root, "--media-root"))

    label, values = labels(csv_path, rows, task, classes, label_min, label_max)
    has_text = any(r["text"].strip() for r in rows)
    samples = pd.DataFrame(rows, columns=["id", "split", "text", *CLIP_COLUMNS])
    if not has_text:
        samples["text"] = None
    samples["label"] = pd.Series(values, dtype=object)
    samples = with_splits(samples, columns, seed=seed, valid_frac=valid_frac, test_frac=test_frac)
    samples["image"] = None
    samples["seq_index"] = pd.array([None] * len(rows), dtype="Int64")
    specs = _clip_specs(rows, max_len_audio, max_len_vision)
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


def _clip_rows(
    csv_path: Path, records: list[dict[str, str]], clip_columns: list[str], root: Path
) -> tuple[list[dict], dict[str, Path]]:
    """The rows with each clip cell renamed to its place in the dataset (`audio/<stem>.wav`, ...; None where
    empty), and the files to copy there, each confined to `root`."""
    rows: list[dict[str, str | None]] = []
    clips: dict[str, Path] = {}
    used_stems: set[str] = set()
    for number, record in enumerate(records, start=1):
        row: dict[str, str | None] = {**record, **dict.fromkeys(CLIP_COLUMNS)}
        stem = file_stem(record["id"], used_stems, "clip")
        for column in clip_columns:
            if value := record[column].strip():
                source = confined_file(
                    csv_path,
                    root,
                    value,
                    column=column,
                    option="--media-root",
                    suffixes=CLIP_SUFFIXES[column],
                    row=number,
                    sample_id=record["id"],
                )
                placed = f"{column}/{stem}{source.suffix.lower()}"
                row[column] = placed
                clips[placed] = source
        rows.append(row)
    return rows, clips


def _clip_specs(rows: list[dict], max_len_audio: int, max_len_vision: int) -> dict[str, SequenceSpec]:
    """The audio and vision sequence specs, each allowed missing where a row lacks its source."""
    # A sample has audio from its audio file, else from its video's soundtrack; vision only from its video.
    no_audio = any(r["audio"] is None and r["video"] is None for r in rows)
    no_video = any(r["video"] is None for r in rows)
    return {
        "audio": SequenceSpec(source="clips", max_len=max_len_audio, allow_missing=no_audio),
        "vision": SequenceSpec(source="clips", max_len=max_len_vision, allow_missing=no_video),
    }


def _from_mmsa_fet(columns: list[str], rows: list[dict[str, str]]) -> tuple[list[str], list[dict[str, str]]]:
    """MMSA-FET's label.csv in this importer's columns: the id `<video_id>$_$<clip_id>` (MMSA's own), the video
    `Raw/<video_id>/<clip_id>.mp4` under the media root (the dataset directory), and the split from `mode`. Its
    audio is the video's soundtrack; its other columns (label_T, annotation, ...) are left out."""
    added = [c for c in ("id", "audio", "video") if c not in columns]
    if "mode" in columns and "split" not in columns:
        added.append("split")
    renamed = []
    for row in rows:
        video_id, clip_id = row["video_id"].strip(), row["clip_id"].strip()
        derived = {
            "id": f"{video_id}$_${clip_id}",
            "audio": "",  # declares audio: an empty cell takes the video's soundtrack
            "video": f"Raw/{video_id}/{clip_id}.mp4",
            "split": row.get("mode", ""),
        }
        renamed.append(row | {c: derived[c] for c in added})
    return [*columns, *added], renamed
