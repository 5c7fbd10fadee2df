"""The served model: raw inputs in, a sentiment score and class out.

`package_model` turns what `featurize`, `train` and `compress` wrote into one self-contained directory: the model
in its standalone form (the frozen transformer inside, so no precomputed token states are needed), or a compressed
variant of it (`variant/`, e.g. the ONNX Runtime int8 model: then the torch weights stay out), its spec, the
featurizer state (tokenizer settings, image and sequence statistics of the train split) and the tokenizer. That
directory is the MLflow pyfunc's data; MLflow loads it through `_load_pyfunc` below, which reads JSON,
safetensors, ONNX and weights-only torch files: no pickle anywhere in the model.

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
and extracts their features with the settings featurize used (`components.media`).
Every value is bounded (the package's `limits.json`, from params.yaml's `serve`) and checked before decoding.
Output columns: `score` (regression: the fused sentiment score; classification: the predicted class's
probability) and `class` (regression: positive for score >= 0, else negative, as Acc-2 counts it).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.atomic import replace_directory, write_json, write_text
from components.config import ServeParams
from components.dataset import SEQUENCE_MODALITIES, ClipBounds, Dataset, is_null
from components.errors import DataError, TrainingError, UntrustedModelError, first_line
from components.featurize import STATE, FeaturizerState, encode_texts, load_tokenizer, read_state, standardize
from components.images import DATASET_MAX_PIXELS, ImageProblem, fit, open_image
from components.model_store import CARD, WEIGHTS, ModelCard, trim_padding
from components.text_model import resolve_text_model
from components.textfiles import csv_records, read_utf8

TEXT = "text"  # tokenizer and transformer config, inside the package
LIMITS = "limits.json"  # the input bounds (params.yaml's `serve`) the package enforces
VARIANT = "variant"  # the compressed variant the package serves, as compress wrote it; absent: the torch model
INPUT = Path("<model input>")  # what errors name when the rows did not come from a file
BATCH = 64


def package_model(
    model_dir: str | Path,
    features: str | Path,
    dest: str | Path,
    limits: ServeParams | None = None,
    variant: str | Path | None = None,
) -> Path:
    """Write the self-contained serving package for the model in `model_dir`, trained on `features`, enforcing
    `limits` on every input it is given; with `variant` (a directory `compress` wrote from this very model), the
    package runs that variant instead of the uncompressed model."""
    from safetensors.torch import save_file

    from components.model_store import digest, load_trained, read_card

    model_dir, dest = Path(model_dir), Path(dest)
    state = read_state(features)
    card = read_card(model_dir)
    if card.featurizer_key != state.key:
        raise DataError(
            Path(features),
            f"features changed since the model in {model_dir} was trained on them: run `msa train` (or `dvc repro`)",
        )
    if variant is not None:
        variant = Path(variant)
        try:
            made_from = json.loads((variant / CARD).read_text()).get("model_digest")
        except (OSError, ValueError) as e:
            rule = f"no readable compressed variant ({type(e).__name__}): run `msa compress`"
            raise DataError(variant, rule) from None
        if made_from != digest(model_dir):
            raise DataError(variant, f"was compressed from another model than {model_dir}: run `msa compress`")
    spec = card.spec
    with replace_directory(dest, marker=CARD) as staging:
        if spec.text is not None:
            from transformers import AutoConfig

            source = resolve_text_model(spec.text.encoder)
            load_tokenizer(source).save_pretrained(staging / TEXT)
            AutoConfig.from_pretrained(source, local_files_only=True).save_pretrained(staging / TEXT)
            spec = spec.model_copy(update={"text": spec.text.model_copy(update={"encoder": TEXT})})
        if variant is None:
            model = load_trained(model_dir, standalone=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / WEIGHTS)
        else:
            shutil.copytree(variant, staging / VARIANT)
        write_json(staging / CARD, card.model_copy(update={"spec": spec}).model_dump(mode="json"))
        write_json(staging / STATE, state.model_dump(mode="json", exclude={"ids", "features_sha256"}))
        write_json(staging / LIMITS, (limits or ServeParams()).model_dump(mode="json"))
    return dest


@dataclass(frozen=True)
class Bounds:
    """What one call may decode: the package's serve limits (for strangers' requests), or a validated dataset's own
    rules (`dataset_bounds`)."""

    limits: ServeParams
    clips: ClipBounds


def dataset_bounds(dataset: Dataset, frame: pd.DataFrame, packaged: ServeParams) -> Bounds:
    """Bounds for the rows of a dataset that passed validation (the champion re-scored on a new test split): its
    clips under its own `clip_bounds` (which validation enforced, sample rates and frame size included), every
    other bound the packaged one or the dataset's where that is wider. A 10-minute interview is a fine test
    sample, and a request the server refuses."""
    manifest = dataset.manifest
    longest = max((len(t) for t in frame.get("text", ()) if isinstance(t, str)), default=0)
    max_len = max((s.max_len for s in (manifest.modalities.audio, manifest.modalities.vision) if s), default=0)
    clips = manifest.clips
    limits = packaged.model_copy(
        update={
            "max_text_chars": max(packaged.max_text_chars, longest),
            "max_image_bytes": 2**62,  # validation bounds an image's pixels, not its bytes
            "max_image_pixels": max(packaged.max_image_pixels, DATASET_MAX_PIXELS),
            "max_frames": max(packaged.max_frames, max_len),
            "max_clip_bytes": max(packaged.max_clip_bytes, clips.max_bytes),
            "max_clip_seconds": max(packaged.max_clip_seconds, clips.max_seconds),
        }
    )
    return Bounds(
        limits, clips.model_copy(update={"max_bytes": limits.max_clip_bytes, "max_seconds": limits.max_clip_seconds})
    )


class Predictor:
    """A packaged model, ready for raw rows; `predict` is what MLflow's pyfunc (the REST scoring server) calls."""

    def __init__(self, root: str | Path) -> None:
        from safetensors.torch import load_file

        from components.compression import load_compressed
        from components.model_store import monitored_head
        from components.models import MultiTaskModel

        root = Path(root)
        try:
            spec = ModelCard.model_validate_json((root / CARD).read_bytes()).spec
            self.state = FeaturizerState.model_validate_json((root / STATE).read_text())
            self.limits = _read_limits(root)
            if spec.text is not None:  # the package's own tokenizer and transformer config, wherever it was moved
                spec = spec.model_copy(update={"text": spec.text.model_copy(update={"encoder": str(root / TEXT)})})
            if (root / VARIANT).is_dir():
                self.model = load_compressed(root / VARIANT, spec)
            else:
                self.model = MultiTaskModel(spec, pretrained=False, standalone=True).eval()
                self.model.load_state_dict(load_file(root / WEIGHTS))
            self.tokenizer = load_tokenizer(root / TEXT) if spec.text is not None else None
        except (OSError, ValueError, KeyError, RuntimeError, TrainingError) as e:
            raise DataError(root, f"not a readable model package ({type(e).__name__}: {e})") from None
        self.spec = spec
        self.head = monitored_head(spec)
        self.bounds = Bounds(self.limits, ClipBounds(max_bytes=self.limits.max_clip_bytes,
                                                     max_seconds=self.limits.max_clip_seconds))  # fmt: skip
        if self.clip_modalities:
            from components.media import warm_up

            warm_up()  # librosa's imports take seconds: at load, not in the first caller's request

    @property
    def clip_modalities(self) -> list[str]:
        """The modalities whose frames this model extracts from clips."""
        return [m for m in self.state.clip_modalities if getattr(self.spec, m) is not None]

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image", *SEQUENCE_MODALITIES) if getattr(self.spec, m) is not None]

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Scores and classes for a request's rows (MLflow passes `params`; there are none).

        The caller is a stranger: at most `max_rows` rows, images inline only. A path in `image` is refused
        without being looked at, with the same words whatever it names, so no answer says what the server holds.
        """
        from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

        try:
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            if len(frame) > self.limits.max_rows:
                raise DataError(INPUT, f"{len(frame)} rows in one request; at most {self.limits.max_rows} "
                                "(serve.max_rows)")  # fmt: skip
            columns = _columns(frame)
            # Path columns: `image`; `audio` where audio comes from clips (else it holds frames); `video` for any clips.
            clips = self.clip_modalities
            for column in ("image", *(["audio"] if "audio" in clips else []), *(["video"] if clips else [])):
                for i, value in enumerate(columns.get(column, ())):
                    if not is_null(value):
                        raise DataError(INPUT, f"the served model opens no file paths: send the {column} as "
                                        f"{column}_base64", row=i + 1)  # fmt: skip
            return self._score(columns, len(frame), INPUT, None, self.bounds)
        except DataError as e:
            # The scoring server answers an MlflowException with a 400 and its message; any other exception with
            # a 400 that carries the server's stack trace.
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception:  # a bug, not the caller's fault: the details go to the server's log, not to the caller
            logging.getLogger(__name__).exception("scoring failed")
            raise MlflowException("the model failed on this request; the server's log has the details") from None

    def predict_frame(
        self,
        frame: pd.DataFrame,
        *,
        source: Path = INPUT,
        image_root: Path | None = None,
        bounds: Bounds | None = None,
    ) -> pd.DataFrame:
        """As `predict`, for rows of a local file: errors name `source` and the row, and paths in `image` are read
        when they resolve (symlinks followed) inside `image_root`; without one, no path is read. `bounds`: the
        packaged ones unless given."""
        return self._score(_columns(frame), len(frame), source, image_root, bounds or self.bounds)

    def _score(
        self, columns: dict[str, list], n: int, source: Path, image_root: Path | None, bounds: Bounds
    ) -> pd.DataFrame:
        import torch

        if self.spec.text is not None and "text" not in columns:
            raise DataError(source, f"missing required column 'text'; got columns {list(columns)}")
        scores: list[np.ndarray] = []
        for start in range(0, n, BATCH):
            rows = {c: values[start : start + BATCH] for c, values in columns.items()}
            batch = trim_padding(
                self.features(rows, source=source, image_root=image_root, first_row=start, bounds=bounds)
            )
            with torch.inference_mode():
                scores.append(self.model({k: torch.from_numpy(v) for k, v in batch.items()})[self.head].float().numpy())
        return self._decide(np.concatenate(scores) if scores else np.zeros((0,), np.float32))

    def features(
        self,
        rows: pd.DataFrame | dict[str, list],
        *,
        source: Path = INPUT,
        image_root: Path | None = None,
        first_row: int = 0,
        bounds: Bounds | None = None,
    ) -> dict[str, np.ndarray]:
        """The model's input tensors for raw `rows` (a frame, or its columns as lists), made exactly as `featurize`
        made them for training; every value is checked against `bounds` (the packaged ones unless given) before it
        is decoded."""
        if isinstance(rows, pd.DataFrame):
            rows = _columns(rows)
        out: dict[str, np.ndarray] = {}
        n = len(next(iter(rows.values()), ()))
        bounds = bounds or self.bounds
        limits = bounds.limits
        present = np.zeros(n, bool)
        if self.spec.text is not None:
            texts = rows["text"]
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    rule = "text is missing" if is_null(text) else f"text must be a string, got {type(text).__name__}"
                    raise DataError(source, rule, row=first_row + i + 1)
                if not text.strip():
                    raise DataError(source, "text is blank", row=first_row + i + 1)
                if len(text) > limits.max_text_chars:
                    rule = f"text has {len(text)} characters; at most {limits.max_text_chars} (serve.max_text_chars)"
                    raise DataError(source, rule + "; longer text is refused, not cut", row=first_row + i + 1)
            out |= encode_texts(self.tokenizer, texts, self.state.text)
            present[:] = True
        if self.spec.image is not None:
            size = self.state.image.size
            pixels, has = np.zeros((n, 3, size, size), np.uint8), np.zeros(n, bool)
            inline, paths = rows.get("image_base64", [None] * n), rows.get("image", [None] * n)
            for i in range(n):
                try:
                    if (data := _image_bytes(inline[i], paths[i], image_root, limits)) is not None:
                        image = open_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
                        pixels[i], has[i] = fit(image, size), True
                except ImageProblem as e:
                    raise DataError(source, str(e), row=first_row + i + 1) from None
            out |= {"image.pixels": pixels, "image.present": has}
            present |= has
        for modality in SEQUENCE_MODALITIES:
            if getattr(self.spec, modality) is None:
                continue
            state = getattr(self.state, modality)
            frames = np.zeros((n, state.max_len, state.dim), np.float32)
            mask = np.zeros((n, state.max_len), bool)
            for i, value in enumerate(rows.get(modality, [None] * n)):
                row = first_row + i + 1
                if state.clips is not None:
                    sequence = self._clip_frames(modality, rows, i, image_root, source, row, bounds)
                else:
                    sequence = _frames(value, state.dim, modality, limits.max_frames, source, row)
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

    def _clip_frames(
        self, modality: str, rows: dict[str, list], i: int, root: Path | None, source: Path, row: int, bounds: Bounds
    ) -> np.ndarray:
        """Frames of row `i`'s clip for `modality`, extracted as featurize extracted them; [0, dim] without one.
        Vision comes from the video; audio from the audio clip, else from the video's soundtrack if it has one."""
        from components.media import ClipJob, ClipProblem, NoAudioStream, extract

        state = getattr(self.state, modality)
        kind = "vision" if modality == "vision" else "audio"
        column = "video"
        try:
            data = None
            if kind == "audio":
                column = "audio"
                data = self._clip_bytes(rows, column, i, root, bounds.limits)
            if data is None:
                column = "video"
                data = self._clip_bytes(rows, column, i, root, bounds.limits)
            if data is None:
                return np.zeros((0, state.dim), np.float32)
            try:
                return extract(ClipJob(data, kind, state.clips, bounds.clips, column))
            except NoAudioStream:
                if column == "video":  # a silent video: the sample has no audio, as a dataset row without a clip
                    return np.zeros((0, state.dim), np.float32)
                raise
        except ClipProblem as e:
            raise DataError(source, f"{modality} from the {column} clip: {e}", row=row) from None

    def _clip_bytes(
        self, rows: dict[str, list], column: str, i: int, root: Path | None, limits: ServeParams
    ) -> bytes | None:
        """Row `i`'s `column` clip: inline (`<column>_base64`) wins over a path; None when it has neither."""
        from components.media import ClipProblem

        inline = rows.get(f"{column}_base64", [None] * (i + 1))[i]
        path = rows.get(column, [None] * (i + 1))[i]
        if not is_null(inline):
            return _decode_base64(inline, f"{column}_base64", limits.max_clip_base64_chars, ClipProblem,
                                  f"serve.max_clip_bytes {limits.max_clip_bytes} as base64")  # fmt: skip
        if is_null(path):
            return None
        if root is None:
            raise ClipProblem(f"{column} paths are not read here: send the clip as {column}_base64")
        if not isinstance(path, str):
            raise ClipProblem(f"{column} must be a path to a clip file (or send {column}_base64)")
        return _read_confined(path, root, limits.max_clip_bytes, column, ClipProblem, "serve.max_clip_bytes")

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

    Images and clips are absolute paths, or with `inline_images` the files themselves (`image_base64`,
    `audio_base64`, `video_base64`), e.g. for an input example that must work where the dataset is not.
    """
    samples = dataset.samples[dataset.samples["split"] == split].head(limit).reset_index(drop=True)
    frame = pd.DataFrame({"id": samples["id"], "label": samples["label"]})
    modalities = dataset.manifest.modalities
    if modalities.text is not None:
        frame["text"] = samples["text"]
    if modalities.image is not None:
        paths = [None if is_null(p) else dataset.image_path(p) for p in samples["image"]]
        if inline_images:
            frame["image_base64"] = [None if p is None else _base64(p) for p in paths]
        else:
            frame["image"] = [None if p is None else str(p) for p in paths]
    clips = [c for c in ("audio", "video") if dataset.manifest.modalities.clips and c in samples]
    for column in clips:  # as files: vision from the video, audio from the audio clip (or the video's soundtrack)
        paths = [None if is_null(p) else dataset.root / p for p in samples[column]]
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


def _read_limits(root: Path) -> ServeParams:
    """The package's input bounds; one packaged before bounds were gets today's defaults, never no bounds."""
    file = root / LIMITS
    return ServeParams.model_validate_json(file.read_bytes()) if file.is_file() else ServeParams()


def _columns(frame: pd.DataFrame) -> dict[str, list]:
    """Every column as a plain list: one conversion per request, then no pandas indexing per row or batch."""
    return {str(c): frame[c].tolist() for c in frame.columns}


def _image_bytes(data: Any, path: Any, image_root: Path | None, limits: ServeParams) -> bytes | None:
    """The image file of a row: inline base64 (`data`) wins over a path; None when the row has neither.

    Inline images are base64 text rather than an MLflow `binary` column: the scoring server base64-decodes every
    cell of a binary column and so cannot pass null, and rows without an image are normal.
    """
    if not is_null(data):
        return _decode_base64(data, "image_base64", limits.max_base64_chars, ImageProblem,
                              f"serve.max_image_bytes {limits.max_image_bytes} as base64")  # fmt: skip
    if is_null(path):
        return None
    if image_root is None:
        raise ImageProblem("image paths are not read here: send the image as image_base64")
    return _read_confined(str(path), image_root, limits.max_image_bytes, "image", ImageProblem, "serve.max_image_bytes")


def _decode_base64(data: Any, column: str, max_chars: int, problem: type[ValueError], bound: str) -> bytes:
    """The bytes of an inline file, its length checked before anything is decoded."""
    if not isinstance(data, str | bytes):
        raise problem(f"{column} must be base64 text")
    if len(data) > max_chars:
        raise problem(f"{column} has {len(data)} characters; at most {max_chars} ({bound})")
    try:
        return base64.b64decode(data, validate=True)
    except (TypeError, ValueError):
        raise problem(f"{column} is not base64 text") from None


def _read_confined(value: str, root: Path, max_bytes: int, what: str, problem: type[ValueError], bound: str) -> bytes:
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


def _frames(value: Any, dim: int, modality: str, max_frames: int, source: Path, row: int) -> np.ndarray:
    """Frames [T, dim] of one sample's sequence; an absent sequence is [0, dim]. Sizes are checked before any
    number is converted, so an oversized sequence costs nothing to refuse."""
    if value is None or (not isinstance(value, Sequence | np.ndarray) and is_null(value)):
        return np.zeros((0, dim), np.float32)
    shape_rule = f"{modality} must be a list of frames of {dim} numbers each"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise DataError(source, shape_rule, row=row)
    if len(value) > max_frames:
        raise DataError(source, f"{modality} has {len(value)} frames; at most {max_frames} (serve.max_frames)", row=row)
    if len(value) == 0:
        return np.zeros((0, dim), np.float32)
    if any(isinstance(f, str | bytes) or not isinstance(f, Sequence | np.ndarray) or len(f) != dim for f in value):
        raise DataError(source, f"{shape_rule}; the model expects [frames, {dim}]", row=row)
    try:  # the lengths are checked: one conversion of the whole [frames, dim] block
        array = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise DataError(source, shape_rule, row=row) from None
    if array.ndim != 2:
        raise DataError(source, f"{shape_rule}; the model expects [frames, {dim}]", row=row)
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
        for number, line in enumerate(read_utf8(path).splitlines(), start=1):
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
        records = csv_records(path)
        _, header = next(records, (1, []))
        columns = [c.strip() for c in header]
        rows = []
        for row, (_, fields) in enumerate(records, start=1):
            if len(fields) != len(columns):  # an unquoted comma would shift every later column: never guess
                raise DataError(
                    path, f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}; "
                    'quote a field that contains commas ("like, this")', row=row,
                )  # fmt: skip
            rows.append([None if v == "" else v for v in fields])
        frame = pd.DataFrame(rows, columns=columns, dtype=object)
        for modality in SEQUENCE_MODALITIES:
            if modality in frame.columns:
                frame[modality] = [_json_cell(v, path, i + 1, modality) for i, v in enumerate(frame[modality])]
        return frame
    raise DataError(path, "input must be .jsonl or .csv")


def _json_cell(value: Any, path: Path, row: int, column: str) -> Any:
    """A CSV cell of frames as JSON; any other text stays as it is (a clip model's `audio` is a file path)."""
    if is_null(value):
        return None
    if not value.lstrip().startswith("["):
        return value
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


def predict_file(
    model_uri: str,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    trust_model: bool = False,
) -> PredictResult:
    """Score the raw rows in `input_path` with an MLflow model (e.g. models:/<name>@champion) into `output`
    (JSONL, or CSV by its suffix; default `<input>.predictions.jsonl`), carrying an `id` column through.

    Paths in `image` are read inside `image_root` (default: the input file's directory). A model this project
    did not package runs its own code when loaded, so it needs `trust_model`.
    """
    start = time.perf_counter()
    input_path = Path(input_path)
    output = Path(output) if output else input_path.with_suffix(".predictions.jsonl")
    if output.is_dir():
        raise DataError(output, "is a directory: --output names the predictions file (.jsonl or .csv)")
    if output.resolve() == input_path.resolve():
        raise DataError(output, "is the input file: predictions never overwrite the rows they score")
    if output.suffix.lower() not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise DataError(output, "predictions are written as .jsonl or .csv: name the file so")
    frame = read_inputs(input_path)
    with tempfile.TemporaryDirectory(prefix="msa-model-") as tmp:
        model = load_model(model_uri, Path(tmp), trust_model=trust_model)
        if missing := [c for c in model.required if c not in frame.columns]:
            raise DataError(input_path, f"missing required column(s) {missing}; the model takes {model.input_names}")
        if isinstance(model.predictor, Predictor):  # ours: errors name this file and row
            root = Path(image_root) if image_root is not None else input_path.parent
            predictions = model.predictor.predict_frame(frame, source=input_path, image_root=root)
        else:
            predictions = model.predictor.predict(frame)
    if "id" in frame.columns:
        predictions.insert(0, "id", frame["id"].to_numpy())
    if output.suffix.lower() == ".csv":
        write_text(output, predictions.to_csv(index=False))
    else:
        write_text(output, predictions.to_json(orient="records", lines=True))
    return PredictResult(output, len(predictions), time.perf_counter() - start)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Any  # a Predictor (a model this project packaged), or a trusted foreign mlflow.pyfunc model
    input_names: list[str] | None
    required: list[str]


def load_model(model_uri: str, scratch: Path, *, trust_model: bool = False) -> LoadedModel:
    """The MLflow model at `model_uri` (a local directory, models:/ or runs:/), downloaded into `scratch`.

    Ours (`loader_module` this module, safetensors and JSON inside) loads through `Predictor`; no code from
    the model directory runs. Any other model's loader is code shipped with it (e.g. `python_model.pkl`):
    refused unless `trust_model`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    local = Path(model_uri)
    try:
        if not local.is_dir():
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(scratch)))
        if not (local / "MLmodel").is_file():
            raise DataError(local, "no MLmodel file here: not an MLflow model directory")
        metadata = Model.load(local)
    except MlflowException as e:
        raise DataError(Path(model_uri), f"cannot load the model: {first_line(e)}") from None
    schema = metadata.get_input_schema()
    names = schema.input_names() if schema is not None else None
    required = [c.name for c in schema.inputs if c.required] if schema is not None else []
    flavor = metadata.flavors.get("python_function", {})
    if flavor.get("loader_module") == __name__ and "data" in flavor:
        return LoadedModel(Predictor(local / flavor["data"]), names, required)
    if not trust_model:
        raise UntrustedModelError(
            f"{model_uri}: not a model this project packaged; loading it runs code shipped inside it "
            f"(its loader is {flavor.get('loader_module') or 'not a python_function'}, e.g. a pickle). "
            "Pass --trust-model only if you trust whoever wrote it"
        )
    try:
        return LoadedModel(mlflow.pyfunc.load_model(str(local)), names, required)
    except MlflowException as e:
        raise DataError(local, f"cannot load the model: {first_line(e)}") from None
