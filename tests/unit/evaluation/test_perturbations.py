"""The robustness stage's input perturbations: pure, seeded per sample, identity at 0, nested across severities."""

from __future__ import annotations

import itertools
import zlib
from typing import get_args

import numpy as np
import pytest

from components.core.config import Perturbation
from components.evaluation import perturbations as P
from components.features.contract import sentence_spans

NAMES = get_args(Perturbation)
SEVERITIES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
TEXTS = [
    "The movie was great, I loved it! The actors didn't disappoint. Would watch again?",
    "Honestly it was boring and far too long. I left early. My friend stayed. Never again",
    "A short one.",
    "Plot holes everywhere; the ending made no sense at all, and the music was loud.",
    "Ok.  Fine!   Whatever... Yes.",
]
VOCAB = ["alpha", "bravo", "charlie", "delta", "echo"]
N, T, D = 6, 12, 5


def _ids(n: int) -> list[str]:
    return [f"clip-{i}" for i in range(n)]


def _sequences() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = np.array([12, 9, 5, 1, 0, 7])
    mask = np.arange(T)[None, :] < lengths[:, None]
    mask[5] = np.roll(mask[5], 3)  # padding need not be at the end (compaction)
    features = np.where(mask[..., None], rng.standard_normal((N, T, D)), 0).astype(np.float32)
    return features, mask, np.linspace(-1, 1, D).astype(np.float32)


def _images() -> np.ndarray:
    return np.random.default_rng(2).integers(1, 256, (4, 3, 16, 16)).astype(np.uint8)


def _inputs(name: str):
    modality = P.MODALITY[name]
    if name.startswith("missing_"):
        return np.array([True] * 15 + [False] * 5)
    if modality == "text":
        return list(TEXTS)
    if modality == "image":
        return _images()
    return _sequences()


def _apply(name: str, inputs, severity: float, seed: int = 0, ids: list[str] | None = None):
    if name.startswith("missing_"):
        return P.drop_modality(inputs, ids or _ids(len(inputs)), severity, seed, name)
    modality = P.MODALITY[name]
    if modality == "text":
        return P.perturb_texts(name, inputs, ids or _ids(len(inputs)), severity, seed, VOCAB)
    if modality == "image":
        return P.perturb_images(name, inputs, ids or _ids(len(inputs)), severity, seed)
    features, mask, silence = inputs
    return P.perturb_sequences(name, features, mask, ids or _ids(len(features)), severity, seed, silence)


def _equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    return a == b


def _changed(name: str, inputs, out) -> float:
    """How much `out` differs from `inputs`."""
    if name.startswith("missing_"):
        return float((inputs & ~out).sum())
    if P.MODALITY[name] == "text":
        if name == "text_word_deletion":
            return sum(len(P.WORD.findall(a)) - len(P.WORD.findall(b)) for a, b in zip(inputs, out, strict=True))
        if name == "text_sentence_shuffle":
            return sum(a != b for a, b in zip(inputs, out, strict=True))
        pairs = [zip(P.WORD.findall(a), P.WORD.findall(b), strict=True) for a, b in zip(inputs, out, strict=True)]
        return sum(x != y for words in pairs for x, y in words)
    if P.MODALITY[name] == "image":
        return float(np.abs(out.astype(np.int64) - inputs).mean())
    (features, mask, _), (new, new_mask) = inputs, out
    if name.endswith("frame_drop"):
        return float(mask.sum() - new_mask.sum())
    return float(np.abs(new - features).sum())


def test_modality_covers_every_name():
    assert set(P.MODALITY) == set(NAMES)
    assert set(P.MODALITY.values()) == {"text", "image", "audio", "vision"}
    assert P.MODALITY["missing_vision"] == "vision" and P.MODALITY["text_typos"] == "text"
    assert P.MODALITY["audio_mute"] == "audio" and P.MODALITY["image_blur"] == "image"


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_dtype_kept(name):
    inputs = _inputs(name)
    out = _apply(name, inputs, 0.5)
    if isinstance(inputs, list):
        assert isinstance(out, list) and len(out) == len(inputs) and all(isinstance(t, str) for t in out)
    elif isinstance(inputs, tuple):
        assert out[0].shape == inputs[0].shape and out[0].dtype == np.float32
        assert out[1].shape == inputs[1].shape and out[1].dtype == bool
    else:
        assert out.shape == inputs.shape and out.dtype == inputs.dtype


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_seeded(name):
    inputs = _inputs(name)
    first = _apply(name, inputs, 0.5, seed=3)
    assert _equal(first, _apply(name, inputs, 0.5, seed=3))
    if name == "image_blur":  # nothing drawn
        assert _equal(first, _apply(name, inputs, 0.5, seed=4))
    else:
        assert not _equal(first, _apply(name, inputs, 0.5, seed=4))


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(name):
    inputs = _inputs(name)
    out = _apply(name, inputs, 0.0)
    expected = inputs[:2] if isinstance(inputs, tuple) else inputs
    assert _equal(out, expected)
    assert _changed(name, inputs, out) == 0


@pytest.mark.parametrize("name", NAMES)
def test_inputs_not_changed(name):
    inputs = _inputs(name)
    _apply(name, inputs, 1.0)
    _apply(name, inputs, 0.5)
    assert _equal(inputs, _inputs(name))


@pytest.mark.parametrize("name", NAMES)
def test_higher_severity_changes_at_least_as_much(name):
    inputs = _inputs(name)
    changes = [_changed(name, inputs, _apply(name, inputs, s)) for s in SEVERITIES]
    assert changes == sorted(changes), changes
    assert changes[0] == 0 < changes[-1]


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_depends_only_on_its_id(name):
    """Reversing the batch reverses the output: nothing depends on a sample's position or on the others."""
    inputs = _inputs(name)
    reversed_inputs = (inputs[0][::-1], inputs[1][::-1], inputs[2]) if isinstance(inputs, tuple) else inputs[::-1]
    n = len(reversed_inputs[0]) if isinstance(inputs, tuple) else len(inputs)
    out = _apply(name, reversed_inputs, 0.5, ids=_ids(n)[::-1])
    expected = _apply(name, inputs, 0.5)
    if isinstance(out, tuple):
        assert _equal(tuple(np.ascontiguousarray(a[::-1]) for a in out), expected)
    else:
        assert _equal(out[::-1] if isinstance(out, list) else np.ascontiguousarray(out[::-1]), expected)


@pytest.mark.parametrize("name", ["text_word_deletion", "text_word_replacement", "text_typos", "text_sentence_shuffle"])
def test_text_severities_nest(name):
    """A word (or text) perturbed at a lower severity is perturbed, the same way, at every higher one."""
    distinct = [" ".join(f"w{i}x{k}" for k in range(25)) + "." for i in range(4)]  # a word's text is its place
    texts = TEXTS if name == "text_sentence_shuffle" else distinct
    outs = [_apply(name, texts, s) for s in SEVERITIES]
    for low, high in itertools.pairwise(outs):
        for text, a, b in zip(texts, low, high, strict=True):
            if name == "text_word_deletion":
                assert set(P.WORD.findall(b)) <= set(P.WORD.findall(a))
            elif name == "text_sentence_shuffle":
                assert a in (text, b)  # unchanged, or already as it is at the higher severity
            else:
                old, wa, wb = P.WORD.findall(text), P.WORD.findall(a), P.WORD.findall(b)
                assert all(y == z for x, y, z in zip(old, wa, wb, strict=True) if y != x)


def test_word_deletion():
    assert P._delete_words("I am very happy.", [(0, 1), (2, 4), (5, 9), (10, 15)], [0, 1, 1, 0]) == "I happy."
    assert P._delete_words("Hello, world! Bye", [(0, 5), (7, 12), (14, 17)], [0, 1, 1]) == "Hello,!"
    assert P._delete_words("a b c", [(0, 1), (2, 3), (4, 5)], [1, 1, 1]) == ""
    out = _apply("text_word_deletion", TEXTS, 1.0)
    assert all(P.WORD.findall(t) == [] for t in out)
    assert out[0] == ",!.?"  # punctuation stays
    half = _apply("text_word_deletion", TEXTS, 0.5)
    assert all("  " not in t for t in half[:4]) and all(not t.startswith(" ") for t in half)


def test_word_replacement_draws_from_the_vocabulary():
    out = _apply("text_word_replacement", TEXTS, 1.0)
    for text, new in zip(TEXTS, out, strict=True):
        assert P.WORD.split(new) == P.WORD.split(text)  # everything between words kept
        assert set(P.WORD.findall(new)) <= set(VOCAB)
    with pytest.raises(ValueError, match="vocabulary"):
        P.perturb_texts("text_word_replacement", TEXTS, _ids(5), 0.5, 0, [])
    assert P.perturb_texts("text_word_replacement", TEXTS, _ids(5), 0.0, 0, []) == TEXTS


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (an adjacent swap counts one)."""
    d = [[i + j if not i * j else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def test_typos_edit_every_word_once():
    out = _apply("text_typos", TEXTS, 1.0)
    for text, new in zip(TEXTS, out, strict=True):
        old_words, new_words = P.WORD.findall(text), P.WORD.findall(new)
        assert len(new_words) == len(old_words)
        assert all(_edit_distance(x, y) == 1 for x, y in zip(old_words, new_words, strict=True))
    assert P._typo("a", 0.0, 0.0, 0.0) in {"s", "q", "w", "z"}  # swap of a 1-letter word: a substitution
    assert P._typo("a", 0.3, 0.0, 0.0) == "aa"  # deletion of a 1-letter word: a doubling
    assert P._typo("cat", 0.0, 0.0, 0.0) == "act"
    assert P._typo("cat", 0.3, 0.99, 0.0) == "ca"
    assert P._typo("Cat", 0.8, 0.0, 0.0) == "Dat"  # neighbours of c: d f v x; case kept
    assert P._typo("book", 0.0, 0.5, 0.0) == "boik"  # swapping "oo" changes nothing: a substitution instead


def test_sentence_shuffle_keeps_the_sentences():
    texts = ["One. Two! Three? Four.", "First sentence. Second one", "Only one here", "Same. Same."]
    out = _apply("text_sentence_shuffle", texts, 1.0)
    for text, new in zip(texts, out, strict=True):
        old = [text[a:b].strip() for a, b in sentence_spans(text)]
        sentences = [new[a:b].strip() for a, b in sentence_spans(new)]
        assert len(sentences) == len(old)
        assert sorted(s.rstrip(".") for s in sentences) == sorted(s.rstrip(".") for s in old)
    assert out[0] != texts[0] and sorted(out[0].split()) == sorted(texts[0].split())
    assert out[1] == "Second one. First sentence."  # the only other order; the moved last sentence gets its stop
    assert out[2] == texts[2] and out[3] == texts[3]


def test_image_occlusion_blacks_out_one_box():
    pixels = _images()  # no zero pixel
    for severity, side in ((0.25, 4), (0.5, 8), (0.75, 12), (1.0, 16)):
        out = P.perturb_images("image_occlusion", pixels, _ids(4), severity, 0)
        black = (out == 0).all(1)
        assert ((out == 0) == black[:, None]).all()  # all channels
        assert (black.sum((1, 2)) == side * side).all()
        rows, cols = black.any(2), black.any(1)
        assert (rows.sum(1) == side).all() and (cols.sum(1) == side).all()  # one box
        outside = ~np.broadcast_to(black[:, None], out.shape)
        assert np.array_equal(out[outside], pixels[outside])
    small = P.perturb_images("image_occlusion", pixels, _ids(4), 0.25, 0) == 0
    large = P.perturb_images("image_occlusion", pixels, _ids(4), 0.5, 0) == 0
    assert (large | ~small).all()  # the larger box holds the smaller one


def test_image_noise_and_blur():
    grey = np.full((2, 3, 32, 32), 128, np.uint8)
    noisy = P.perturb_images("image_noise", grey, ["a", "b"], 0.1, 0).astype(np.float64) - 128
    assert 0.09 * 255 < noisy.std() < 0.11 * 255 and abs(noisy.mean()) < 1
    assert not np.array_equal(noisy[0], noisy[1])
    flat = np.full((1, 3, 16, 16), 77, np.uint8)
    assert np.array_equal(P.perturb_images("image_blur", flat, ["a"], 0.1, 0), flat)
    pixels = _images()
    spread = [P.perturb_images("image_blur", pixels, _ids(4), s, 0).astype(np.float64).std() for s in (0.02, 0.1, 0.3)]
    assert pixels.std() > spread[0] > spread[1] > spread[2]


@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_sequence_padding_stays_zero(modality):
    features, mask, silence = _sequences()
    for kind in ("noise", "frame_drop", "mute"):
        out, out_mask = P.perturb_sequences(f"{modality}_{kind}", features, mask, _ids(N), 0.5, 0, silence)
        assert (out[~out_mask] == 0).all()
        if kind != "frame_drop":
            assert np.array_equal(out_mask, mask)


def test_sequence_noise():
    features, mask, silence = _sequences()
    out, _ = P.perturb_sequences("audio_noise", features, mask, _ids(N), 0.5, 0, silence)
    diff = (out - features)[mask]
    assert 0.4 < diff.std() < 0.6 and (np.abs(diff) > 0).all()
    # the draws follow the real frames, not where the padding is
    order = np.argsort(mask, axis=1, kind="stable")  # the same frames, in order, with the padding in front
    moved_features, moved_mask = np.take_along_axis(features, order[..., None], 1), np.take_along_axis(mask, order, 1)
    assert not np.array_equal(moved_mask, mask)
    moved, _ = P.perturb_sequences("audio_noise", moved_features, moved_mask, _ids(N), 0.5, 0, silence)
    assert np.array_equal(moved[moved_mask], out[mask])


def test_frame_drop():
    features, mask, silence = _sequences()
    features[..., 0] = np.where(mask, np.arange(T) + 1.0, 0)  # frame identity
    outs = [P.perturb_sequences("vision_frame_drop", features, mask, _ids(N), s, 0, silence) for s in SEVERITIES]
    kept_before = None
    for out, out_mask in outs:
        lost = out_mask.sum(1) < mask.sum(1)
        assert np.array_equal(out[~lost], features[~lost]) and np.array_equal(out_mask[~lost], mask[~lost])
        assert (out_mask[lost] == (np.arange(T) < out_mask[lost].sum(1)[:, None])).all()  # kept frames at the front
        kept = [set(out[n, out_mask[n], 0]) for n in range(N)]
        for n in range(N):
            frames = out[n, out_mask[n]]
            assert (np.diff(frames[:, 0]) > 0).all()  # in order
            originals = features[n, mask[n]]
            assert all((originals == f).all(1).any() for f in frames)
            if kept_before is not None:
                assert kept[n] <= kept_before[n]  # dropped at a lower severity: dropped at every higher one
        kept_before = kept
    assert not outs[-1][1].any() and (outs[-1][0] == 0).all()
    assert 0 < outs[3][1].sum() < mask.sum()


def test_mute_sets_one_span_to_silence():
    features, mask, silence = _sequences()
    lengths = mask.sum(1)
    previous = None
    for severity in SEVERITIES[1:]:
        out, _ = P.perturb_sequences("audio_mute", features, mask, _ids(N), severity, 0, silence)
        muted = (out == silence).all(2) & mask
        assert np.array_equal(muted.sum(1), np.floor(severity * lengths + 0.5))
        for n in range(N):
            positions = np.flatnonzero(muted[n][mask[n]])  # among the real frames
            assert len(positions) == 0 or np.array_equal(positions, np.arange(positions[0], positions[-1] + 1))
        assert np.array_equal(out[~muted], features[~muted])
        if previous is not None:
            assert (muted | ~previous).all()
        previous = muted


def test_missing():
    present = np.array([True] * 150 + [False] * 50)
    ids = _ids(200)
    outs = [P.drop_modality(present, ids, s, 0, "missing_audio") for s in SEVERITIES]
    for low, high in itertools.pairwise(outs):
        assert (low | ~high).all()
    assert all(not out[150:].any() for out in outs)  # absent stays absent
    assert not outs[-1].any() and np.array_equal(outs[0], present)
    assert 50 < outs[3].sum() < 100  # about half of 150 kept
    assert not np.array_equal(outs[3], P.drop_modality(present, ids, 0.5, 0, "missing_image"))


def test_sample_rng_is_stable():
    expected = np.random.default_rng([7, zlib.crc32(b"text_typos"), zlib.crc32(b"clip-1")]).random(3)
    assert np.array_equal(P.sample_rng(7, "text_typos", "clip-1").random(3), expected)
    assert P.sample_rng(0, "a", "b").random() == np.random.default_rng([0, 3904355907, 1908338681]).random()


def test_vocabulary():
    assert P.vocabulary(["The cat's hat.", "the Dog, the DOG"]) == ["cat's", "dog", "hat", "the"]
    assert P.vocabulary([]) == []


@pytest.mark.parametrize("name", NAMES)
def test_wrong_family_or_severity_is_refused(name):
    inputs = _inputs(name)
    for severity in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="severity"):
            _apply(name, inputs, severity)
    other = "image_noise" if P.MODALITY[name] != "image" else "text_typos"
    if name.startswith("missing_"):
        other = "audio_noise"
    with pytest.raises(ValueError, match="not one of"):
        _apply_as(name, other, inputs)


def _apply_as(family: str, name: str, inputs):
    """Call the function of `family`'s perturbation with another family's `name`."""
    if family.startswith("missing_"):
        return P.drop_modality(inputs, _ids(len(inputs)), 0.5, 0, name)
    if P.MODALITY[family] == "text":
        return P.perturb_texts(name, inputs, _ids(len(inputs)), 0.5, 0, VOCAB)
    if P.MODALITY[family] == "image":
        return P.perturb_images(name, inputs, _ids(len(inputs)), 0.5, 0)
    features, mask, silence = inputs
    return P.perturb_sequences(name, features, mask, _ids(len(features)), 0.5, 0, silence)
