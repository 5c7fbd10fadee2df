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
(`components.media`, in parallel processes); the extraction settings are part of the state, so the served model
extracts a caller's clip exactly so.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from components.atomic import replace_directory, write_json
from components.config import AudioClipParams, FeaturizeParams, Section, VideoClipParams, runtime_keys
from components.dataset import SPLITS, Dataset, Manifest, read_dataset, read_manifest
from components.errors import DataError, first_line
from components.images import ImageProblem, fit, open_image
from components.lineage import file_sha256, tree_digest
from components.text_model import resolve_text_model

FEATURIZER_VERSION = "4"  # bump when the output of this module changes for the same inputs
FEATURES = "features.safetensors"
STATE = "featurizer.json"
# Settings that decide only where features go and how fast they are computed, not what they are.
_NOT_IN_KEY = runtime_keys("featurize")
_CLIP_SETTINGS = {"audio": "audio_clips", "vision": "video_clips"}
_SENTENCE = re.compile(r"[^.!?]+[.!?]*|[.!?]+")


class TextState(Section):
    model: str  # as configured (id or path)
    hidden_size: int
    max_tokens: int
    max_sentences: int
    max_sentence_tokens: int
    token_states: bool


class ImageState(Section):
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class SequenceState(Section):
    dim: int
    max_len: int
    mean: list[float]
    std: list[float]
    clips: AudioClipParams | VideoClipParams | None = None  # how frames are extracted from a clip; None: given


class FeaturizerState(Section):
    key: str
    version: str = FEATURIZER_VERSION
    dataset: str
    dataset_version: str
    label_kind: Literal["regression", "classification"]
    classes: tuple[str, ...] = ()
    ids: list[str] = []  # row order of the features; empty in a serving package
    features_sha256: str = ""  # of features.safetensors: a damaged or replaced file is never "kept"
    text: TextState | None = None
    image: ImageState | None = None
    audio: SequenceState | None = None
    vision: SequenceState | None = None

    @property
    def clip_modalities(self) -> list[str]:
        """The sequence modalities whose frames are extracted from clips."""
        return [m for m in ("audio", "vision") if (s := getattr(self, m)) is not None and s.clips is not None]


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
    from components.devices import cpu_threads  # torch: not for the commands that only import this module

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
    if (problem := _stateless_output(out)) is not None:  # before the work: it could not replace `out` after it
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
        featurizer = featurizer.model_copy(update={"features_sha256": _sha256(staging / FEATURES)})
        write_json(staging / STATE, featurizer.model_dump(mode="json"))
    return FeaturizeResult(out, featurizer, cached=False, seconds=time.perf_counter() - start)


def load_features(out: str | Path) -> tuple[dict[str, np.ndarray], FeaturizerState]:
    """Read what `featurize` wrote (safetensors: no code runs on load)."""
    state = read_state(out)
    file = Path(out) / FEATURES
    if not file.is_file():
        raise DataError(file, f"missing beside {STATE}: run `msa featurize` again")
    if state.features_sha256 and _sha256(file) != state.features_sha256:
        raise DataError(file, f"its bytes differ from what featurize recorded in {STATE}: run `msa featurize` again")
    try:
        return load_file(file), state
    except (SafetensorError, OSError) as e:
        raise DataError(file, f"damaged or unreadable ({first_line(e)}): run `msa featurize` again") from None


def read_state(out: str | Path) -> FeaturizerState:
    """The featurizer state `featurize` wrote to `out`, without the (large) feature arrays."""
    state = _read_state(Path(out))
    if state is None:
        problem = _stateless_output(Path(out)) or "missing or unreadable: run `msa featurize` first"
        raise DataError(Path(out) / STATE, problem)
    return state


def _stateless_output(out: Path) -> str | None:
    """Why `featurize` cannot rewrite `out` by itself: its featurizer.json is gone but other files are left, so it
    cannot tell the directory from one it did not write (`dvc repro` keeps it too: the stage's output persists)."""
    if (out / STATE).exists() or not out.is_dir() or not any(out.iterdir()):
        return None
    return (
        f"missing beside the other files in {out}: remove {out}, then run `msa featurize` (or `dvc repro`) to write "
        "it again"
    )


def input_key(raw: str | Path, params: FeaturizeParams) -> str:
    """The content hash `featurize` keys its output on: dataset files, text model files, settings, code version."""
    text = read_manifest(raw).modalities.text
    return content_key(Path(raw), params, resolve_text_model(params.text_model) if text else None)


def is_current(out: str | Path, key: str) -> bool:
    """Whether `out` holds the features of the inputs hashed to `key`, byte for byte as they were written."""
    existing = _read_state(Path(out))
    return existing is not None and existing.key == key and _sha256(Path(out) / FEATURES) == existing.features_sha256


def _sha256(file: Path) -> str | None:
    try:
        return file_sha256(file)
    except OSError:
        return None


def content_key(raw: Path, params: FeaturizeParams, text_path: Path | None, manifest: Manifest | None = None) -> str:
    digest = hashlib.sha256(f"featurizer {FEATURIZER_VERSION}\n".encode())
    clips = (manifest or read_manifest(raw)).modalities.clips
    # Extraction settings count only where clips are extracted: they change nothing else.
    unused = {name for modality, name in _CLIP_SETTINGS.items() if modality not in clips}
    settings = params.model_dump(mode="json", exclude=_NOT_IN_KEY | unused)
    if clips:  # the extraction code and the decoders' and librosa's versions decide the frames too
        from importlib.metadata import version

        from components.media import EXTRACTOR_VERSION

        settings["extractor"] = [EXTRACTOR_VERSION, version("av"), version("librosa")]
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for label, root in (("dataset", raw), ("text model", text_path)):
        if root is not None:
            digest.update(f"\n{label}\n".encode())
            tree_digest(root, digest=digest)
    return digest.hexdigest()


def _read_state(out: Path) -> FeaturizerState | None:
    try:
        return FeaturizerState.model_validate_json((out / STATE).read_bytes())
    except (OSError, ValueError):
        return None


def _labels(dataset: Dataset) -> np.ndarray:
    label = dataset.samples["label"]
    if dataset.manifest.label.kind == "regression":
        return label.to_numpy(np.float32)
    return label.map(dataset.manifest.label.classes.index).to_numpy(np.int64)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (split after . ! ?); a text without punctuation is one sentence."""
    return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


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


def load_tokenizer(path: str | Path):
    """The fast tokenizer in `path` (its character offsets place each token in its sentence, for HAN)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tokenizer.is_fast:
        raise DataError(path, "text model: needs a fast tokenizer (tokenizer.json) for sentence offsets")
    return tokenizer


def encode_texts(tokenizer, texts: list[str], state: TextState) -> dict[str, np.ndarray]:
    """Token ids and masks for every text model: flat [N, L] for LSTM/TextCNN, and for HAN the position of each
    word token in that flat sequence, per sentence [N, S, W]. L, S and W are what the longest of `texts` needs, at
    most `max_tokens`, `max_sentences` and `max_sentence_tokens`."""
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=state.max_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    width = max(len(ids) for ids in encoded["input_ids"])
    n, s, w = len(texts), state.max_sentences, state.max_sentence_tokens
    input_ids = np.full((n, width), tokenizer.pad_token_id or 0, np.int64)
    attention = np.zeros((n, width), bool)
    sentence_index = np.zeros((n, s, w), np.int64)
    sentence_mask = np.zeros((n, s, w), bool)
    for i, (ids, offsets, special) in enumerate(
        zip(encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"], strict=True)
    ):
        input_ids[i, : len(ids)] = ids
        attention[i, : len(ids)] = True
        ends = [end for _, end in sentence_spans(texts[i])]
        filled = np.zeros(s, np.int64)
        for position, ((char_start, _), is_special) in enumerate(zip(offsets, special, strict=True)):
            if is_special:
                continue
            sentence = next((k for k, end in enumerate(ends) if char_start < end), len(ends) - 1)
            if sentence < s and filled[sentence] < w:  # HAN sees the first S sentences, W tokens each
                sentence_index[i, sentence, filled[sentence]] = position
                sentence_mask[i, sentence, filled[sentence]] = True
                filled[sentence] += 1
    # HAN's axes end where these texts' sentences do, as the token axis ends at the longest text: its word GRU runs
    # over every slot, and the configured maximum (4 x 32) is mostly padding (masked: no output changes).
    used = np.s_[:, : _used(sentence_mask, (0, 2)), : _used(sentence_mask, (0, 1))]
    return {
        "text.input_ids": input_ids,
        "text.attention_mask": attention,
        "text.sentence_index": sentence_index[used],
        "text.sentence_mask": sentence_mask[used],
    }


def _used(mask: np.ndarray, others: tuple[int, ...]) -> int:
    """Positions on the axis not in `others` up to the last one any entry uses; at least one."""
    return int(np.flatnonzero(mask.any(others)).max(initial=0)) + 1


def text_transformer(path: Path, device: str = "auto"):
    """The frozen transformer in `path`, in eval mode on `device` (auto: cuda, then mps, then cpu)."""
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    from components.devices import pick_device

    transformers_logging.disable_progress_bar()  # its per-weight loading bar is noise beside ours
    return AutoModel.from_pretrained(path, local_files_only=True).to(pick_device(device)).eval()


def token_states(
    transformer, input_ids: np.ndarray, attention: np.ndarray, *, batch_size: int, progress: bool = False
) -> np.ndarray:
    """Last hidden states of the frozen `transformer`, float16 [N, L, H], zero at padding.

    Texts run longest first in batches trimmed to their own longest text, so little time goes into padding.
    """
    import torch
    from tqdm.auto import tqdm

    device = next(transformer.parameters()).device
    lengths = attention.sum(1)
    order = np.argsort(-lengths, kind="stable")
    states = np.zeros((*input_ids.shape, transformer.config.hidden_size), np.float16)
    batches = range(0, len(order), batch_size)
    with torch.inference_mode():
        for start in tqdm(batches, desc="token states", unit="batch", disable=None if progress else True, leave=False):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            ids = torch.from_numpy(input_ids[rows, :width]).to(device)
            mask = torch.from_numpy(attention[rows, :width]).to(device)
            hidden = transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            hidden = hidden.masked_fill(~mask[..., None], 0)
            states[rows, :width] = hidden.to(torch.float16).cpu().numpy()
    return states


def _image_features(dataset: Dataset, size: int, train: np.ndarray, tensors: dict[str, np.ndarray]) -> ImageState:
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
    return getattr(params, _CLIP_SETTINGS[modality])


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
    from components.media import ClipJob, ClipProblem, NoAudioStream, extract_many

    jobs, owners = [], []
    for modality, spec in dataset.manifest.modalities.clips.items():
        kind = "vision" if modality == "vision" else "audio"
        settings, max_len = clip_settings(params, modality), params.sequence_max_len or spec.max_len
        for i, file in enumerate(dataset.clip_files(modality)):
            if file is not None:
                column = file.relative_to(dataset.root).parts[0]  # audio/ or video/, as the contract has it
                # Frames past max_len are cut below: extraction stops there rather than decode the whole clip.
                jobs.append(ClipJob(file, kind, settings, dataset.manifest.clips, column, max_frames=max_len))
                owners.append((modality, i))
    results = extract_many(jobs, workers=params.workers, progress=progress)
    n = len(dataset.samples)
    out = {}
    for modality, spec in dataset.manifest.modalities.clips.items():
        dim = clip_settings(params, modality).dim
        max_len = params.sequence_max_len or spec.max_len
        out[modality] = (np.zeros((n, max_len, dim), np.float32), np.zeros(n, np.int64))
    for job, (modality, i), result in zip(jobs, owners, results, strict=True):
        if isinstance(result, NoAudioStream) and dataset.manifest.modalities.clips[modality].allow_missing:
            continue  # a silent video, where audio may be missing: the sample has no audio
        if isinstance(result, ClipProblem):
            raise DataError(job.source, str(result), sample_id=dataset.samples["id"].iloc[i])
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
    n, max_len, dim = features.shape
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


def standardize(features: np.ndarray, mask: np.ndarray, state: SequenceState) -> np.ndarray:
    """Frames [N, T, D] scaled with the train statistics in `state`; padding (mask False) stays exactly 0."""
    mean, std = np.asarray(state.mean, np.float32), np.asarray(state.std, np.float32)
    return np.where(mask[..., None], (features - mean) / std, 0).astype(np.float32)
