"""Featurize stage: turn the canonical dataset into model-ready tensors.

Writes `<out>/features.safetensors` (every sample, every modality, split codes and labels) and
`<out>/featurizer.json` (the state needed to featurize new raw inputs exactly like the training data: tokenizer,
lengths, image and sequence statistics of the train split). The state carries a content key over the dataset
files, the featurizer settings, the text model's files and this module's version: when the key matches what is on
disk the stage returns at once, without importing torch or transformers.

Text: one tokenization with a Hugging Face tokenizer feeds all text models. For HAN, each word token is assigned
to its sentence through the tokenizer's character offsets (`text.sentence_index` [N, S, W] points into the flat
token sequence), so LSTM/TextCNN and HAN share the same token states. With `token_states`, the transformer's last
hidden states are precomputed once (float16) for training with a frozen encoder.

Images are kept as resized uint8 pixels (4x smaller than float32); the model normalizes them with the train
statistics recorded here. Sequences are standardized with train statistics here, padded or truncated, and masked.
A sequence modality declared `source: clips` is first extracted from the dataset's audio or video files
(`components.data.media`, in parallel processes); the extraction settings are part of the state, so the served model
extracts a caller's clip exactly so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
from safetensors.numpy import save_file

from components.core.atomic import replace_directory, write_json
from components.core.config import AudioClipParams, FeaturizeParams, VideoClipParams
from components.core.errors import DataError
from components.data.dataset import SPLITS, Dataset, read_dataset, read_manifest
from components.data.images import ImageProblem, fit, open_image
from components.features.contract import (
    FEATURES,
    STATE,
    FeaturizerState,
    ImageState,
    SequenceState,
    TextState,
    encode_texts,
    load_tokenizer,
    read_state,
    sha256_or_none,
    standardize,
    stateless_output,
    text_transformer,
    token_states,
)
from components.features.key import CLIP_SETTINGS, content_key, is_current
from components.features.text_model import resolve_text_model

__all__ = ["FeaturizeResult", "clip_settings", "featurize"]


@dataclass(frozen=True)
class FeaturizeResult:
    out: Path
    state: FeaturizerState
    cached: bool
    seconds: float

    def summary(self) -> str:
        how = "unchanged inputs, kept" if self.cached else "wrote"
        return f"featurize: {how} {len(self.state.ids)} samples in {self.out} ({self.seconds:.2f} s)"


def featurize(raw: str | Path, params: FeaturizeParams, *, progress: bool = True) -> FeaturizeResult:
    from components.core.devices import cpu_threads  # torch: not for the commands that only import this module

    with cpu_threads(params.threads):
        return _featurize(raw, params, progress=progress)


def _featurize(raw: str | Path, params: FeaturizeParams, *, progress: bool = True) -> FeaturizeResult:
    start = time.perf_counter()
    raw, out = Path(raw), Path(params.out)
    manifest = read_manifest(raw)
    text_path = resolve_text_model(params.text_model) if manifest.modalities.text else None
    key = content_key(raw, params, text_path, manifest)
    if is_current(out, key):
        return FeaturizeResult(out, read_state(out), cached=True, seconds=time.perf_counter() - start)
    if (problem := stateless_output(out)) is not None:  # before the work: it could not replace `out` after it
        raise DataError(out / STATE, problem)

    dataset = read_dataset(raw)
    train = (dataset.samples["split"] == "train").to_numpy()
    tensors: dict[str, np.ndarray] = {
        "split": dataset.samples["split"].map(SPLITS.index).to_numpy(np.int8),
        "label": _labels(dataset),
    }
    state: dict = {}
    if text_path is not None:
        state["text"] = _text_features(dataset, params, text_path, tensors, progress)
    if manifest.modalities.image:
        state["image"] = _image_features(dataset, params.image_size, train, tensors)
    for modality, spec in manifest.modalities.sequences.items():
        max_len = params.sequence_max_len or spec.max_len
        sequences = _stored_sequences(dataset, modality, max_len)
        state[modality] = _sequence_features(*sequences, modality, train, tensors, where=raw / "sequences")
    extracted = _clip_sequences(dataset, params, progress) if manifest.modalities.clips else {}
    for modality, sequences in extracted.items():
        settings = clip_settings(params, modality)
        state[modality] = _sequence_features(*sequences, modality, train, tensors, where=raw, clips=settings)
    featurizer = FeaturizerState(
        key=key,
        dataset=manifest.name,
        dataset_version=manifest.version,
        label_kind=manifest.label.kind,
        classes=getattr(manifest.label, "classes", ()),
        ids=dataset.samples["id"].tolist(),
        **state,
    )
    with replace_directory(out, marker=STATE) as staging:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, staging / FEATURES)
        featurizer = featurizer.model_copy(update={"features_sha256": sha256_or_none(staging / FEATURES)})
        write_json(staging / STATE, featurizer.model_dump(mode="json"))
    return FeaturizeResult(out, featurizer, cached=False, seconds=time.perf_counter() - start)


def _labels(dataset: Dataset) -> np.ndarray:
    label = dataset.samples["label"]
    if dataset.manifest.label.kind == "regression":
        return label.to_numpy(np.float32)
    return label.map(dataset.manifest.label.classes.index).to_numpy(np.int64)


def _text_features(
    dataset: Dataset, params: FeaturizeParams, path: Path, tensors: dict[str, np.ndarray], progress: bool
) -> TextState:
    from transformers import AutoConfig

    state = TextState(
        model=params.text_model,
        hidden_size=AutoConfig.from_pretrained(path, local_files_only=True).hidden_size,
        max_tokens=params.max_tokens,
        max_sentences=params.max_sentences,
        max_sentence_tokens=params.max_sentence_tokens,
        token_states=params.token_states,
    )
    encoded = encode_texts(load_tokenizer(path), dataset.samples["text"].tolist(), state)
    tensors |= encoded
    if params.token_states:
        transformer = text_transformer(path, params.device)
        ids, mask = encoded["text.input_ids"], encoded["text.attention_mask"]
        tensors["text.states"] = token_states(transformer, ids, mask, batch_size=params.batch_size, progress=progress)
    return state


def _image_features(dataset: Dataset, size: int, train: np.ndarray, tensors: dict[str, np.ndarray]) -> ImageState:
    assert dataset.root is not None  # read from its directory
    paths = dataset.samples["image"]
    pixels = np.zeros((len(paths), 3, size, size), np.uint8)
    present = paths.notna().to_numpy()
    for i in np.flatnonzero(present):
        file = dataset.image_path(paths.iloc[i])
        try:
            pixels[i] = fit(open_image(file.read_bytes()), size)
        except (OSError, ImageProblem) as e:
            rule = str(e) if isinstance(e, ImageProblem) else f"cannot read the image: {e.strerror or e}"
            raise DataError(file, rule, sample_id=dataset.samples["id"].iloc[i]) from None
    reference = pixels[present & train].astype(np.float64) / 255
    if not len(reference):
        raise DataError(dataset.root, "no train sample has an image: image statistics are undefined")
    tensors |= {"image.pixels": pixels, "image.present": present}
    mean, std = reference.mean((0, 2, 3)), reference.std((0, 2, 3))
    return ImageState(size=size, mean=tuple(mean.round(6)), std=tuple(np.maximum(std, 1e-3).round(6)))


def clip_settings(params: FeaturizeParams, modality: str) -> AudioClipParams | VideoClipParams:
    """How `modality`'s frames are extracted from clips."""
    return getattr(params, CLIP_SETTINGS[modality])


def _stored_sequences(dataset: Dataset, modality: str, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample, the stored frames [N, max_len, D] (padded or cut), their count, and whether it has any."""
    arrays = dataset.sequences[modality]
    index = dataset.samples["seq_index"]
    present = index.notna().to_numpy()
    rows = index.fillna(0).to_numpy(np.int64)
    t = min(max_len, arrays.features.shape[1])
    features = np.zeros((len(index), max_len, arrays.features.shape[2]), np.float32)
    features[present, :t] = arrays.features[rows[present], :t]
    return features, np.where(present, np.minimum(arrays.lengths[rows], max_len), 0), present


def _clip_sequences(
    dataset: Dataset, params: FeaturizeParams, progress: bool
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """As `_stored_sequences` for every modality extracted from clips: all clips in one pool of `params.workers`
    processes (each pays the libraries' imports once)."""
    from components.data.media import ClipJob, ClipProblem, NoAudioStream, extract_many

    assert dataset.root is not None  # read from its directory
    jobs, owners = [], []
    for modality, spec in dataset.manifest.modalities.clips.items():
        kind: Literal["audio", "vision"] = "vision" if modality == "vision" else "audio"
        settings, max_len = clip_settings(params, modality), params.sequence_max_len or spec.max_len
        for i, file in enumerate(dataset.clip_files(modality)):
            if file is not None:
                # audio/ or video/, as the contract has it
                column = cast("Literal['audio', 'video']", file.relative_to(dataset.root).parts[0])
                # Frames past max_len are cut below: extraction stops there rather than decode the whole clip.
                jobs.append(ClipJob(file, kind, settings, dataset.manifest.clips, column, max_frames=max_len))
                owners.append((modality, i, file))
    results = extract_many(jobs, workers=params.workers, progress=progress)
    n = len(dataset.samples)
    out = {}
    for modality, spec in dataset.manifest.modalities.clips.items():
        dim = clip_settings(params, modality).dim
        max_len = params.sequence_max_len or spec.max_len
        out[modality] = (np.zeros((n, max_len, dim), np.float32), np.zeros(n, np.int64))
    for (modality, i, file), result in zip(owners, results, strict=True):
        if isinstance(result, NoAudioStream) and dataset.manifest.modalities.clips[modality].allow_missing:
            continue  # a silent video, where audio may be missing: the sample has no audio
        if isinstance(result, ClipProblem):
            raise DataError(file, str(result), sample_id=dataset.samples["id"].iloc[i])
        features, lengths = out[modality]
        kept = result[: features.shape[1]]
        features[i, : len(kept)], lengths[i] = kept, len(kept)
    return {modality: (features, lengths, lengths > 0) for modality, (features, lengths) in out.items()}


def _sequence_features(
    features: np.ndarray,
    lengths: np.ndarray,
    present: np.ndarray,
    modality: str,
    train: np.ndarray,
    tensors: dict[str, np.ndarray],
    *,
    where: Path,
    clips: AudioClipParams | VideoClipParams | None = None,
) -> SequenceState:
    """Standardize frames [N, T, D] with the statistics of the train split's real frames, into `tensors`."""
    _, max_len, dim = features.shape
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    frames = features[mask & train[:, None]].astype(np.float64)
    if not len(frames):
        raise DataError(where, f"no train sample has {modality} frames: statistics undefined")
    mean, std = frames.mean(0), frames.std(0)
    std = np.where(std < 1e-6, 1.0, std)  # a constant feature stays constant (zero) instead of exploding
    state = SequenceState(
        dim=dim,
        max_len=max_len,
        mean=mean.astype(np.float32).tolist(),
        std=std.astype(np.float32).tolist(),
        clips=clips,
    )
    features = standardize(features, mask, state)
    tensors |= {f"{modality}.features": features, f"{modality}.mask": mask, f"{modality}.present": present}
    return state
