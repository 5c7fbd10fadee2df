"""Import the MMSA pickle layout (CMU-MOSI, CMU-MOSEI, CH-SIMS as distributed for the MMSA toolkit)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.errors import DataError
from components.data.dataset import (
    SEQUENCE_MODALITIES,
    SPLITS,
    Manifest,
    Modalities,
    SequenceArray,
    SequenceSpec,
    TextSpec,
    label_range,
    write_dataset,
)

__all__ = ["import_mmsa"]

REQUIRED_KEYS = ("raw_text", "audio", "vision", "regression_labels", "id")


def import_mmsa(
    pickle_path: Path,
    out: Path,
    *,
    trust_pickle: bool,
    name: str | None = None,
    label_min: float = -3.0,
    label_max: float = 3.0,
    zero_nonfinite: bool = False,
) -> Path:
    """Convert an MMSA pickle (`train`/`valid`/`test` dicts of arrays) into the canonical dataset at `out`.

    Non-finite audio/vision values are kept by default so that validation reports them; `zero_nonfinite`
    replaces them with 0, as MMSA's own loader does for the -inf values in MOSI's audio features.
    """
    pickle_path = Path(pickle_path)
    label = label_range(label_min, label_max)
    data = _load_trusted_pickle(pickle_path, trust_pickle)
    if not isinstance(data, dict):
        raise DataError(pickle_path, f"expected a dict with keys {list(SPLITS)}, found a {type(data).__name__}")

    frames: list[pd.DataFrame] = []
    arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in SEQUENCE_MODALITIES}
    offset = 0
    for split in SPLITS:
        part = _split(pickle_path, data, split)
        n = len(part["id"])
        frames.append(
            pd.DataFrame(
                {
                    "id": [str(i) for i in part["id"]],
                    "split": split,
                    "text": [str(t) for t in part["raw_text"]],
                    "label": part["regression_labels"],
                    "image": None,
                    "seq_index": pd.array(range(offset, offset + n), dtype="Int64"),
                }
            )
        )
        for m in SEQUENCE_MODALITIES:
            arrays[m].append((part[m], part[f"{m}_lengths"]))
        offset += n

    samples = pd.concat(frames, ignore_index=True)
    sequences = {m: _concat(pickle_path, m, parts, zero_nonfinite) for m, parts in arrays.items()}
    specs = {m: SequenceSpec(dim=s.features.shape[2], max_len=s.features.shape[1]) for m, s in sequences.items()}
    manifest = Manifest(
        name=name or pickle_path.stem,
        version="1",
        source=pickle_path.name,
        label=label,
        modalities=Modalities(text=TextSpec(), **specs),
    )
    return write_dataset(out, manifest, samples, sequences)


def _load_trusted_pickle(path: Path, trust: bool) -> Any:
    """Refuse before opening the file: unpickling runs whatever code the file's author put in it."""
    if not trust:
        raise DataError(
            path,
            "refusing to load a pickle: loading a pickle can execute arbitrary code. Pass --trust-pickle "
            "(trust_pickle=True) only for a file from a source you trust",
        )
    try:
        with path.open("rb") as f:
            return pickle.load(f)  # the user vouched for this file
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(
            path, f"not a loadable pickle, the file is truncated or corrupt ({type(e).__name__}: {e})"
        ) from None


def _split(path: Path, data: dict, split: str) -> dict[str, np.ndarray]:
    """One split's arrays, checked for presence, shape and matching row counts."""
    if split not in data:
        raise DataError(path, f"missing split '{split}'; found keys {sorted(map(str, data))}")
    raw = data[split]
    if not isinstance(raw, dict):
        raise DataError(path, f"split '{split}' should be a dict of arrays, found a {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise DataError(path, f"split '{split}': missing key(s) {missing}; found {sorted(map(str, raw))}")

    part = {k: _array(path, split, k, raw[k]) for k in REQUIRED_KEYS}
    for key in ("raw_text", "id"):
        if part[key].ndim != 1:
            raise DataError(path, f"split '{split}': '{key}' should be [N] strings, found shape {part[key].shape}")
    labels = part["regression_labels"]
    if labels.ndim == 2 and labels.shape[1] == 1:  # some files store [N, 1]
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.number):
        raise DataError(
            path, f"split '{split}': 'regression_labels' should be [N] numbers, found {labels.dtype} {labels.shape}"
        )
    part["regression_labels"] = labels.astype(np.float64)
    for m in SEQUENCE_MODALITIES:
        if part[m].ndim != 3 or not np.issubdtype(part[m].dtype, np.number):
            raise DataError(
                path, f"split '{split}': '{m}' should be numbers [N, T, D], found {part[m].dtype} {part[m].shape}"
            )
        key = f"{m}_lengths"
        # Older files have no lengths: every sample then spans the full (padded) T.
        default = np.full(len(part[m]), part[m].shape[1])
        part[key] = _array(path, split, key, raw[key]).reshape(-1) if key in raw else default
    counts = {k: len(v) for k, v in part.items()}
    if len(set(counts.values())) != 1:
        raise DataError(path, f"split '{split}': arrays disagree on the number of samples: {counts}")
    return part


def _array(path: Path, split: str, key: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:  # e.g. ragged nested lists
        raise DataError(path, f"split '{split}': '{key}' is not a rectangular array ({e})") from None


def _concat(
    path: Path, modality: str, parts: list[tuple[np.ndarray, np.ndarray]], zero_nonfinite: bool
) -> SequenceArray:
    """Stack the splits in order, zero-padding time to the longest split's T."""
    dims = {f.shape[2] for f, _ in parts}
    if len(dims) != 1:
        raise DataError(path, f"'{modality}' feature dimension differs between splits: {sorted(dims)}")
    steps = max(f.shape[1] for f, _ in parts)
    padded = [np.pad(f.astype(np.float32), ((0, 0), (0, steps - f.shape[1]), (0, 0))) for f, _ in parts]
    features = np.concatenate(padded)
    if zero_nonfinite:
        features[~np.isfinite(features)] = 0.0
    lengths = np.concatenate([lengths for _, lengths in parts]).astype(np.int64)
    return SequenceArray(features=features, lengths=lengths)
