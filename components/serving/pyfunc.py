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
and extracts their features with the settings featurize used (`components.data.media`).
Every value is bounded (the package's `limits.json`, from params.yaml's `serve`) and checked before decoding.
Output columns: `score` (regression: the fused sentiment score; classification: the predicted class's
probability) and `class` (regression: positive for score >= 0, else negative, as Acc-2 counts it).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from components.core.atomic import chmod_new, replace_directory, write_json
from components.core.config import Section, ServeParams
from components.core.errors import DataError, TrainingError, UntrustedModelError, UserError, first_line
from components.core.textfiles import csv_rows
from components.data.dataset import SEQUENCE_MODALITIES, ClipBounds, Dataset, is_null
from components.data.images import DATASET_MAX_PIXELS, ImageProblem, fit, open_image
from components.features.contract import STATE, FeaturizerState, encode_texts, load_tokenizer, read_state, standardize
from components.features.text_model import resolve_text_model
from components.models.store import CARD, WEIGHTS, ModelCard, trim_padding

TEXT = "text"  # tokenizer and transformer config, inside the package
LIMITS = "limits.json"  # the input bounds (params.yaml's `serve`) the package enforces
EVIDENCE = "evidence.json"  # the gate's evidence (`Evidence`), signed with the package
TRUST_ENV = "MSA_TRUST_MODEL"  # "1": MLflow's loader skips verification (what `--trust-model` means for serving)
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

    from components.models.store import digest, load_trained, read_card

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
        # The trained weights' digest describes another file than the package's: the signature covers these.
        packaged = card.model_copy(update={"spec": spec, "weights_sha256": ""})
        write_json(staging / CARD, packaged.model_dump(mode="json"))
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

        from components.compression.compress import load_compressed
        from components.models import MultiTaskModel
        from components.models.store import monitored_head

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
            from components.data.media import warm_up

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
                check_text(text, source, first_row + i + 1, limits.max_text_chars)
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
        # Vision first where it comes from clips: a broken video then reads as the video's problem, not as a failed
        # soundtrack (audio falls back to the video when no audio clip is sent).
        order = ("vision", "audio") if "vision" in self.clip_modalities else SEQUENCE_MODALITIES
        for modality in order:
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
        from components.data.media import ClipJob, ClipProblem, NoAudioStream, extract

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
                return extract(ClipJob(data, kind, state.clips, bounds.clips, column, max_frames=state.max_len))
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
        from components.data.media import ClipProblem

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
    if dataset.root is None:
        raise ValueError("dataset was not read from disk, so its files have no location")
    root = dataset.root.absolute()  # a relative root would be joined to the reader's root a second time
    samples = dataset.samples[dataset.samples["split"] == split].head(limit).reset_index(drop=True)
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


# What `_decode_base64` lets through besides the base64 itself: a data: URI's prefix, and line breaks as the `base64`
# tool (76 columns, RFC 2045) or a PEM-style encoder (64) writes them, \r\n included.
_DATA_URI = re.compile(
    rb"data:(?:image|audio|video)/[a-z0-9.+-]{1,64}(?:;[a-z0-9.+-]{1,64}=[a-z0-9.+-]{1,64}){0,4};base64,", re.IGNORECASE
)
_MAX_DATA_URI_PREFIX = 400
_WHITESPACE = b" \t\n\r\f\v"


def _decode_base64(data: Any, column: str, max_chars: int, problem: type[ValueError], bound: str) -> bytes:
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
    number is converted, so an oversized sequence costs nothing to refuse. A string holding the frames as JSON
    (a CSV cell) is read as `msa predict` reads CSV, after its length is checked against what `max_frames`
    frames of `dim` numbers take."""
    if value is None or (not isinstance(value, Sequence | np.ndarray) and is_null(value)):
        return np.zeros((0, dim), np.float32)
    if isinstance(value, str):
        if len(value) > (most := _max_frames_chars(max_frames, dim)):
            rule = f"{modality} has {len(value)} characters of JSON frames; at most {most} for {max_frames} frames"
            raise DataError(source, rule + " (serve.max_frames)", row=row)
        value = _json_cell(value, source, row, modality)  # text that is not a JSON list stays text: refused below
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


def _max_frames_chars(max_frames: int, dim: int) -> int:
    """The longest JSON text of `max_frames` frames of `dim` numbers each: the bound on a frames cell's length."""
    return 2 + max_frames * (dim * _NUMBER_CHARS + 4)


def _is_number(kind: type) -> bool:
    """Python's and numpy's integers and floats; not bool (an int subclass) nor numpy's bool."""
    return kind in (int, float) or issubclass(kind, np.integer | np.floating)


def _json_name(kind: type) -> str:
    return _JSON_NAMES.get(kind, f"a {kind.__name__}")


def _range_rule(modality: str) -> str:
    return f"{modality} has a number out of range: frame values are at most {_FLOAT32_MAX:.4g} in magnitude"


# The name every logged MLmodel records as its loader: the serving package, a name that stays as modules move.
LOADER_MODULE = "components.serving"


def _load_pyfunc(data_path: str) -> Predictor:
    """MLflow's entry point (`LOADER_MODULE`, which re-exports it): the package directory it was logged with,
    verified against its signature first (`mlflow models serve` and `mlflow.pyfunc.load_model` come here; the code
    is this installed module, never a copy from the artifact store). `MSA_TRUST_MODEL=1` skips the check, as
    `--trust-model` does."""
    from components.serving import signing

    if os.environ.get(TRUST_ENV) != "1":
        signing.verify(Path(data_path), str(data_path))
    return Predictor(data_path)


class Evidence(Section):
    """What registration measured and signed into the package (`evidence.json`): the gate reads a champion's score
    from here, never from a tag anyone with registry access can edit."""

    run_id: str
    metric: str  # "<split> <head> <metric>"
    score: float
    test_split: str  # the fingerprint of the test split the score was measured on
    variant: str
    dataset: str
    dataset_version: str
    data_hash: str
    params_hash: str
    code_hash: str
    robustness: str = "none"  # what the robust scores were measured on (registry.robustness_tag)
    robust: dict[str, float] = {}  # robust_<perturbation>_<severity>_<metric> of the served head


def write_evidence(package: Path, evidence: Evidence) -> None:
    write_json(package / EVIDENCE, evidence.model_dump(mode="json"))


def read_evidence(package: Path) -> Evidence | None:
    """The package's evidence; None for a package registered before evidence was signed into it."""
    try:
        return Evidence.model_validate_json((package / EVIDENCE).read_bytes())
    except (OSError, ValueError):
        return None


CHUNK_ROWS = 1000  # rows `msa predict` reads and scores at a time: its memory is one chunk's, whatever the file's
CHUNK_BYTES = 1 << 26  # ... and a chunk holds at most about this much of the file's text
MAX_ROW_BYTES = 1 << 26  # one row (a JSONL line, a CSV record): more than any row within the serve bounds needs
MAX_COLUMNS = 1000  # distinct columns in one input file; the model reads a handful
INPUT_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
OUTPUT_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv")
SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))  # the kernel's and devices' files: never an output
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")  # the only way a strict-UTF-8 line can hold one


@dataclass(frozen=True)
class InputChunk:
    """Consecutive rows of an input file: the frame the model scores and each row's number as errors name it."""

    frame: pd.DataFrame
    rows: list[int]


@dataclass(frozen=True)
class InputSummary:
    """What the first pass over an input file found: how many rows, and every column any row has (in order)."""

    rows: int
    columns: list[str]


def input_chunks(path: str | Path, rows: int | None = None) -> Iterator[InputChunk]:
    """The input file's rows, `rows` (default CHUNK_ROWS, and at most about CHUNK_BYTES of text) at a time:
    memory stays that of one chunk however long the file is."""
    path = Path(path)
    size = rows or CHUNK_ROWS
    dtype = object if _input_kind(path) == "csv" else None  # CSV cells stay text, as the file has them
    batch: list[dict[str, Any]] = []
    numbers: list[int] = []
    text = 0
    for number, row, nbytes in _input_rows(path):
        batch.append(row)
        numbers.append(number)
        text += nbytes
        if len(batch) >= size or text >= CHUNK_BYTES:
            yield InputChunk(pd.DataFrame(batch, dtype=dtype), numbers)
            batch, numbers, text = [], [], 0
    if batch:
        yield InputChunk(pd.DataFrame(batch, dtype=dtype), numbers)


def check_inputs(
    path: str | Path,
    *,
    required: Sequence[str] = (),
    takes: Sequence[str] | None = None,
    text: bool = False,
    max_text_chars: int | None = None,
) -> InputSummary:
    """One streaming pass over the whole input file checking every rule that costs no decoding: well-formed rows,
    valid Unicode, the `required` columns present (`takes`: the columns the model reads, for the message), and
    with `text` each row's text present, a non-blank string of at most `max_text_chars`. A bad row anywhere is
    refused before the first row is scored; memory stays that of one row."""
    path = Path(path)
    csv_file = _input_kind(path) == "csv"
    required = list(dict.fromkeys([*required, *(["text"] if text else [])]))
    seen: dict[str, None] = {}
    count = 0
    missing_text: int | None = None  # a row without the key: refused once the file shows the column exists at all
    for number, row, _ in _input_rows(path):
        count += 1
        if not row.keys() <= seen.keys():
            seen.update(dict.fromkeys(row))
            if len(seen) > MAX_COLUMNS:
                raise DataError(path, f"more than {MAX_COLUMNS} distinct columns; the model reads a few", row=number)
            if csv_file:  # the header names every column: a missing one is known at once
                _check_required(path, required, seen, takes)
        if text:
            if "text" in row:
                check_text(row["text"], path, number, max_text_chars)
            elif missing_text is None:
                missing_text = number
    if count == 0:
        raise DataError(path, "has no rows: nothing to score")
    _check_required(path, required, seen, takes)
    if missing_text is not None:
        raise DataError(path, "text is missing", row=missing_text)
    return InputSummary(count, list(seen))


def _check_required(path: Path, required: list[str], seen: dict[str, None], takes: Sequence[str] | None) -> None:
    if missing := [c for c in required if c not in seen]:
        raise DataError(path, f"missing required column(s) {missing}; the model takes {list(takes or required)}")


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


def _input_kind(path: Path) -> str:
    kind = INPUT_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, "input must be .jsonl or .csv")
    return kind


def _open_input(path: Path) -> BinaryIO:
    """The input file, opened for reading once symlinks are followed, if it is a regular file: a device
    (/dev/zero), a FIFO or a directory is refused before a byte is read. Opened without blocking, so a FIFO
    with no writer cannot hang the check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(path, "no such file: --input names a .jsonl or .csv file") from None
    except OSError as e:
        raise DataError(path, f"cannot read the file: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(path, f"is {_file_kind(mode)}, not a regular file: --input names a .jsonl or .csv file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character "
             "device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "a special file")


class _Lines:
    """The lines of an input file decoded as strict UTF-8 (a leading BOM dropped), each read with a bound:
    `pending` counts the bytes read since the caller last reset it, so one row (a JSONL line, a CSV record over
    several lines) is refused once it passes MAX_ROW_BYTES, before the rest of it is read."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self.file, self.path, self.number, self.pending = file, path, 0, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            data = self.file.readline(MAX_ROW_BYTES - self.pending + 1)
        except OSError as e:
            raise DataError(self.path, f"cannot read the file: {e.strerror or e}") from None
        if not data:
            raise StopIteration
        self.number += 1
        self.pending += len(data)
        if self.pending > MAX_ROW_BYTES:
            raise DataError(self.path, f"line {self.number}: a row longer than {MAX_ROW_BYTES} bytes; no row the "
                            "model takes is that long")  # fmt: skip
        if self.number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                self.path,
                f"line {self.number}: byte 0x{data[e.start]:02x} is not valid UTF-8 ({e.reason}); "
                "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
            ) from None


def _input_rows(path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(row number as errors name it, row, bytes of text) of each row: JSONL rows numbered by their line, CSV rows
    by their data row. Rows that break a rule of the file's format are refused where they are."""
    kind = _input_kind(path)
    with _open_input(path) as file:
        lines = _Lines(file, path)
        yield from _jsonl_rows(lines, path) if kind == "jsonl" else _csv_rows(lines, path)


def _jsonl_rows(lines: _Lines, path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    for line in lines:
        number, nbytes, lines.pending = lines.number, lines.pending, 0
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON: {e.msg}", row=number) from None
        except ValueError:  # an integer of more digits than Python converts
            raise DataError(path, "not valid JSON: a number with too many digits to read", row=number) from None
        except RecursionError:
            raise DataError(path, "not valid JSON: nested too deeply", row=number) from None
        if not isinstance(row, dict):
            raise DataError(path, f"expected a JSON object per line, got {type(row).__name__}", row=number)
        if len(row) > MAX_COLUMNS:
            raise DataError(path, f"{len(row)} columns; at most {MAX_COLUMNS}", row=number)
        if "\\u" in line and _SURROGATE_ESCAPE.search(line):
            _check_unicode(row, path, number)
        yield number, row, nbytes


def _check_unicode(row: dict[str, Any], path: Path, number: int) -> None:
    """A JSON escape can spell half of a UTF-16 pair (\\ud800) that no UTF-8 text can hold: refused here rather
    than failing in the tokenizer or in the written predictions."""
    rule = "is not valid Unicode: it holds a lone surrogate (a \\ud800-\\udfff escape without its pair)"
    for key, value in row.items():
        if _has_surrogate(key):
            raise DataError(path, f"a column name {rule}", row=number)
        if _has_surrogate(value):
            raise DataError(path, f"{key} {rule}", row=number)


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _csv_rows(lines: _Lines, path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    columns: list[str] | None = None
    sequences: list[tuple[int, str]] = []
    row = 0
    for _, fields in csv_rows(lines, path):
        nbytes, lines.pending = lines.pending, 0
        if columns is None:
            columns = [c.strip() for c in fields]
            if len(columns) > MAX_COLUMNS:
                raise DataError(path, f"the header has {len(columns)} columns; at most {MAX_COLUMNS}")
            if twice := next((c for i, c in enumerate(columns) if c in columns[:i]), None):
                raise DataError(path, f"the header names column {twice!r} more than once; name each column once")
            sequences = [(i, c) for i, c in enumerate(columns) if c in SEQUENCE_MODALITIES]
            continue
        row += 1
        if len(fields) != len(columns):  # an unquoted comma would shift every later column: never guess
            raise DataError(
                path, f"expected {len(columns)} fields ({', '.join(columns)}), found {len(fields)}; "
                'quote a field that contains commas ("like, this")', row=row,
            )  # fmt: skip
        values: list[Any] = [None if v == "" else v for v in fields]
        for i, column in sequences:
            values[i] = _json_cell(values[i], path, row, column)
        yield row, dict(zip(columns, values, strict=True)), nbytes


def _json_cell(value: Any, path: Path, row: int, column: str) -> Any:
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


@dataclass(frozen=True)
class PredictResult:
    output: Path
    rows: int
    seconds: float

    def summary(self) -> str:
        return f"predict: {self.rows} rows -> {self.output} ({self.seconds:.1f} s)"


def local_model(model_uri: str) -> Path | None:
    """The local directory `model_uri` names (a path, or a file: URI), to be read in place; None for a URI that
    MLflow resolves (models:/, runs:/, a remote store)."""
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme.lower() == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"{model_uri}: names another machine; a file: URI names a directory on this one "
                            "(file:///path/to/model)")  # fmt: skip
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or Path(model_uri).is_dir():
        return Path(model_uri)
    return None


def _check_model_dir(path: Path) -> None:
    """A local model is read where it is, so it must be an MLflow model directory: nothing else is looked at."""
    rule = "--model names an MLflow model directory, or a models:/ or runs:/ URI"
    if not path.exists():
        raise DataError(path, f"no such model directory: {rule}")
    if not path.is_dir():
        raise DataError(path, f"is not a directory: {rule}")
    if not (path / "MLmodel").is_file():
        raise DataError(path, "no MLmodel file here: not an MLflow model directory")


def _check_output(output: Path, input_path: Path) -> None:
    """Everything that would make writing the predictions fail or harm a file, checked before the model loads."""
    if output.is_dir():
        raise DataError(output, "is a directory: --output names the predictions file (.jsonl or .csv)")
    try:
        place, target = output.parent.resolve(), output.resolve()
        same = output.exists() and os.path.samefile(output, input_path)
        existing = place
        while not existing.exists():
            existing = existing.parent
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise DataError(output, f"cannot reach where it would go: {getattr(e, 'strerror', None) or e}") from None
    if same or target == input_path.resolve():
        raise DataError(output, "is the input file: predictions never overwrite the rows they score")
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(output, "predictions are written as .jsonl or .csv: name the file so")
    for system in SYSTEM_DIRS:
        if place.is_relative_to(system) or target.is_relative_to(system):
            raise DataError(output, f"is under {system}, the system's own files: write predictions to a directory "
                            "of yours")  # fmt: skip
    if not existing.is_dir():
        raise DataError(output, f"cannot be created under {existing}: it is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(output, f"cannot write in {existing}: permission denied")
    if output.exists() and not output.is_file():
        raise DataError(output, "exists and is not a regular file: predictions go to a file of their own")
    if output.exists() and _tracked_by_git(output):
        raise DataError(output, "is a file git tracks: predictions never overwrite it; choose another --output name")


def _tracked_by_git(path: Path) -> bool:
    """Whether the repository holding `path` tracks it; False where git is absent or `path` is in no repository."""
    # No safe.directory override, and no fsmonitor: a repository someone else owns runs none of its hooks here.
    command = ["git", "-c", "core.fsmonitor=false", "--literal-pathspecs", "-C", str(path.parent), "ls-files",
               "--error-unmatch", "--", path.name]  # fmt: skip
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextmanager
def _staged(output: Path) -> Iterator[Callable[[bytes], None]]:
    """A writer of the predictions into a temporary file beside `output`, renamed over it once all is written; on
    any failure the temporary file (and any directory made for it) goes and an older `output` stays as it was."""
    made = [p for p in (output.parent, *output.parent.parents) if not p.exists()][::-1]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        chmod_new(fd)
    except OSError as e:
        _remove_empty(made)
        raise DataError(output, f"cannot write the predictions: {e.strerror or e}") from None

    def write(data: bytes) -> None:
        try:
            file.write(data)
        except OSError as e:
            raise DataError(output, f"cannot write the predictions: {e.strerror or e}") from None

    try:
        with os.fdopen(fd, "wb") as file:
            yield write
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _remove_empty(made)
        raise


def _remove_empty(directories: list[Path]) -> None:
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            return


def _score_chunk(model: LoadedModel, chunk: InputChunk, source: Path, image_root: Path) -> pd.DataFrame:
    """Predictions for one chunk; errors name the row's number in the file, not in the chunk."""
    if not isinstance(model.predictor, Predictor):
        predictions = model.predictor.predict(chunk.frame)
        return predictions if isinstance(predictions, pd.DataFrame) else pd.DataFrame(predictions)
    try:  # ours: errors name this file and row
        return model.predictor.predict_frame(chunk.frame, source=source, image_root=image_root)
    except DataError as e:
        if e.path != source or e.row is None or not 1 <= e.row <= len(chunk.rows):
            raise
        raise DataError(e.path, e.rule, row=chunk.rows[e.row - 1], sample_id=e.sample_id) from None


def predict_file(
    model_uri: str,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    trust_model: bool = False,
) -> PredictResult:
    """Score the raw rows in `input_path` with an MLflow model (e.g. models:/<name>@champion, a local model
    directory or its file:// URI, read in place) into `output` (JSONL, or CSV by its suffix; default
    `<input>.predictions.jsonl`), carrying an `id` column through.

    Bounds come before work: the input must be a regular file and the output a writable place (not a tracked
    file, not /proc, /sys or /dev) before the model loads; a first streaming pass checks every row's cheap rules
    before any row is scored; then rows are scored CHUNK_ROWS at a time into a temporary file renamed over
    `output` at the end, so memory stays bounded and a failure leaves any older `output` as it was.

    Paths in `image` are read inside `image_root` (default: the input file's directory). A model this project
    did not package runs its own code when loaded, so it needs `trust_model`.
    """
    start = time.perf_counter()
    input_path = Path(input_path)
    output = Path(output) if output else input_path.with_suffix(".predictions.jsonl")
    _input_kind(input_path)
    _open_input(input_path).close()
    _check_output(output, input_path)
    local = local_model(model_uri)
    if local is not None:
        _check_model_dir(local)
    root = Path(image_root) if image_root is not None else input_path.parent
    as_csv = output.suffix.lower() == ".csv"
    with tempfile.TemporaryDirectory(prefix="msa-model-") as tmp:
        model = load_model(model_uri if local is None else str(local), Path(tmp), trust_model=trust_model)
        ours = isinstance(model.predictor, Predictor)
        summary = check_inputs(
            input_path,
            required=model.required,
            takes=model.input_names,
            text=ours and model.predictor.spec.text is not None,
            max_text_chars=model.predictor.limits.max_text_chars if ours else None,
        )
        rows = 0
        with _staged(output) as write:
            for chunk in input_chunks(input_path):
                predictions = _score_chunk(model, chunk, input_path, root)
                if "id" in summary.columns:
                    ids = chunk.frame["id"].to_numpy() if "id" in chunk.frame.columns else [None] * len(predictions)
                    predictions.insert(0, "id", ids)
                if as_csv:
                    text = predictions.to_csv(index=False, header=rows == 0)
                else:
                    text = predictions.to_json(orient="records", lines=True)
                    text += "" if text.endswith("\n") else "\n"
                write(text.encode("utf-8"))
                rows += len(predictions)
    return PredictResult(output, rows, time.perf_counter() - start)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Any  # a Predictor (a model this project packaged), or a trusted foreign mlflow.pyfunc model
    input_names: list[str] | None
    required: list[str]
    path: Path  # the local MLflow model directory
    evidence: Evidence | None = None  # ours, verified: what registration measured and signed


def load_model(model_uri: str, scratch: Path, *, trust_model: bool = False, verify: bool = True) -> LoadedModel:
    """The MLflow model at `model_uri` (a local directory, models:/ or runs:/), downloaded into `scratch`.

    Ours (`loader_module` this module, safetensors and JSON inside) is verified against its signature before a byte
    of it is read (`components.serving.signing`), then loads through `Predictor`; no code from the model directory runs.
    Any other model's loader is code shipped with it (e.g. `python_model.pkl`): refused unless `trust_model`, which
    also loads ours unverified. `verify=False` is for the gate alone: it re-scores a champion whose signature
    fails, through `Predictor`, which reads only data formats.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from components.serving import signing

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
    if flavor.get("loader_module") == LOADER_MODULE and "data" in flavor and not flavor.get("code"):
        package = local / flavor["data"]
        if not package.resolve().is_relative_to(local.resolve()):
            raise UntrustedModelError(f"{model_uri}: its MLmodel points outside the model directory")
        checked = verify and not trust_model
        if checked:
            signing.verify(package, model_uri)
        evidence = read_evidence(package) if checked else None
        return LoadedModel(Predictor(package), names, required, local, evidence)
    if not trust_model:
        raise UntrustedModelError(
            f"{model_uri}: not a model this project packaged; loading it runs code shipped inside it "
            f"(its loader is {flavor.get('loader_module') or 'not a python_function'}, e.g. a pickle). "
            "Pass --trust-model only if you trust whoever wrote it"
        )
    try:
        return LoadedModel(mlflow.pyfunc.load_model(str(local)), names, required, local)
    except MlflowException as e:
        raise DataError(local, f"cannot load the model: {first_line(e)}") from None
