"""The drift reference: what a registered model learned from, kept in its signed package (`drift/`).

Registration summarizes a uniform sample of the train split's rows (`summaries`) and the model's predictions on a
sample of the held-out rows (valid and test): a model scores the rows it trained on more confidently than any new
row, so predictions on train rows would make every new batch look drifted. The arrays are safetensors, the rest
JSON: no pickle, and the package's signature covers both, so a loader compares batches with the reference the
registry signed, never one edited since.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import sparse

from components.core.atomic import write_bytes, write_json
from components.core.config import Section
from components.core.errors import DataError
from components.monitoring.summaries import Summaries

__all__ = ["REFERENCE_DIR", "DriftReference", "ReferenceInfo", "read_reference", "write_reference"]

REFERENCE_DIR = "drift"  # inside the serving package
_ARRAYS, _INFO = "reference.safetensors", "reference.json"


class ReferenceInfo(Section):
    rows: int  # train rows summarized
    held_out_rows: int  # held-out rows whose predictions are the reference's
    vocabulary: int  # the tokenizer's size: the text counts' width
    label: Literal["regression", "classification"]
    classes: tuple[str, ...] = ()
    dataset: str
    dataset_version: str
    seed: int


@dataclass
class DriftReference:
    info: ReferenceInfo
    inputs: Summaries
    scores: np.ndarray  # regression: the held-out rows' predicted scores; classification: their class indices


def write_reference(package: Path, reference: DriftReference) -> Path:
    """`reference` into the package directory `package` (before it is signed)."""
    from safetensors.numpy import save

    inputs = reference.inputs
    arrays: dict[str, np.ndarray] = {"prediction": reference.scores}
    if inputs.text is not None:
        text = inputs.text.tocsr()
        arrays |= {
            "text.indptr": text.indptr.astype(np.int64),
            "text.indices": text.indices.astype(np.int64),
            "text.counts": text.data.astype(np.float32),
        }
    arrays |= {f"{m}.stats": s.astype(np.float32) for m, s in inputs.stats.items()}
    arrays |= {f"{m}.present": p.astype(np.bool_) for m, p in inputs.present.items()}
    folder = package / REFERENCE_DIR
    folder.mkdir(exist_ok=True)
    write_bytes(folder / _ARRAYS, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    write_json(folder / _INFO, reference.info.model_dump(mode="json"))
    return folder


def read_reference(package: Path) -> DriftReference | None:
    """The package's reference; None for a package registered without one."""
    from safetensors.numpy import load

    folder = package / REFERENCE_DIR
    if not (folder / _INFO).is_file():
        return None
    try:
        info = ReferenceInfo.model_validate_json((folder / _INFO).read_bytes())
        arrays = load((folder / _ARRAYS).read_bytes())
        text = None
        if "text.indptr" in arrays:
            shape = (info.rows, info.vocabulary)
            text = sparse.csr_matrix((arrays["text.counts"], arrays["text.indices"], arrays["text.indptr"]), shape)
        present = {k.removesuffix(".present"): v for k, v in arrays.items() if k.endswith(".present")}
        stats = {k.removesuffix(".stats"): v for k, v in arrays.items() if k.endswith(".stats")}
        inputs = Summaries(info.rows, text, stats, present)
        if any(len(v) != info.rows for v in (*present.values(), *stats.values())):
            raise ValueError("arrays of another row count than recorded")
        return DriftReference(info, inputs, arrays["prediction"])
    except (OSError, ValueError, KeyError) as e:
        raise DataError(folder, f"not a readable drift reference ({type(e).__name__}: {e})") from None
