"""The canonical dataset directory, the data contract every stage reads.

    manifest.yaml      name, version, label kind, modalities and their feature dimensions
    samples.parquet    id, split, text, label, image, seq_index (one row per sample); audio and video too when a
                       modality comes from clips
    images/            PNG/JPEG files, referenced from `image` by a path relative to the dataset root
    sequences/         <modality>.safetensors with `features` [N, T, D] float32 and `lengths` [N] int64,
                       row `seq_index` of each belongs to the sample (audio and vision share the index)
    audio/             WAV/FLAC clips, referenced from `audio` (relative path), for `audio: {source: clips}`
    video/             MP4/WebM clips, referenced from `video`, for `vision: {source: clips}`; a sample without
                       an audio file but with a video gets its audio features from the video's soundtrack

A sequence modality comes either from feature sequences (`sequences/`, the MMSA layout) or from clips, which
featurize turns into frame features (`components.data.media`) with the settings recorded in its state, so the served
model extracts a caller's clip the same way.

No pickle anywhere: parquet, YAML and safetensors cannot execute code when read. `read_dataset` fails only
when a file cannot be parsed at all; whether the content obeys the contract is `components.data.validation`'s job.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from components.core.atomic import replace_directory, write_bytes
from components.core.errors import ConfigError, DataError
from components.core.textfiles import yaml_problem

__all__ = [
    "CLIP_COLUMNS",
    "CLIP_SUFFIXES",
    "IMAGE_SUFFIXES",
    "MANIFEST",
    "SAMPLES",
    "SEQUENCE_MODALITIES",
    "SPLITS",
    "ClassificationLabel",
    "ClipBounds",
    "Dataset",
    "ImageSpec",
    "Manifest",
    "Modalities",
    "RegressionLabel",
    "SequenceArray",
    "SequenceSpec",
    "TextSpec",
    "carve_splits",
    "clip_path_problem",
    "image_path_problem",
    "is_null",
    "label_range",
    "read_dataset",
    "read_manifest",
    "write_dataset",
]

SPLITS = ("train", "valid", "test")
SEQUENCE_MODALITIES = ("audio", "vision")
MANIFEST, SAMPLES, IMAGES, SEQUENCES = "manifest.yaml", "samples.parquet", "images", "sequences"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Clip columns and folders, and the file types each holds: vision clips are videos, audio clips are sound files.
CLIP_COLUMNS = ("audio", "video")
CLIP_SUFFIXES = {"audio": (".wav", ".flac"), "video": (".mp4", ".webm")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegressionLabel(_Strict):
    kind: Literal["regression"] = "regression"
    min: float = -3.0
    max: float = 3.0

    @model_validator(mode="after")
    def _ordered(self) -> RegressionLabel:
        if not self.min < self.max:
            raise ValueError(f"label range is empty: min {self.min} >= max {self.max}")
        return self


class ClassificationLabel(_Strict):
    kind: Literal["classification"] = "classification"
    classes: list[str] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct(self) -> ClassificationLabel:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeat: {self.classes}")
        return self


def label_range(label_min: float, label_max: float) -> RegressionLabel:
    """The regression label spec an importer's --label-min and --label-max give, checked before any work: a
    ConfigError for a range that is empty or not finite (the spec's own check would surface as a traceback)."""
    if not (math.isfinite(label_min) and math.isfinite(label_max)):
        raise ConfigError(f"--label-min and --label-max must be finite numbers; got {label_min:g} and {label_max:g}")
    if not label_min < label_max:
        raise ConfigError(
            f"--label-min must be below --label-max; got --label-min {label_min:g} and --label-max {label_max:g}"
        )
    return RegressionLabel(min=label_min, max=label_max)


LabelSpec = Annotated[RegressionLabel | ClassificationLabel, Field(discriminator="kind")]


class TextSpec(_Strict):
    """Text is always required when declared: an empty utterance carries no signal."""


class ImageSpec(_Strict):
    height: int | None = Field(None, ge=1, description="nominal size; featurize resizes every image anyway")
    width: int | None = Field(None, ge=1)
    allow_missing: bool = False


class SequenceSpec(_Strict):
    source: Literal["clips"] | None = Field(
        None, description="clips: extracted from the audio/ or video/ files; absent: feature arrays in sequences/"
    )
    dim: int | None = Field(None, ge=1, description="features per time step (feature sequences only)")
    max_len: int = Field(ge=1, description="time steps kept per sample")
    allow_missing: bool = False

    @model_validator(mode="after")
    def _dim_when_stored(self) -> SequenceSpec:
        if self.source is None and self.dim is None:
            raise ValueError("dim is required for feature sequences (or set source: clips)")
        if self.source == "clips" and self.dim is not None:
            raise ValueError("dim is decided by the extractor for source: clips; remove it")
        return self


class ClipBounds(_Strict):
    """What a clip may be before it is decoded: checked by validate, featurize and the served model."""

    max_bytes: int = Field(500_000_000, ge=1, description="per file")
    max_seconds: float = Field(600.0, gt=0, description="per clip, from the header and again while decoding")
    min_sample_rate: int = Field(8000, ge=1, description="audio streams below this rate (Hz) are refused")
    max_sample_rate: int = Field(192_000, ge=1)
    max_pixels: int = Field(1920 * 1080, ge=1, description="video width x height")

    @model_validator(mode="after")
    def _rates_ordered(self) -> ClipBounds:
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError(f"min_sample_rate {self.min_sample_rate} exceeds max_sample_rate {self.max_sample_rate}")
        return self


class Modalities(_Strict):
    text: TextSpec | None = None
    image: ImageSpec | None = None
    audio: SequenceSpec | None = None
    vision: SequenceSpec | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Modalities:
        if not self.present:
            raise ValueError("declare at least one modality (text, image, audio, vision)")
        return self

    @property
    def present(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]

    @property
    def sequences(self) -> dict[str, SequenceSpec]:
        """The modalities stored as feature arrays in sequences/."""
        return {m: s for m in SEQUENCE_MODALITIES if (s := getattr(self, m)) is not None and s.source is None}

    @property
    def clips(self) -> dict[str, SequenceSpec]:
        """The modalities extracted from audio/ and video/ files."""
        return {m: s for m in SEQUENCE_MODALITIES if (s := getattr(self, m)) is not None and s.source == "clips"}


class Manifest(_Strict):
    name: str = Field(min_length=1)
    version: str = "1"
    description: str = ""
    synthetic: bool = False
    source: str | None = None
    label: LabelSpec
    modalities: Modalities
    clip_bounds: ClipBounds | None = Field(None, description="bounds on clips; absent: the defaults")

    @property
    def clips(self) -> ClipBounds:
        return self.clip_bounds or ClipBounds()


@dataclass(frozen=True)
class SequenceArray:
    """Padded feature sequences of one modality and the true length of each."""

    features: np.ndarray  # [N, T, D] float32
    lengths: np.ndarray  # [N] int64


@dataclass
class Dataset:
    manifest: Manifest
    samples: pd.DataFrame
    sequences: dict[str, SequenceArray] = field(default_factory=dict)
    root: Path | None = None

    def image_path(self, relative: str) -> Path:
        if self.root is None:
            raise ValueError("dataset was not read from disk, so its images have no location")
        return self.root / relative

    def clip_files(self, modality: str) -> list[Path | None]:
        """Per sample, the file `modality`'s features are extracted from, or None: vision from `video`; audio from
        `audio`, else from the soundtrack of `video`."""
        if self.root is None:
            raise ValueError("dataset was not read from disk, so its clips have no location")
        columns = ("video",) if modality == "vision" else ("audio", "video")
        n = len(self.samples)
        cells = [self.samples[c].tolist() if c in self.samples else [None] * n for c in columns]
        files: list[Path | None] = []
        for row in zip(*cells, strict=True):
            relative = next((value for value in row if not is_null(value)), None)
            files.append(None if relative is None else self.root / relative)
        return files


def samples_schema(manifest: Manifest) -> pa.Schema:
    label_type = pa.float64() if manifest.label.kind == "regression" else pa.string()
    # Clip columns only where clips are declared: a dataset without clips keeps its bytes (and its DVC hash).
    clips = [pa.field(c, pa.string()) for c in CLIP_COLUMNS] if manifest.modalities.clips else []
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("label", label_type),
            pa.field("image", pa.string()),
            pa.field("seq_index", pa.int64()),
            *clips,
        ]
    )


def write_dataset(
    path: str | Path,
    manifest: Manifest,
    samples: pd.DataFrame,
    sequences: Mapping[str, SequenceArray] | None = None,
    images: Mapping[str, bytes | Path] | None = None,
    clips: Mapping[str, bytes | Path] | None = None,
) -> Path:
    """Write a dataset atomically: it appears complete at `path`, or an existing one stays untouched.

    `images` maps each path used in the `image` column to its bytes or to a file to copy; `clips` likewise for
    the `audio` and `video` columns. The output is a pure function of the inputs (no timestamps, no library
    metadata beyond the file formats'), so the same inputs give byte-identical files and a stable DVC hash.
    """
    schema = samples_schema(manifest)
    frame = samples.reindex(columns=schema.names)
    # No pandas metadata: it records the pandas version, which would change the bytes (and the DVC hash).
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False).replace_schema_metadata(None)
    manifest_yaml = yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)

    for name in images or {}:
        if problem := image_path_problem(name):
            raise ValueError(f"image path {name!r} must be a relative path inside {IMAGES}/ ({problem})")
    for name in clips or {}:
        if not any(clip_path_problem(name, column) is None for column in CLIP_COLUMNS):
            raise ValueError(f"clip path {name!r} must be a relative path inside audio/ or video/")
    files = {**(images or {}), **(clips or {})}
    with replace_directory(path, marker=MANIFEST) as staging:
        write_bytes(staging / MANIFEST, manifest_yaml.encode("utf-8"))
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        write_bytes(staging / SAMPLES, buffer.getvalue())
        for name, content in sorted(files.items()):
            write_bytes(staging / name, content.read_bytes() if isinstance(content, Path) else content)
        for modality, seq in sorted((sequences or {}).items()):
            arrays: dict[str, np.ndarray] = {
                "features": np.ascontiguousarray(seq.features, dtype=np.float32),
                "lengths": np.ascontiguousarray(seq.lengths, dtype=np.int64),
            }
            write_bytes(staging / SEQUENCES / f"{modality}.safetensors", save(arrays))
    return Path(path)


def is_null(value: object) -> bool:
    """A missing cell as pandas and JSON give it: None, pd.NA or a float NaN."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def image_path_problem(relative: str) -> str | None:
    """Why an `image` value cannot name a file of this dataset, or None: images live inside `images/`, never
    absolute and never climbing out. Lexical on purpose: DVC's symlink cache links are the dataset's own files."""
    return _inside_problem(relative, IMAGES)


def clip_path_problem(relative: str, column: str) -> str | None:
    """Why an `audio` or `video` value cannot name a clip of this dataset, or None (as `image_path_problem`)."""
    if problem := _inside_problem(relative, column):
        return problem
    if not relative.lower().endswith(CLIP_SUFFIXES[column]):
        return f"not a {' or '.join(CLIP_SUFFIXES[column])} file: {relative}"
    return None


def _inside_problem(relative: str, folder: str) -> str | None:
    posix = PurePosixPath(relative)
    if any(p.is_absolute() or p.drive or p.root or ".." in p.parts for p in (posix, PureWindowsPath(relative))):
        return f"path escapes the dataset root: {relative}"
    if posix.parts[:1] != (folder,) or len(posix.parts) < 2:
        return f"not under {folder}/: {relative}"
    return None


def carve_splits(n: int, *, seed: int, fractions: dict[str, float]) -> list[str]:
    """Assign each of `n` rows to a split: `round(n * fraction)` rows per split named in `fractions`, the
    rest to train. The same `seed` gives the same assignment, so a re-import yields the same dataset."""
    if any(not 0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        given = ", ".join(f"--{split}-frac {f:g}" for split, f in fractions.items())
        raise ConfigError(f"split fractions must be between 0 and 1 and leave rows for train; got {given}")
    order = np.random.default_rng(seed).permutation(n)
    splits = np.full(n, "train", dtype=object)
    start = 0
    for split, fraction in fractions.items():
        count = round(n * fraction)
        splits[order[start : start + count]] = split
        start += count
    return splits.tolist()


def dataset_dir(path: str | Path) -> Path:
    """`path` when it is a directory; else a DataError saying what it is instead (a file named as data.raw or --data
    would otherwise fail deep in a reader)."""
    root = Path(path)
    if root.is_dir():
        return root
    if root.exists():
        raise DataError(
            root, f"is a file, not a dataset directory: name the directory that holds {MANIFEST} and {SAMPLES}"
        )
    raise DataError(root, "no dataset directory here (create one with `msa data demo` or `msa data import`)")


def read_manifest(path: str | Path) -> Manifest:
    file = dataset_dir(path) / MANIFEST
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(file, "missing: every dataset directory needs a manifest.yaml") from None
    except OSError as e:  # a directory named manifest.yaml, no permission, ...
        raise DataError(file, f"cannot read it: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(file, yaml_problem(e)) from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}" for err in e.errors())
        raise DataError(file, f"manifest does not match the schema: {problems}") from None


def read_dataset(path: str | Path) -> Dataset:
    root = dataset_dir(path)
    manifest = read_manifest(root)
    samples_file = root / SAMPLES
    try:
        samples = pd.read_parquet(samples_file)
    except FileNotFoundError:
        raise DataError(samples_file, "missing: every dataset directory needs a samples.parquet") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(samples_file, f"not a readable parquet file: {e}") from None
    index = samples.get("seq_index")
    if index is not None and pd.api.types.is_numeric_dtype(index) and (index.dropna() % 1 == 0).all():
        # One dtype whether or not nulls are present (int64 with nulls arrives as float64). Fractional values stay
        # as they are, for validation to report.
        samples["seq_index"] = index.astype("Int64")
    sequences = {m: read_sequences(root, m) for m in manifest.modalities.sequences}
    return Dataset(manifest=manifest, samples=samples, sequences=sequences, root=root)


def read_sequences(root: Path, modality: str) -> SequenceArray:
    file = root / SEQUENCES / f"{modality}.safetensors"
    try:
        arrays = load_file(file)
    except FileNotFoundError:
        raise DataError(file, f"missing: the manifest declares the {modality} modality") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(file, f"not a readable safetensors file: {e}") from None
    missing = {"features", "lengths"} - arrays.keys()
    if missing:
        raise DataError(file, f"missing tensor(s) {sorted(missing)}; expected 'features' [N, T, D] and 'lengths' [N]")
    return SequenceArray(features=arrays["features"], lengths=arrays["lengths"])
