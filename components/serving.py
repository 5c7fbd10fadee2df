"""The served model: raw inputs in, a sentiment score and class out.

`package_model` turns what `featurize` and `train` wrote into one self-contained directory: the model in its
standalone form (the frozen transformer inside, so no precomputed token states are needed), its spec, the
featurizer state (tokenizer settings, image and sequence statistics of the train split) and the tokenizer. That
directory is the MLflow pyfunc's data; MLflow loads it through `_load_pyfunc` below, which reads JSON and
safetensors only: no pickle anywhere in the model.

Input columns (a pandas DataFrame, one row per sample; a column for a modality the model lacks is ignored):
    text         string, required when the model reads text
    image        string, path of a PNG/JPEG file (relative paths against `base`), or null
    image_base64 string, the image file itself, base64-encoded (wins over `image`), or null
    audio        frames [T][D] of numbers, or null          (likewise vision)
Output columns: `score` (regression: the fused sentiment score; classification: the predicted class's
probability) and `class` (regression: positive for score >= 0, else negative, as Acc-2 counts it).
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.atomic import replace_directory, write_json, write_text
from components.dataset import SEQUENCE_MODALITIES, Dataset, is_null
from components.errors import DataError
from components.featurize import (
    STATE,
    FeaturizerState,
    encode_texts,
    fit_image,
    load_tokenizer,
    read_state,
    standardize,
)
from components.model_store import CARD, WEIGHTS, ModelCard
from components.text_model import resolve_text_model

TEXT = "text"  # tokenizer and transformer config, inside the package
INPUT = Path("<model input>")  # what errors name when the rows did not come from a file
BATCH = 64


def package_model(model_dir: str | Path, features: str | Path, dest: str | Path) -> Path:
    """Write the self-contained serving package for the model in `model_dir`, trained on `features`."""
    from safetensors.torch import save_file

    from components.model_store import load_trained, read_card

    model_dir, dest = Path(model_dir), Path(dest)
    state = read_state(features)
    card = read_card(model_dir)
    if card.featurizer_key != state.key:
        raise DataError(
            Path(features),
            f"features changed since the model in {model_dir} was trained on them: run `msa train` (or `dvc repro`)",
        )
    model = load_trained(model_dir, standalone=True)
    spec = model.spec
    with replace_directory(dest) as staging:
        if spec.text is not None:
            from transformers import AutoConfig

            source = resolve_text_model(spec.text.encoder)
            load_tokenizer(source).save_pretrained(staging / TEXT)
            AutoConfig.from_pretrained(source, local_files_only=True).save_pretrained(staging / TEXT)
            spec = spec.model_copy(update={"text": spec.text.model_copy(update={"encoder": TEXT})})
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / WEIGHTS)
        write_json(staging / CARD, card.model_copy(update={"spec": spec}).model_dump(mode="json"))
        write_json(staging / STATE, state.model_dump(mode="json", exclude={"ids"}))
    return dest


class Predictor:
    """A packaged model, ready for raw rows; `predict` is what MLflow's pyfunc calls."""

    def __init__(self, root: str | Path) -> None:
        from safetensors.torch import load_file

        from components.model_store import monitored_head
        from components.models import MultiTaskModel

        root = Path(root)
        try:
            spec = ModelCard.model_validate_json((root / CARD).read_bytes()).spec
            self.state = FeaturizerState.model_validate_json((root / STATE).read_text())
            if spec.text is not None:  # the package's own tokenizer and transformer config, wherever it was moved
                spec = spec.model_copy(update={"text": spec.text.model_copy(update={"encoder": str(root / TEXT)})})
            self.model = MultiTaskModel(spec, pretrained=False, standalone=True).eval()
            self.model.load_state_dict(load_file(root / WEIGHTS))
            self.tokenizer = load_tokenizer(root / TEXT) if spec.text is not None else None
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise DataError(root, f"not a readable model package ({type(e).__name__}: {e})") from None
        self.spec = spec
        self.head = monitored_head(spec)

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image", *SEQUENCE_MODALITIES) if getattr(self.spec, m) is not None]

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Scores and classes for every row (MLflow passes `params`; there are none)."""
        return self.predict_frame(model_input)

    def predict_frame(self, frame: pd.DataFrame, *, source: Path = INPUT, base: Path | None = None) -> pd.DataFrame:
        """As `predict`; errors name `source` and the row, and image paths are relative to `base` (default: cwd)."""
        import torch

        frame = pd.DataFrame(frame).reset_index(drop=True)
        if self.spec.text is not None and "text" not in frame.columns:
            raise DataError(source, f"missing required column 'text'; got columns {list(frame.columns)}")
        scores: list[np.ndarray] = []
        for start in range(0, len(frame), BATCH):
            batch = self.features(frame.iloc[start : start + BATCH], source=source, base=base, first_row=start)
            with torch.inference_mode():
                scores.append(self.model({k: torch.from_numpy(v) for k, v in batch.items()})[self.head].float().numpy())
        return self._decide(np.concatenate(scores) if scores else np.zeros((0,), np.float32))

    def features(
        self, rows: pd.DataFrame, *, source: Path = INPUT, base: Path | None = None, first_row: int = 0
    ) -> dict[str, np.ndarray]:
        """The model's input tensors for raw `rows`, made exactly as `featurize` made them for training."""
        out: dict[str, np.ndarray] = {}
        n = len(rows)
        present = np.zeros(n, bool)
        if self.spec.text is not None:
            texts = rows["text"].tolist()
            for i, text in enumerate(texts):
                if not isinstance(text, str) or not text.strip():
                    raise DataError(source, "text is missing or blank", row=first_row + i + 1)
            out |= encode_texts(self.tokenizer, texts, self.state.text)
            present[:] = True
        if self.spec.image is not None:
            size = self.state.image.size
            pixels, has = np.zeros((n, 3, size, size), np.uint8), np.zeros(n, bool)
            for i in range(n):
                try:
                    if (image := _image_source(rows, i, base)) is not None:
                        pixels[i], has[i] = fit_image(image, size), True
                except (OSError, ValueError) as e:
                    raise DataError(source, f"image does not decode: {e}", row=first_row + i + 1) from None
            out |= {"image.pixels": pixels, "image.present": has}
            present |= has
        for modality in SEQUENCE_MODALITIES:
            if getattr(self.spec, modality) is None:
                continue
            state = getattr(self.state, modality)
            frames = np.zeros((n, state.max_len, state.dim), np.float32)
            mask = np.zeros((n, state.max_len), bool)
            column = rows[modality].tolist() if modality in rows.columns else [None] * n
            for i, value in enumerate(column):
                sequence = _frames(value, state.dim, modality, source, first_row + i + 1)
                kept = sequence[: state.max_len]
                frames[i, : len(kept)], mask[i, : len(kept)] = kept, True
            out |= {
                f"{modality}.features": standardize(frames, mask, state),
                f"{modality}.mask": mask,
                f"{modality}.present": mask.any(1),
            }
            present |= mask.any(1)
        if not present.all():
            row = int(np.flatnonzero(~present)[0]) + first_row + 1
            raise DataError(
                source, f"no input for any of the model's modalities ({', '.join(self.modalities)})", row=row
            )
        return out

    def _decide(self, outputs: np.ndarray) -> pd.DataFrame:
        if self.spec.label.kind == "regression":
            score = outputs.astype(np.float64)
            return pd.DataFrame({"score": score, "class": np.where(score >= 0, "positive", "negative")})
        logits = outputs - outputs.max(1, keepdims=True)
        probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        best = probabilities.argmax(1)
        classes = np.asarray(self.spec.label.classes, dtype=object)
        return pd.DataFrame(
            {"score": probabilities[np.arange(len(best)), best].astype(np.float64), "class": classes[best]}
        )


def raw_frame(dataset: Dataset, split: str, *, limit: int | None = None, inline_images: bool = False) -> pd.DataFrame:
    """One split of a canonical dataset as the model's raw input rows, with `id` and `label` columns in front.

    Images are absolute paths, or with `inline_images` the files themselves (`image_base64`), e.g. for an input
    example that must work where the dataset is not.
    """
    samples = dataset.samples[dataset.samples["split"] == split].head(limit).reset_index(drop=True)
    frame = pd.DataFrame({"id": samples["id"], "label": samples["label"]})
    modalities = dataset.manifest.modalities
    if modalities.text is not None:
        frame["text"] = samples["text"]
    if modalities.image is not None:
        paths = [None if is_null(p) else dataset.image_path(p) for p in samples["image"]]
        if inline_images:
            frame["image_base64"] = [None if p is None else base64.b64encode(p.read_bytes()).decode() for p in paths]
        else:
            frame["image"] = [None if p is None else str(p) for p in paths]
    for modality, arrays in dataset.sequences.items():
        frame[modality] = [
            None if is_null(i) else arrays.features[int(i), : int(arrays.lengths[int(i)])].tolist()
            for i in samples["seq_index"]
        ]
    return frame


def _image_source(rows: pd.DataFrame, i: int, base: Path | None) -> Path | io.BytesIO | None:
    """The image of row `i`: inline base64 wins over a path; None when the row has neither.

    Inline images are base64 text rather than an MLflow `binary` column: the scoring server base64-decodes every
    cell of a binary column and so cannot pass null, and rows without an image are normal.
    """
    data = rows["image_base64"].iloc[i] if "image_base64" in rows.columns else None
    if not is_null(data):
        try:
            return io.BytesIO(base64.b64decode(data, validate=True))
        except (TypeError, ValueError):
            raise ValueError("image_base64 is not base64 text") from None
    path = rows["image"].iloc[i] if "image" in rows.columns else None
    if is_null(path):
        return None
    path = Path(str(path))
    return path if path.is_absolute() or base is None else base / path


def _frames(value: Any, dim: int, modality: str, source: Path, row: int) -> np.ndarray:
    """Frames [T, dim] of one sample's sequence; an absent sequence is [0, dim]."""
    if value is None or (not isinstance(value, Sequence | np.ndarray) and is_null(value)):
        return np.zeros((0, dim), np.float32)
    try:
        array = np.asarray([np.asarray(frame, np.float32) for frame in value], np.float32)
    except (TypeError, ValueError):
        raise DataError(source, f"{modality} must be a list of frames of {dim} numbers each", row=row) from None
    if array.size == 0:
        return np.zeros((0, dim), np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise DataError(
            source, f"{modality} frames have shape {list(array.shape)}; the model expects [frames, {dim}]", row=row
        )
    if not np.isfinite(array).all():
        raise DataError(source, f"{modality} has NaN or infinite values", row=row)
    return array


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's entry point for `loader_module="components.serving"`: the package directory it was logged with."""
    return Predictor(data_path)


def read_inputs(path: str | Path) -> pd.DataFrame:
    """Raw input rows from JSONL (one object per line) or CSV (sequences as JSON text); errors name the line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"not valid JSON: {e.msg}", row=number) from None
            if not isinstance(row, dict):
                raise DataError(path, f"expected a JSON object per line, got {type(row).__name__}", row=number)
            rows.append(row)
        return pd.DataFrame(rows)
    if suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        for modality in SEQUENCE_MODALITIES:
            if modality in frame.columns:
                frame[modality] = [_json_cell(v, path, i + 1, modality) for i, v in enumerate(frame[modality])]
        return frame
    raise DataError(path, "input must be .jsonl or .csv")


def _json_cell(value: Any, path: Path, row: int, column: str) -> Any:
    if is_null(value):
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise DataError(
            path, f"column {column!r} must hold JSON frames such as [[0.1, 0.2], [0.3, 0.4]]", row=row
        ) from None


@dataclass(frozen=True)
class PredictResult:
    output: Path
    rows: int
    seconds: float

    def summary(self) -> str:
        return f"predict: {self.rows} rows -> {self.output} ({self.seconds:.1f} s)"


def predict_file(model_uri: str, input_path: str | Path, output: str | Path | None = None) -> PredictResult:
    """Score the raw rows in `input_path` with an MLflow model (e.g. models:/<name>@champion) into `output`
    (JSONL, or CSV by its suffix; default `<input>.predictions.jsonl`), carrying an `id` column through."""
    import mlflow
    from mlflow.models import Model

    start = time.perf_counter()
    input_path = Path(input_path)
    output = Path(output) if output else input_path.with_suffix(".predictions.jsonl")
    frame = read_inputs(input_path)
    with tempfile.TemporaryDirectory(prefix="msa-model-") as tmp:
        local = Path(model_uri)
        if not local.is_dir():
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        metadata = Model.load(local)
        schema = metadata.get_input_schema()
        if schema is not None:
            required = [c.name for c in schema.inputs if c.required]
            if missing := [c for c in required if c not in frame.columns]:
                raise DataError(
                    input_path, f"missing required column(s) {missing}; the model takes {schema.input_names()}"
                )
        flavor = metadata.flavors.get("python_function", {})
        if (
            flavor.get("loader_module") == __name__
        ):  # ours: errors name this file and row; image paths are relative to it
            predictions = Predictor(local / flavor["data"]).predict_frame(
                frame, source=input_path, base=input_path.parent
            )
        else:
            predictions = mlflow.pyfunc.load_model(str(local)).predict(frame)
    if "id" in frame.columns:
        predictions.insert(0, "id", frame["id"].to_numpy())
    if output.suffix.lower() == ".csv":
        write_text(output, predictions.to_csv(index=False))
    else:
        write_text(output, predictions.to_json(orient="records", lines=True))
    return PredictResult(output, len(predictions), time.perf_counter() - start)
