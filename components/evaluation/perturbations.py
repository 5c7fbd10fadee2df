"""Seeded input perturbations of the robustness stage (components/evaluation/robustness.py calls them).

After Robust-MSA (Yang et al., 2023) and OpenVNA (Du et al., 2024): noisy, degraded and missing modalities.
Severity is in [0, 1]; 0 is the identity. What it means per perturbation:

    text_word_deletion     each word deleted (with one adjacent space) with probability severity
    text_word_replacement  each word replaced, with probability severity, by a word of the vocabulary (train split)
    text_typos             each word, with probability severity, gets one edit: swap two adjacent characters, delete
                           one, double one, or substitute a QWERTY neighbour (a 1-character word: double/substitute)
    text_sentence_shuffle  a text of 2+ sentences, with probability severity, gets its sentences in another order
    image_blur             Gaussian blur, sigma = severity x image side (Pillow)
    image_noise            pixels + severity x 255 x N(0, 1), rounded and clipped to uint8
    image_occlusion        a black box of round(severity x H) x round(severity x W) pixels, inside the image
    <audio|vision>_noise       real frames + severity x N(0, 1) (features are in train-std units)
    <audio|vision>_frame_drop  each real frame dropped with probability severity, the kept ones moved to the front
                               (a row that loses none is left as it is)
    <audio|vision>_mute        one contiguous span of round(severity x length) real frames set to silence
    missing_<modality>     each sample loses the modality with probability severity (absent ones stay absent)

Every draw comes from `sample_rng(seed, name, sample_id)`, in an order and amount that do not depend on the severity,
and the severity only thresholds them: a higher severity perturbs a superset of what a lower one does (deleted
words, dropped frames, boxes and muted spans nest), and a sample's perturbation depends only on its id and content,
never on its position in the batch or on the other samples. Words are the spans of `WORD`; the text between words
(punctuation, whitespace) is kept, and a text none of whose words is chosen is returned unchanged. Every function is
pure: inputs are never changed.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence

import numpy as np

from components.features.contract import sentence_spans

__all__ = [
    "MODALITY",
    "WORD",
    "drop_modality",
    "perturb_images",
    "perturb_sequences",
    "perturb_texts",
    "sample_rng",
    "vocabulary",
]

TEXT = ("text_word_deletion", "text_word_replacement", "text_typos", "text_sentence_shuffle")
IMAGE = ("image_blur", "image_noise", "image_occlusion")
SEQUENCE = tuple(f"{m}_{kind}" for m in ("audio", "vision") for kind in ("noise", "frame_drop", "mute"))
MISSING = tuple(f"missing_{m}" for m in ("text", "image", "audio", "vision"))
MODALITY: dict[str, str] = {
    **{name: name.split("_", 1)[0] for name in TEXT + IMAGE + SEQUENCE},
    **{name: name.removeprefix("missing_") for name in MISSING},
}

WORD = re.compile(r"\w+(?:['’]\w+)*")
_APOSTROPHES = "'’"
_TYPOS = ("swap", "delete", "double", "substitute")


def _qwerty() -> dict[str, str]:
    """Lowercase letter or digit -> its neighbours on a QWERTY keyboard (same row, and the staggered rows beside)."""
    rows = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
    neighbours: dict[str, str] = {}
    for r, row in enumerate(rows):
        for i, key in enumerate(row):
            near = {row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)}
            if r > 0:
                near |= {rows[r - 1][j] for j in (i, i + 1) if j < len(rows[r - 1])}
            if r + 1 < len(rows):
                near |= {rows[r + 1][j] for j in (i - 1, i) if 0 <= j < len(rows[r + 1])}
            neighbours[key] = "".join(sorted(near))
    digits = "1234567890"
    for i, key in enumerate(digits):
        neighbours[key] = "".join(sorted(digits[j] for j in (i - 1, i + 1) if 0 <= j < len(digits)))
    return neighbours


_NEIGHBOURS = _qwerty()


def sample_rng(seed: int, name: str, sample_id: str) -> np.random.Generator:
    """The generator of one sample under one perturbation: the same in every process (crc32, not hash())."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(sample_id.encode())])


def vocabulary(texts: Sequence[str]) -> list[str]:
    """The sorted unique lowercase words of `texts` (what word replacement draws from)."""
    return sorted({word.lower() for text in texts for word in WORD.findall(text)})


def _check(name: str, family: tuple[str, ...], severity: float, n: int, ids: Sequence[str]) -> None:
    if name not in family:
        raise ValueError(f"{name!r} is not one of {', '.join(family)}")
    if not 0 <= severity <= 1:  # also refuses NaN
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} samples")


def _half_up(x: float) -> int:
    """x rounded half up (monotone, and _half_up(x) + k == _half_up(x + k) for an integer k)."""
    return math.floor(x + 0.5)


# ---------------------------------------------------------------------------------------------------------------------
# text


def perturb_texts(
    name: str, texts: Sequence[str], ids: Sequence[str], severity: float, seed: int, vocabulary: Sequence[str]
) -> list[str]:
    """`texts` with the text perturbation `name` applied at `severity` (see the module docstring)."""
    _check(name, TEXT, severity, len(texts), ids)
    rngs = (sample_rng(seed, name, i) for i in ids)
    return [_perturb_text(name, text, rng, severity, vocabulary) for text, rng in zip(texts, rngs, strict=True)]


def _perturb_text(name: str, text: str, rng: np.random.Generator, severity: float, vocab: Sequence[str]) -> str:
    if name == "text_sentence_shuffle":
        return _shuffle_sentences(text, rng, severity)
    words = [m.span() for m in WORD.finditer(text)]
    draws = rng.random((len(words), 4))  # per word: chosen?, then what the edit is (whatever the severity)
    chosen = draws[:, 0] < severity
    if not chosen.any():
        return text
    if name == "text_word_deletion":
        return _delete_words(text, words, chosen)
    if name == "text_word_replacement":
        if not vocab:
            raise ValueError("word replacement needs a non-empty vocabulary")
        new = [vocab[min(int(u * len(vocab)), len(vocab) - 1)] for u in draws[:, 1]]
    else:
        new = [_typo(text[start:end], *draws[k, 1:]) for k, (start, end) in enumerate(words)]
    return _replace_words(text, words, chosen, new)


def _replace_words(text: str, words: list[tuple[int, int]], chosen: np.ndarray, new: list[str]) -> str:
    out, last = [], 0
    for k, (start, end) in enumerate(words):
        if chosen[k]:
            out += [text[last:start], new[k]]
            last = end
    return "".join([*out, text[last:]])


def _delete_words(text: str, words: list[tuple[int, int]], chosen: np.ndarray) -> str:
    """`text` without its chosen words, each with one adjacent whitespace character (the one after, else before)."""
    starts, ends = [0] + [end for _, end in words], [start for start, _ in words] + [len(text)]
    gaps = [text[a:b] for a, b in zip(starts, ends, strict=True)]
    out, pending = [], gaps[0]
    for k, (start, end) in enumerate(words):
        after = gaps[k + 1]
        if chosen[k]:
            if after[:1].isspace():
                after = after[1:]
            elif pending[-1:].isspace():
                pending = pending[:-1]
            pending += after
        else:
            out += [pending, text[start:end]]
            pending = after
    return "".join([*out, pending])


def _typo(word: str, kind_u: float, position_u: float, neighbour_u: float) -> str:
    """`word` with one character edit; the draws are fractions in [0, 1) choosing the kind, position and key."""
    positions = [i for i, c in enumerate(word) if c not in _APOSTROPHES]
    if not positions:
        return word
    kind = _TYPOS[min(int(kind_u * len(_TYPOS)), len(_TYPOS) - 1)]
    if len(positions) < 2 and kind in ("swap", "delete"):
        kind = "substitute" if kind == "swap" else "double"

    def pick(options: list[int]) -> int:
        return options[min(int(position_u * len(options)), len(options) - 1)]

    if kind == "swap":
        pairs = [i for i in positions if i + 1 < len(word) and word[i + 1] not in _APOSTROPHES]
        if pairs and word[(i := pick(pairs))] != word[i + 1]:
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        kind = "substitute"  # no two adjacent characters, or swapping them would change nothing
    i = pick(positions)
    if kind == "delete":
        return word[:i] + word[i + 1 :]
    if kind == "substitute" and (near := _NEIGHBOURS.get(word[i].lower())):
        key = near[min(int(neighbour_u * len(near)), len(near) - 1)]
        return word[:i] + (key.upper() if word[i].isupper() else key) + word[i + 1 :]
    return word[: i + 1] + word[i:]  # double (and a substitution of a key without neighbours)


def _shuffle_sentences(text: str, rng: np.random.Generator, severity: float) -> str:
    """`text` with its sentences in another order, joined by a space. Only the last sentence can lack an end mark;
    moved elsewhere it gets a full stop, so that featurize (HAN) still splits the result into as many sentences."""
    sentences = [text[start:end].strip() for start, end in sentence_spans(text)]
    chosen = rng.random() < severity
    if len(sentences) < 2:
        return text
    order = rng.permutation(len(sentences))
    while (order == np.arange(len(sentences))).all():  # another order (draws depend on the text, not the severity)
        order = rng.permutation(len(sentences))
    if not chosen:
        return text
    last = len(sentences) - 1
    if sentences[last][-1] not in ".!?" and order[-1] != last:
        sentences[last] += "."
    return " ".join(sentences[k] for k in order)


# ---------------------------------------------------------------------------------------------------------------------
# images


def perturb_images(name: str, pixels: np.ndarray, ids: Sequence[str], severity: float, seed: int) -> np.ndarray:
    """uint8 pixels [N, C, H, W] with the image perturbation `name` applied at `severity` (a new array)."""
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 [N, C, H, W], got {pixels.dtype} {list(pixels.shape)}")
    _check(name, IMAGE, severity, len(pixels), ids)
    out = pixels.copy()
    if severity == 0:
        return out
    height, width = pixels.shape[2:]
    if name == "image_blur":
        from PIL import Image, ImageFilter

        blur = ImageFilter.GaussianBlur((severity * width, severity * height))
        for n, image in enumerate(pixels):
            for c, channel in enumerate(image):
                out[n, c] = np.asarray(Image.fromarray(np.ascontiguousarray(channel)).filter(blur))
        return out
    for n, sample_id in enumerate(ids):
        rng = sample_rng(seed, name, sample_id)
        if name == "image_noise":
            z = rng.standard_normal(pixels.shape[1:], dtype=np.float32)
            out[n] = np.clip(np.rint(pixels[n] + np.float32(severity * 255) * z), 0, 255).astype(np.uint8)
        else:  # image_occlusion: the box's place is a fraction of the room left, so larger boxes hold smaller ones
            fy, fx = rng.random(2)
            h, w = _half_up(severity * height), _half_up(severity * width)
            top, left = _half_up(fy * (height - h)), _half_up(fx * (width - w))
            out[n, :, top : top + h, left : left + w] = 0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# audio and vision frames


def perturb_sequences(
    name: str,
    features: np.ndarray,
    mask: np.ndarray,
    ids: Sequence[str],
    severity: float,
    seed: int,
    silence: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Standardized frames [N, T, D] and their mask [N, T] (True: a real frame; padding is 0) with the sequence
    perturbation `name` applied at `severity`; `silence` [D] is what a muted frame becomes. New arrays, same shapes.
    Draws are per real frame in order, so they do not depend on where the padding is."""
    if features.ndim != 3 or mask.shape != features.shape[:2]:
        raise ValueError(f"features [N, T, D] and mask [N, T] expected, got {list(features.shape)}, {list(mask.shape)}")
    _check(name, SEQUENCE, severity, len(features), ids)
    silence = np.asarray(silence, features.dtype)
    if silence.shape != features.shape[2:]:
        raise ValueError(f"silence must have {features.shape[2]} values, got {list(silence.shape)}")
    out, out_mask = features.copy(), mask.copy()
    if severity == 0:
        return out, out_mask
    kind = name.split("_", 1)[1]
    for n, sample_id in enumerate(ids):
        rng = sample_rng(seed, name, sample_id)
        real = np.flatnonzero(mask[n])
        if kind == "noise":
            z = rng.standard_normal((len(real), features.shape[2]), dtype=np.float32)
            out[n, real] = features[n, real] + np.asarray(severity, features.dtype) * z
        elif kind == "frame_drop":
            kept = real[rng.random(len(real)) >= severity]
            if len(kept) == len(real):
                continue  # a row that loses no frame keeps its layout
            out[n] = 0
            out[n, : len(kept)] = features[n, kept]
            out_mask[n] = np.arange(mask.shape[1]) < len(kept)
        else:  # mute: the span's start is a fraction of the room left, so longer spans hold shorter ones
            start_u = rng.random()
            length = _half_up(severity * len(real))
            start = _half_up(start_u * (len(real) - length))
            out[n, real[start : start + length]] = silence
    return out, out_mask


# ---------------------------------------------------------------------------------------------------------------------
# missing modalities


def drop_modality(present: np.ndarray, ids: Sequence[str], severity: float, seed: int, name: str) -> np.ndarray:
    """`present` [N] (bool) with each sample's modality dropped with probability `severity` (a new array)."""
    _check(name, MISSING, severity, len(present), ids)
    draws = np.array([sample_rng(seed, name, i).random() for i in ids], np.float64).reshape(len(ids))
    return np.asarray(present, bool) & ~(draws < severity)
