"""The served model's input values: what each column holds, checked against the bounds before it is decoded.

Input columns (a pandas DataFrame, one row per sample; a column for a modality the model lacks is ignored):
    text         string, required when the model reads text
    image_base64 string, the PNG/JPEG file itself, base64-encoded, or null
    image        string, path of a PNG/JPEG file, or null: read only by `msa predict` on a local file, inside its
                 image root; the served model refuses it (it opens no path a caller names)
    audio        frames [T][D] of numbers, or null          (likewise vision)
A model whose audio or vision features were extracted from clips (`source: clips`) takes clips instead of frames:
    audio_base64 string, a WAV/FLAC file, base64-encoded, or null
    video_base64 string, an MP4/WebM file, base64-encoded, or null: gives vision, and audio when no audio clip is
                 sent and the video has a soundtrack
    audio, video string, path of such a file: like `image`, read only by `msa predict` inside its root
and extracts their features with the settings featurize used (`components.data.media`).
Every value is bounded (the package's `limits.json`, from params.yaml's `serve`) and checked before decoding.
`raw_frame` writes a dataset's rows in these columns.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.config import ServeParams
from components.core.errors import DataError
from components.data.dataset import Dataset, is_null
from components.data.images import ImageProblem

__all__ = [
    "check_text",
    "clip_bytes",
    "decode_base64",
    "image_bytes",
    "json_cell",
    "max_frames_chars",
    "raw_frame",
    "read_confined",
    "sequence_frames",
]


def check_text(value: Any, path: Path, row: int, max_chars: int | None) -> None:
    """The model's rules for a row's text: what `Predictor.features` checks, and `msa predict` before it scores."""
    if not isinstance(value, str):
        rule = "text is missing" if is_null(value) else f"text must be a string, got {type(value).__name__}"
        raise DataError(path, rule, row=row)
    if max_chars is not None and len(value) > max_chars:  # the bound first: the checks below read every character
        rule = f"text has {len(value)} characters; at most {max_chars} (serve.max_text_chars)"
        raise DataError(path, rule + "; longer text is refused, not cut", row=row)
    if "\x00" in value:
        raise DataError(path, "text contains a NUL character", row=row)
    if not value.strip():
        raise DataError(path, "text is blank", row=row)
    if not any(c.isprintable() and not c.isspace() for c in value):
        raise DataError(path, "text has no printable character (only control, format or blank characters)", row=row)


def image_bytes(data: Any, path: Any, image_root: Path | None, limits: ServeParams) -> bytes | None:
    """The image file of a row: inline base64 (`data`) wins over a path; None when the row has neither.

    Inline images are base64 text rather than an MLflow `binary` column: the scoring server base64-decodes every
    cell of a binary column and so cannot pass null, and rows without an image are normal.
    """
    if not is_null(data):
        return decode_base64(
            data,
            "image_base64",
            limits.max_base64_chars,
            ImageProblem,
            f"serve.max_image_bytes {limits.max_image_bytes} as base64",
        )
    if is_null(path):
        return None
    if image_root is None:
        raise ImageProblem("image paths are not read here: send the image as image_base64")
    return read_confined(str(path), image_root, limits.max_image_bytes, "image", ImageProblem, "serve.max_image_bytes")


def clip_bytes(rows: dict[str, list], column: str, i: int, root: Path | None, limits: ServeParams) -> bytes | None:
    """Row `i`'s `column` clip: inline (`<column>_base64`) wins over a path; None when it has neither."""
    from components.data.media import ClipProblem

    inline = rows.get(f"{column}_base64", [None] * (i + 1))[i]
    path = rows.get(column, [None] * (i + 1))[i]
    if not is_null(inline):
        return decode_base64(
            inline,
            f"{column}_base64",
            limits.max_clip_base64_chars,
            ClipProblem,
            f"serve.max_clip_bytes {limits.max_clip_bytes} as base64",
        )
    if is_null(path):
        return None
    if root is None:
        raise ClipProblem(f"{column} paths are not read here: send the clip as {column}_base64")
    if not isinstance(path, str):
        raise ClipProblem(f"{column} must be a path to a clip file (or send {column}_base64)")
    return read_confined(path, root, limits.max_clip_bytes, column, ClipProblem, "serve.max_clip_bytes")


# What `decode_base64` lets through besides the base64 itself: a data: URI's prefix, and line breaks as the `base64`
# tool (76 columns, RFC 2045) or a PEM-style encoder (64) writes them, \r\n included.
_DATA_URI = re.compile(
    rb"data:(?:image|audio|video)/[a-z0-9.+-]{1,64}(?:;[a-z0-9.+-]{1,64}=[a-z0-9.+-]{1,64}){0,4};base64,", re.IGNORECASE
)


_MAX_DATA_URI_PREFIX = 400
_WHITESPACE = b" \t\n\r\f\v"


def decode_base64(data: Any, column: str, max_chars: int, problem: type[ValueError], bound: str) -> bytes:
    """The bytes of an inline file, its length checked before anything is decoded.

    Accepted as sent: plain base64, base64 wrapped in lines (ASCII whitespace is dropped), and a data: URI of an
    image, audio or video type. The text as sent is bounded first (`max_chars` of base64, plus room for a line break
    every 64 characters and a data: prefix), then its base64 characters against `max_chars` itself, then decoded.
    """
    if not isinstance(data, str | bytes):
        raise problem(f"{column} must be base64 text")
    slack = 2 * (max_chars // 64 + 1) + _MAX_DATA_URI_PREFIX
    if len(data) > max_chars + slack:
        raise problem(f"{column} has {len(data)} characters; at most {max_chars} ({bound})")
    try:
        text = data.encode("ascii") if isinstance(data, str) else data
    except UnicodeEncodeError:
        raise problem(f"{column} is not base64 text") from None
    if text[:5].lower() == b"data:":
        prefix = _DATA_URI.match(text, 0, _MAX_DATA_URI_PREFIX)
        if prefix is None:
            raise problem(f"{column} is a data: URI but not data:<image|audio|video type>;base64,<base64 text>")
        text = text[prefix.end() :]
    text = text.translate(None, _WHITESPACE)
    if len(text) > max_chars:
        raise problem(f"{column} has {len(text)} characters; at most {max_chars} ({bound}), line breaks not counted")
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise problem(f"{column} is not base64 text") from None


def read_confined(value: str, root: Path, max_bytes: int, what: str, problem: type[ValueError], bound: str) -> bytes:
    """The file `value` names (relative to `root`), if it resolves inside `root` once symlinks are followed."""
    root = root.resolve()
    path = (root / value).resolve()  # an absolute `value` replaces root here, and is then checked like any other
    if not path.is_relative_to(root):
        flag = "image" if what == "image" else "media"
        raise problem(f"{what} path {value} leaves the {flag} root {root} (--{flag}-root widens it)")
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise problem(f"{what} path {value} is not a file")
        if size > max_bytes:
            raise problem(f"{what} is {size} bytes, more than the {max_bytes} allowed ({bound})")
        return path.read_bytes()
    except OSError as e:
        raise problem(f"cannot read {what} {value}: {e.strerror or e}") from None


def sequence_frames(value: Any, dim: int, modality: str, max_frames: int, source: Path, row: int) -> np.ndarray:
    """Frames [T, dim] of one sample's sequence; an absent sequence is [0, dim]. Sizes are checked before any
    number is converted, so an oversized sequence costs nothing to refuse. A string holding the frames as JSON
    (a CSV cell) is read as `msa predict` reads CSV, after its length is checked against what `max_frames`
    frames of `dim` numbers take."""
    if value is None or (not isinstance(value, Sequence | np.ndarray) and is_null(value)):
        return np.zeros((0, dim), np.float32)
    if isinstance(value, str):
        if len(value) > (most := max_frames_chars(max_frames, dim)):
            rule = f"{modality} has {len(value)} characters of JSON frames; at most {most} for {max_frames} frames"
            raise DataError(source, rule + " (serve.max_frames)", row=row)
        value = json_cell(value, source, row, modality)  # text that is not a JSON list stays text: refused below
    shape_rule = f"{modality} must be a list of frames of {dim} numbers each"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise DataError(source, shape_rule, row=row)
    if len(value) > max_frames:
        raise DataError(source, f"{modality} has {len(value)} frames; at most {max_frames} (serve.max_frames)", row=row)
    if len(value) == 0:
        return np.zeros((0, dim), np.float32)
    if any(isinstance(f, str | bytes) or not isinstance(f, Sequence | np.ndarray) or len(f) != dim for f in value):
        raise DataError(source, f"{shape_rule}; the model expects [frames, {dim}]", row=row)
    # Every value a number, before numpy converts any: it would read "1" and true as numbers, and a list inside a
    # frame as another axis. One quick pass over the values' types (a set of one or two).
    if not (isinstance(value, np.ndarray) and value.dtype.kind in "fiu"):
        kinds = {type(x) for frame in value for x in frame}
        if not_numbers := sorted(_json_name(k) for k in kinds if not _is_number(k)):
            raise DataError(source, f"{shape_rule}; found {not_numbers[0]} where a number belongs", row=row)
    try:  # the lengths and types are checked: one conversion of the whole [frames, dim] block
        with np.errstate(over="ignore"):  # a number beyond float32 becomes inf, told apart below
            array = np.asarray(value, np.float32)
    except OverflowError:  # an integer beyond any float (10**400)
        raise DataError(source, _range_rule(modality), row=row) from None
    except (TypeError, ValueError):
        raise DataError(source, shape_rule, row=row) from None
    if array.ndim != 2:
        raise DataError(source, f"{shape_rule}; the model expects [frames, {dim}]", row=row)
    if not np.isfinite(array).all():
        if np.isfinite(np.asarray(value, np.float64)).all():  # finite as sent: too large for the model's float32
            raise DataError(source, _range_rule(modality), row=row)
        raise DataError(source, f"{modality} has NaN or infinite values", row=row)
    return array


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_JSON_NAMES = {bool: "true/false", str: "a string", type(None): "null", list: "a list", dict: "an object"}
_NUMBER_CHARS = 32  # a JSON number as written (repr of a float: at most 24) with its comma and spaces


def max_frames_chars(max_frames: int, dim: int) -> int:
    """The longest JSON text of `max_frames` frames of `dim` numbers each: the bound on a frames cell's length."""
    return 2 + max_frames * (dim * _NUMBER_CHARS + 4)


def _is_number(kind: type) -> bool:
    """Python's and numpy's integers and floats; not bool (an int subclass) nor numpy's bool."""
    return kind in (int, float) or issubclass(kind, np.integer | np.floating)


def _json_name(kind: type) -> str:
    return _JSON_NAMES.get(kind, f"a {kind.__name__}")


def _range_rule(modality: str) -> str:
    return f"{modality} has a number out of range: frame values are at most {_FLOAT32_MAX:.4g} in magnitude"


def json_cell(value: Any, path: Path, row: int, column: str) -> Any:
    """A CSV cell of frames as JSON; any other text stays as it is (a clip model's `audio` is a file path)."""
    if is_null(value):
        return None
    if not value.lstrip().startswith("["):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise DataError(
            path, f"column {column!r} must hold JSON frames such as [[0.1, 0.2], [0.3, 0.4]]", row=row
        ) from None


def raw_frame(dataset: Dataset, split: str, *, limit: int | None = None, inline_images: bool = False) -> pd.DataFrame:
    """One split of a canonical dataset as the model's raw input rows, with `id` and `label` columns in front.

    Images and clips are absolute paths, or with `inline_images` the files themselves (`image_base64`,
    `audio_base64`, `video_base64`), e.g. for an input example that must work where the dataset is not.
    """
    if dataset.root is None:
        raise ValueError("dataset was not read from disk, so its files have no location")
    root = dataset.root.absolute()  # a relative root would be joined to the reader's root a second time
    samples = dataset.samples[dataset.samples["split"] == split].iloc[:limit].reset_index(drop=True)  # None: all
    frame = pd.DataFrame({"id": samples["id"], "label": samples["label"]})
    modalities = dataset.manifest.modalities
    if modalities.text is not None:
        frame["text"] = samples["text"]
    if modalities.image is not None:
        paths = [None if is_null(p) else root / p for p in samples["image"]]
        if inline_images:
            frame["image_base64"] = [None if p is None else _base64(p) for p in paths]
        else:
            frame["image"] = [None if p is None else str(p) for p in paths]
    clips = [c for c in ("audio", "video") if dataset.manifest.modalities.clips and c in samples]
    for column in clips:  # as files: vision from the video, audio from the audio clip (or the video's soundtrack)
        paths = [None if is_null(p) else root / p for p in samples[column]]
        if inline_images:
            frame[f"{column}_base64"] = [None if p is None else _base64(p) for p in paths]
        else:
            frame[column] = [None if p is None else str(p) for p in paths]
    for modality, arrays in dataset.sequences.items():
        frame[modality] = [
            None if is_null(i) else arrays.features[int(i), : int(arrays.lengths[int(i)])].tolist()
            for i in samples["seq_index"]
        ]
    return frame


def _base64(file: Path) -> str:
    return base64.b64encode(file.read_bytes()).decode()
