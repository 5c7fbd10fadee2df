"""The feature contract: what featurize writes and every later stage reads, and the transforms they all repeat.

`<out>/features.safetensors` holds every sample's tensors; `<out>/featurizer.json` (`FeaturizerState`) holds what
is needed to featurize a new raw input exactly like the training data: the tokenizer and lengths, the image and
sequence statistics of the train split, the clip extraction settings. Training, evaluation, robustness, compression
and serving read features and state through this module only and repeat its transforms (`encode_texts`,
`token_states`, `standardize`, `sentence_spans`); the featurize stage (`components.features.featurize`) writes
them. A change to how the stage computes or caches features is not a change to this contract, so it reruns no
later stage by itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from safetensors import SafetensorError
from safetensors.numpy import load_file

from components.core.config import AudioClipParams, Section, VideoClipParams
from components.core.errors import DataError, first_line
from components.core.hashing import file_sha256

__all__ = [
    "FEATURES",
    "FEATURIZER_VERSION",
    "STATE",
    "FeaturizerState",
    "ImageState",
    "SequenceState",
    "TextState",
    "encode_texts",
    "load_features",
    "load_tokenizer",
    "read_state",
    "sentence_spans",
    "sha256_or_none",
    "standardize",
    "state_or_none",
    "stateless_output",
    "text_transformer",
    "token_states",
]

FEATURIZER_VERSION = "4"  # bump when the output of this module changes for the same inputs


FEATURES = "features.safetensors"


STATE = "featurizer.json"


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
    ids: list[str] = Field(default_factory=list)  # row order of the features; empty in a serving package
    features_sha256: str = ""  # of features.safetensors: a damaged or replaced file is never "kept"
    text: TextState | None = None
    image: ImageState | None = None
    audio: SequenceState | None = None
    vision: SequenceState | None = None

    @property
    def clip_modalities(self) -> list[str]:
        """The sequence modalities whose frames are extracted from clips."""
        return [m for m in ("audio", "vision") if (s := getattr(self, m)) is not None and s.clips is not None]


def load_features(out: str | Path) -> tuple[dict[str, np.ndarray], FeaturizerState]:
    """Read what `featurize` wrote (safetensors: no code runs on load)."""
    state = read_state(out)
    file = Path(out) / FEATURES
    if not file.is_file():
        raise DataError(file, f"missing beside {STATE}: run `msa featurize` again")
    if state.features_sha256 and sha256_or_none(file) != state.features_sha256:
        raise DataError(file, f"its bytes differ from what featurize recorded in {STATE}: run `msa featurize` again")
    try:
        return load_file(file), state
    except (SafetensorError, OSError) as e:
        raise DataError(file, f"damaged or unreadable ({first_line(e)}): run `msa featurize` again") from None


def read_state(out: str | Path) -> FeaturizerState:
    """The featurizer state `featurize` wrote to `out`, without the (large) feature arrays."""
    state = state_or_none(Path(out))
    if state is None:
        problem = stateless_output(Path(out)) or "missing or unreadable: run `msa featurize` first"
        raise DataError(Path(out) / STATE, problem)
    return state


def stateless_output(out: Path) -> str | None:
    """Why `featurize` cannot rewrite `out` by itself: its featurizer.json is gone but other files are left, so it
    cannot tell the directory from one it did not write (`dvc repro` keeps it too: the stage's output persists)."""
    if (out / STATE).exists() or not out.is_dir() or not any(out.iterdir()):
        return None
    return (
        f"missing beside the other files in {out}: remove {out}, then run `msa featurize` (or `dvc repro`) to write "
        "it again"
    )


def sha256_or_none(file: Path) -> str | None:
    try:
        return file_sha256(file)
    except OSError:
        return None


def state_or_none(out: Path) -> FeaturizerState | None:
    try:
        return FeaturizerState.model_validate_json((out / STATE).read_bytes())
    except (OSError, ValueError):
        return None


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (split after . ! ?); a text without punctuation is one sentence."""
    return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


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

    from components.core.devices import pick_device

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


def standardize(features: np.ndarray, mask: np.ndarray, state: SequenceState) -> np.ndarray:
    """Frames [N, T, D] scaled with the train statistics in `state`; padding (mask False) stays exactly 0."""
    mean, std = np.asarray(state.mean, np.float32), np.asarray(state.std, np.float32)
    return np.where(mask[..., None], (features - mean) / std, 0).astype(np.float32)
