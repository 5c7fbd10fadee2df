"""The validation frame: the samples plus derived check columns, computed by small pure functions.

Things GX cannot see in a table (image files, sequence arrays, clips, content shared across splits) become derived
columns whose value is "ok" or the reason, so a failure names the sample id and says what is wrong with it. This
module owns those columns and how each is computed; `components.data.expectations` says which values pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.dataset import (
    CLIP_COLUMNS,
    Manifest,
    SequenceArray,
    SequenceSpec,
    clip_path_problem,
    image_path_problem,
    is_null,
)

__all__ = [
    "CLIP_CHECK",
    "COUNT_COLUMNS",
    "ID_SPLITS",
    "IMAGE_CHECK",
    "LEAKAGE_SPLITS",
    "OK",
    "REASON_COLUMNS",
    "SEQUENCE_CHECK",
    "build_frame",
    "clip_checks",
    "content_keys",
    "image_checks",
    "normalise_text",
    "sequence_checks",
    "sequence_problems",
    "splits_per_key",
]

OK = "ok"
# Derived columns; their values are reasons written for people, shown unquoted in the summary.
ID_SPLITS, IMAGE_CHECK, SEQUENCE_CHECK, CLIP_CHECK, LEAKAGE_SPLITS = (
    "id_split_count",
    "image_check",
    "sequence_check",
    "clip_check",
    "leakage_split_count",
)
REASON_COLUMNS, COUNT_COLUMNS = (IMAGE_CHECK, SEQUENCE_CHECK, CLIP_CHECK), (ID_SPLITS, LEAKAGE_SPLITS)


def build_frame(
    root: Path, manifest: Manifest, samples: pd.DataFrame, sequences: Mapping[str, SequenceArray]
) -> pd.DataFrame:
    """The samples plus the derived check columns, in the form GX checks.

    String columns become `object`: GX compares a pandas 3 `str` dtype with no type name it knows, while for
    object columns it checks each value's Python type, which also names the rows holding a wrong type.
    """
    frame = samples.reset_index(drop=True).copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.StringDtype):
            frame[column] = frame[column].astype(object)
    n = len(frame)
    has = frame.columns.__contains__
    texts = frame["text"] if has("text") else pd.Series([None] * n, dtype=object)
    image_digests: list[str | None] = [None] * n
    seq_index = _integer_index(frame["seq_index"]) if has("seq_index") else None

    if has("id") and has("split"):
        frame[ID_SPLITS] = splits_per_key(frame["id"], frame["split"])
    if has("image") and manifest.modalities.image is not None:
        checks, image_digests = image_checks(root, frame["image"])
        frame[IMAGE_CHECK] = pd.Series(checks, dtype=object)
    specs = manifest.modalities.sequences
    if specs and seq_index is not None:
        frame[SEQUENCE_CHECK] = pd.Series(sequence_checks(seq_index, specs, sequences), dtype=object)
    clip_digests: list[str | None] = [None] * n
    if manifest.modalities.clips:
        checks, clip_digests = clip_checks(root, manifest, frame)
        frame[CLIP_CHECK] = pd.Series(checks, dtype=object)
    if has("split"):
        keys = content_keys(texts, image_digests, seq_index, specs, sequences, clip_digests)
        frame[LEAKAGE_SPLITS] = splits_per_key(pd.Series(keys, dtype=object), frame["split"])
    return frame


def splits_per_key(keys: pd.Series, splits: pd.Series) -> pd.Series:
    """For each row, how many distinct splits hold a row with the same key (null where the key is null)."""
    counts = pd.DataFrame({"key": keys.to_numpy(), "split": splits.to_numpy()}).groupby("key", dropna=True)["split"]
    per_row = counts.transform("nunique").astype("Int64").set_axis(keys.index)
    return per_row.mask(per_row == 0)  # only null splits: "split present" reports those rows


def normalise_text(text: str) -> str:
    """Casefolded, whitespace collapsed: what counts as "the same text" for leakage."""
    return " ".join(text.casefold().split())


def image_checks(root: Path, images: pd.Series) -> tuple[list[str | None], list[str | None]]:
    """Per row: "ok" or why the image is unusable, and the SHA-256 of its bytes (None where null or unreadable).

    Images are decoded fully (`load()`), not just `verify()`-ed, so truncated files fail here and not in
    featurize. Paths must stay inside the dataset root (see `image_path_problem`).
    """
    from components.data.images import ImageProblem, open_image  # Pillow: only when a dataset has images

    cache: dict[str, tuple[str, str | None]] = {}

    def check(value: str) -> tuple[str, str | None]:
        if problem := image_path_problem(value):
            return problem, None
        try:
            data = (root / value).read_bytes()
        except FileNotFoundError:
            return f"missing file {value}", None
        except OSError as e:
            return f"cannot read {value}: {e.strerror or e}", None
        try:
            open_image(data)
        except ImageProblem as e:
            return f"cannot decode {value}: {e}", None
        return OK, hashlib.sha256(data).hexdigest()

    checks: list[str | None] = []
    digests: list[str | None] = []
    for value in images:
        if is_null(value):
            checks.append(None)
            digests.append(None)
            continue
        if not isinstance(value, str):
            checks.append(f"not a path: {value!r}")
            digests.append(None)
            continue
        if value not in cache:
            cache[value] = check(value)
        result, digest = cache[value]
        checks.append(result)
        digests.append(digest)
    return checks, digests


def clip_checks(root: Path, manifest: Manifest, frame: pd.DataFrame) -> tuple[list[str | None], list[str | None]]:
    """Per row: "ok" or why its clips are unusable (a path outside audio/ or video/, a missing file, a wrong format,
    over the manifest's `clip_bounds`, not decoding to the end, a required clip absent), and a SHA-256 over its
    clips' bytes; None where a row has no clip and needs none."""
    from components.data.media import ClipProblem, NoAudioStream, check_clip, read_clip  # PyAV: only with clips

    clips = manifest.modalities.clips
    bounds = manifest.clips
    columns = {c: frame[c].tolist() if c in frame.columns else [None] * len(frame) for c in CLIP_COLUMNS}
    checks: list[str | None] = []
    digests: list[str | None] = []
    for i in range(len(frame)):
        audio, video = columns["audio"][i], columns["video"][i]
        problems, digest = [], hashlib.sha256()
        needs = {"audio": "audio" in clips and is_null(audio) and is_null(video), "video": "vision" in clips}
        for modality, spec in clips.items():
            if not spec.allow_missing and (is_null(video) if modality == "vision" else needs["audio"]):
                problems.append(f"no {'video' if modality == 'vision' else 'audio or video'} clip for {modality}")
        for column, value in (("audio", audio), ("video", video)):
            if is_null(value):
                continue
            if not isinstance(value, str):
                problems.append(f"not a path: {value!r}")
                continue
            if problem := clip_path_problem(value, column):
                problems.append(problem)
                continue
            if not (root / value).exists():
                problems.append(f"missing file {value}")
                continue
            try:
                data = read_clip(root / value, bounds.max_bytes)
                soundtrack = column == "video" and "audio" in clips and is_null(audio)
                check_clip(data, column, bounds, soundtrack=soundtrack)
            except NoAudioStream:
                if not clips["audio"].allow_missing:
                    problems.append(f"{value}: no soundtrack, and no audio clip for audio")
            except ClipProblem as e:
                problems.append(f"{value}: {e}")
                continue
            digest.update(hashlib.sha256(data).digest())
        present = not (is_null(audio) and is_null(video))
        checks.append("; ".join(problems) if problems else (OK if present else None))
        digests.append(digest.hexdigest() if present and not problems else None)
    return checks, digests


def sequence_problems(modality: str, spec: SequenceSpec, array: SequenceArray) -> str | None:
    """Why the arrays of one modality do not fit the manifest as a whole (checked once, not per row)."""
    features, lengths = array.features, array.lengths
    if features.ndim != 3 or features.shape[1:] != (spec.max_len, spec.dim):
        return (
            f"{modality} features have shape {list(features.shape)}, "
            f"manifest expects [N, max_len={spec.max_len}, dim={spec.dim}]"
        )
    if not np.issubdtype(features.dtype, np.floating):
        return f"{modality} features are {features.dtype}, expected float"
    if lengths.shape != (features.shape[0],):
        return f"{modality} lengths have shape {list(lengths.shape)}, expected [{features.shape[0]}] (one per row)"
    if not np.issubdtype(lengths.dtype, np.integer):
        return f"{modality} lengths are {lengths.dtype}, expected integers"
    return None


def sequence_checks(
    seq_index: tuple[np.ndarray, np.ndarray], specs: Mapping[str, SequenceSpec], sequences: Mapping[str, SequenceArray]
) -> list[str | None]:
    """Per row: "ok" or the reasons its sequences are unusable; None where `seq_index` is null.

    `seq_index` is (int64 values, present mask). Shapes are checked once per modality; row range, lengths and
    finiteness are vectorised over the rows of each array.
    """
    index, present = seq_index
    reasons: list[list[str]] = [[] for _ in range(len(index))]

    def flag(mask: np.ndarray, message: Any) -> None:
        for i in np.flatnonzero(mask):
            reasons[i].append(message(i) if callable(message) else message)

    for modality, spec in specs.items():
        array = sequences[modality]
        problem = sequence_problems(modality, spec, array)
        if problem:
            flag(present, problem)
            continue
        rows = array.features.shape[0]
        out_of_range = present & ((index < 0) | (index >= rows))
        flag(out_of_range, lambda i, m=modality, r=rows: f"row {index[i]} out of range: {m} has {r} rows")
        inside = present & ~out_of_range
        if not inside.any():
            continue
        at = np.where(inside, index, 0)
        lengths = array.lengths[at]
        bad_length = inside & ((lengths < 0) | (lengths > spec.max_len))
        flag(bad_length, lambda i, m=modality, s=spec, ln=lengths: f"{m} length {ln[i]} out of [0, {s.max_len}]")
        flag(inside & np.isnan(array.features).any(axis=(1, 2))[at], f"{modality} features contain NaN")
        flag(inside & np.isinf(array.features).any(axis=(1, 2))[at], f"{modality} features contain inf")
    return [("; ".join(r) if r else OK) if present[i] else None for i, r in enumerate(reasons)]


def content_keys(
    texts: pd.Series,
    image_digests: Sequence[str | None],
    seq_index: tuple[np.ndarray, np.ndarray] | None,
    specs: Mapping[str, SequenceSpec],
    sequences: Mapping[str, SequenceArray],
    clip_digests: Sequence[str | None] = (),
) -> list[str | None]:
    """Per row: a hash of its content (normalised text, image bytes, its sequence rows, its clips' bytes); None
    with no content.

    Rows with equal keys hold the same sample, whatever their ids: in different splits, that is leakage.
    """
    usable = {m: sequences[m] for m in specs if m in sequences and sequence_problems(m, specs[m], sequences[m]) is None}
    keys: list[str | None] = []
    for i, text in enumerate(texts):
        parts: list[bytes] = []
        if isinstance(text, str):
            parts.append(b"text:" + normalise_text(text).encode("utf-8"))
        image, clips = image_digests[i], clip_digests[i] if i < len(clip_digests) else None
        if image is not None:
            parts.append(b"image:" + image.encode("ascii"))
        if clips is not None:
            parts.append(b"clips:" + clips.encode("ascii"))
        row = int(seq_index[0][i]) if seq_index is not None and seq_index[1][i] else -1
        for modality, array in sorted(usable.items()):
            if 0 <= row < array.features.shape[0]:
                length = int(array.lengths[row])
                values = array.features[row, :length] if 0 <= length <= array.features.shape[1] else array.features[row]
                parts.append(modality.encode("ascii") + b":" + np.ascontiguousarray(values).tobytes())
        if not parts:
            keys.append(None)
            continue
        digest = hashlib.sha256()
        for part in parts:  # length-prefixed, so the boundaries between parts cannot shift
            digest.update(len(part).to_bytes(8, "little") + part)
        keys.append(digest.hexdigest())
    return keys


def _integer_index(column: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """`seq_index` as (int64 values, present mask), or None when it is not an integer column."""
    if not pd.api.types.is_integer_dtype(column):
        return None
    column = column.astype("Int64")
    return column.fillna(0).to_numpy(dtype=np.int64), column.notna().to_numpy()
