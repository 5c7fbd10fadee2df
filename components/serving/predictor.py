"""The served model: raw rows in, a sentiment score and class out.

`Predictor` reads a serving package (`components.serving.package`) and turns raw rows (`components.serving.values`
says what each column holds) into the model's input tensors exactly as `featurize` made them for training, every
value checked against the package's bounds first.
Output columns: `score` (regression: the fused sentiment score; classification: the predicted class's
probability) and `class` (regression: positive for score >= 0, else negative, as Acc-2 counts it); where a row asks
(`explain`), `modality_shares` and `top_words` (`components.serving.explain`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from components.core.config import ServeParams
from components.core.errors import DataError, TrainingError
from components.data.dataset import SEQUENCE_MODALITIES, ClipBounds, is_null
from components.data.images import ImageProblem, fit, open_image
from components.features.contract import STATE, FeaturizerState, encode_texts, load_tokenizer, standardize
from components.models.store import CARD, WEIGHTS, ModelCard, trim_padding
from components.serving.explain import EXPLAIN, OUTPUTS, explain_row
from components.serving.package import TEXT, VARIANT, Bounds, read_limits
from components.serving.values import check_text, clip_bytes, image_bytes, sequence_frames

__all__ = ["BATCH", "INPUT", "Predictor"]

INPUT = Path("<model input>")  # what errors name when the rows did not come from a file
BATCH = 64


class Predictor:
    """A packaged model, ready for raw rows; `predict` is what MLflow's pyfunc (the REST scoring server) calls."""

    def __init__(self, root: str | Path) -> None:
        from safetensors.torch import load_file

        from components.compression.compress import load_compressed
        from components.models import MultiTaskModel
        from components.models.store import monitored_head

        root = self.root = Path(root)
        try:
            spec = ModelCard.model_validate_json((root / CARD).read_bytes()).spec
            self.state = FeaturizerState.model_validate_json((root / STATE).read_text())
            self.limits = read_limits(root)
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
        self.bounds = Bounds(
            self.limits, ClipBounds(max_bytes=self.limits.max_clip_bytes, max_seconds=self.limits.max_clip_seconds)
        )
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
                raise DataError(
                    INPUT, f"{len(frame)} rows in one request; at most {self.limits.max_rows} (serve.max_rows)"
                )
            columns = _columns(frame)
            asked = sum(_asks(v) for v in columns.get(EXPLAIN, ()))
            if asked > self.limits.max_explain_rows:
                raise DataError(
                    INPUT,
                    f"{asked} rows ask for an explanation; at most {self.limits.max_explain_rows} per request "
                    "(serve.max_explain_rows)",
                )
            # Path columns: `image`; `audio` where audio comes from clips (else it holds frames); `video` for any clips.
            clips = self.clip_modalities
            for column in ("image", *(["audio"] if "audio" in clips else []), *(["video"] if clips else [])):
                for i, value in enumerate(columns.get(column, ())):
                    if not is_null(value):
                        raise DataError(
                            INPUT,
                            f"the served model opens no file paths: send the {column} as {column}_base64",
                            row=i + 1,
                        )
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
        batches = self._prepare(columns, n, source, image_root, bounds)
        predictions = self.run(batches)
        asked = [i for i, v in enumerate(columns.get(EXPLAIN, ())) if _asks(v)]
        if asked:
            explained: dict[str, list] = {name: [None] * n for name in OUTPUTS}
            for i in asked:  # the row as already prepared: its image and clips are not decoded again
                base = {k: v[i % BATCH : i % BATCH + 1] for k, v in batches[i // BATCH].items()}
                text = columns["text"][i] if "text" in columns else None
                for name, value in explain_row(self, base, text).items():
                    explained[name][i] = value
            for name, values in explained.items():
                predictions[name] = values
        return predictions

    def outputs(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every head's output for one prepared batch."""
        import torch

        with torch.inference_mode():
            outputs = self.model({k: torch.from_numpy(v) for k, v in batch.items()})
        return {head: tensor.float().numpy() for head, tensor in outputs.items()}

    def prepare_frame(
        self,
        frame: pd.DataFrame,
        *,
        source: Path = INPUT,
        image_root: Path | None = None,
        bounds: Bounds | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """`predict_frame`'s first half: the rows checked and prepared (tokenized, decoded, standardized) into the
        model's input batches, with `bounds` (the packaged ones unless given); `run` scores them. Batch scoring
        prepares the next chunk while the model runs this one."""
        return self._prepare(_columns(frame), len(frame), source, image_root, bounds or self.bounds)

    def run(self, batches: list[dict[str, np.ndarray]]) -> pd.DataFrame:
        """Scores and classes of prepared batches (`prepare_frame`)."""
        import torch

        scores: list[np.ndarray] = []
        for batch in batches:
            with torch.inference_mode():
                scores.append(self.model({k: torch.from_numpy(v) for k, v in batch.items()})[self.head].float().numpy())
        return self._decide(np.concatenate(scores) if scores else np.zeros((0,), np.float32))

    def _prepare(
        self, columns: dict[str, list], n: int, source: Path, image_root: Path | None, bounds: Bounds
    ) -> list[dict[str, np.ndarray]]:
        if self.spec.text is not None and "text" not in columns:
            raise DataError(source, f"missing required column 'text'; got columns {list(columns)}")
        batches = []
        for start in range(0, n, BATCH):
            rows = {c: values[start : start + BATCH] for c, values in columns.items()}
            features = self.features(rows, source=source, image_root=image_root, first_row=start, bounds=bounds)
            batches.append(trim_padding(features))
        return batches

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
        present = np.zeros(n, bool)
        if self.spec.text is not None:
            out |= self._text_features(rows["text"], source, first_row, bounds.limits)
            present[:] = True
        if self.spec.image is not None:
            out |= self._image_features(rows, n, source, image_root, first_row, bounds.limits)
            present |= out["image.present"]
        # Vision first where it comes from clips: a broken video then reads as the video's problem, not as a failed
        # soundtrack (audio falls back to the video when no audio clip is sent).
        order = ("vision", "audio") if "vision" in self.clip_modalities else SEQUENCE_MODALITIES
        for modality in order:
            if getattr(self.spec, modality) is not None:
                out |= self._sequence_features(modality, rows, n, source, image_root, first_row, bounds)
                present |= out[f"{modality}.present"]
        if not present.all():
            row = int(np.flatnonzero(~present)[0]) + first_row + 1
            raise DataError(
                source, f"no input for any of the model's modalities ({', '.join(self.modalities)})", row=row
            )
        return out

    def _text_features(self, texts: list, source: Path, first_row: int, limits: ServeParams) -> dict[str, np.ndarray]:
        """Every row's text checked (`check_text`), then tokenized as featurize tokenized it."""
        for i, text in enumerate(texts):
            check_text(text, source, first_row + i + 1, limits.max_text_chars)
        state = self.state.text
        assert state is not None  # text features are made only for a model that reads text
        return encode_texts(self.tokenizer, texts, state)

    def _image_features(
        self, rows: dict[str, list], n: int, source: Path, image_root: Path | None, first_row: int, limits: ServeParams
    ) -> dict[str, np.ndarray]:
        """Each row's image, its bytes and pixels bounded before it is decoded, fitted as featurize fitted it."""
        state = self.state.image
        assert state is not None  # image features are made only for a model that reads images
        size = state.size
        pixels, has = np.zeros((n, 3, size, size), np.uint8), np.zeros(n, bool)
        inline, paths = rows.get("image_base64", [None] * n), rows.get("image", [None] * n)
        for i in range(n):
            try:
                if (data := image_bytes(inline[i], paths[i], image_root, limits)) is not None:
                    image = open_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
                    pixels[i], has[i] = fit(image, size), True
            except ImageProblem as e:
                raise DataError(source, str(e), row=first_row + i + 1) from None
        return {"image.pixels": pixels, "image.present": has}

    def _sequence_features(
        self,
        modality: str,
        rows: dict[str, list],
        n: int,
        source: Path,
        image_root: Path | None,
        first_row: int,
        bounds: Bounds,
    ) -> dict[str, np.ndarray]:
        """Each row's `modality` frames (sent, or extracted from its clip), cut to the model's length and
        standardized with the train split's statistics."""
        state = getattr(self.state, modality)
        frames = np.zeros((n, state.max_len, state.dim), np.float32)
        mask = np.zeros((n, state.max_len), bool)
        for i, value in enumerate(rows.get(modality, [None] * n)):
            row = first_row + i + 1
            if state.clips is not None:
                sequence = self._clip_frames(modality, rows, i, image_root, source, row, bounds)
            else:
                sequence = sequence_frames(value, state.dim, modality, bounds.limits.max_frames, source, row)
            kept = sequence[: state.max_len]
            frames[i, : len(kept)], mask[i, : len(kept)] = kept, True
        return {
            f"{modality}.features": standardize(frames, mask, state),
            f"{modality}.mask": mask,
            # numpy's stub types any(axis) as scalar-or-array: over axis 1 of the [n, max_len] mask it is the array [n]
            f"{modality}.present": cast(np.ndarray, mask.any(1)),
        }

    def _clip_frames(
        self, modality: str, rows: dict[str, list], i: int, root: Path | None, source: Path, row: int, bounds: Bounds
    ) -> np.ndarray:
        """Frames of row `i`'s clip for `modality`, extracted as featurize extracted them; [0, dim] without one.
        Vision comes from the video; audio from the audio clip, else from the video's soundtrack if it has one."""
        from components.data.media import ClipJob, ClipProblem, Kind, NoAudioStream, extract

        state = getattr(self.state, modality)
        kind: Kind = "vision" if modality == "vision" else "audio"
        column: Literal["audio", "video"] = "video"
        try:
            data = None
            if kind == "audio":
                column = "audio"
                data = clip_bytes(rows, column, i, root, bounds.limits)
            if data is None:
                column = "video"
                data = clip_bytes(rows, column, i, root, bounds.limits)
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


def _asks(value: Any) -> bool:
    """Whether a row's `explain` value asks: true, or a text or number that says so (CSV carries it as text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return not is_null(value) and bool(value)


def _columns(frame: pd.DataFrame) -> dict[str, list]:
    """Every column as a plain list: one conversion per request, then no pandas indexing per row or batch."""
    return {str(c): frame[c].tolist() for c in frame.columns}
