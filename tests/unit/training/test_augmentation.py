"""Training-time augmentation (components.training.augmentation): what each perturbation changes, what it never
does, and that training applies it to its batches only when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from components.core.config import AugmentParams, FeaturizeParams, ModelParams, TrainParams
from components.features.featurize import featurize
from components.models.multitask import modality_presence
from components.models.store import CHECKPOINT
from components.training.augmentation import augment, enabled
from components.training.train import resume_point, train
from tests.unit.models.test_models import make_batch, make_spec

EVERYTHING = AugmentParams(modality_dropout=0.5, token_dropout=0.5, feature_noise=0.5)


def tiled(copies: int = 16) -> dict[str, Tensor]:
    """`make_batch` (4 samples: texts of 10/5/2/1 words, sequences of 7/3/1/0 frames) repeated `copies` times."""
    batch = make_batch()
    return {k: v.repeat(copies, *(1,) * (v.dim() - 1)) for k, v in batch.items()}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def words(mask: Tensor) -> Tensor:
    """The real positions of each row but its first and last ([CLS] and [SEP])."""
    positions = torch.arange(mask.shape[1])
    first = torch.where(mask, positions, mask.shape[1]).amin(1, keepdim=True)
    last = torch.where(mask, positions, -1).amax(1, keepdim=True)
    return mask & (positions != first) & (positions != last)


def test_all_zero_is_the_identity():
    batch, spec = make_batch(), make_spec()
    out = augment(batch, spec, AugmentParams())
    assert not enabled(AugmentParams())
    assert out is not batch and out.keys() == batch.keys()
    assert all(out[k] is batch[k] for k in batch)


@pytest.mark.parametrize(
    "params",
    [
        AugmentParams(modality_dropout=0.5),
        AugmentParams(token_dropout=0.5),
        AugmentParams(feature_noise=0.5),
        EVERYTHING,
    ],
    ids=["modality", "token", "noise", "all"],
)
def test_inputs_are_never_mutated_and_untouched_tensors_are_shared(params):
    batch, spec = tiled(), make_spec()
    before = {k: v.clone() for k, v in batch.items()}
    out = augment(batch, spec, params, seeded())
    assert enabled(params)
    for key, value in batch.items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    changed = {k for k in batch if out[k] is not batch[k]}
    assert changed and all(not torch.equal(out[k].to(batch[k].dtype), batch[k]) for k in changed)
    assert {"label", "text.input_ids", "text.states", "text.sentence_index"}.isdisjoint(changed)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_modality_dropout_drops_some_but_never_every_modality_of_a_sample(p):
    batch, spec = tiled(), make_spec()
    before = modality_presence(spec, batch)
    generator = seeded()
    for _ in range(5):
        out = augment(batch, spec, AugmentParams(modality_dropout=p), generator)
        after = modality_presence(spec, out)
        kept = torch.stack(list(after.values()), 1)
        assert kept.any(1).all(), "a sample lost every modality"
        for m in before:
            assert not (after[m] & ~before[m]).any(), f"{m} appeared where it was absent"
            assert (before[m] & ~after[m]).any(), f"no sample lost {m}"
        lost_text = ~after["text"]
        assert not out["text.sentence_mask"][lost_text].any(), "HAN still sees a dropped text"
        assert torch.equal(out["text.sentence_mask"][~lost_text], batch["text.sentence_mask"][~lost_text])
        assert out["audio.features"] is batch["audio.features"]  # absence is said by `present`, not by the frames
    if p == 0.99:  # nearly every draw drops: the rescued modality is spread over the ones a sample has
        assert all(after[m].any() for m in after)


def test_modality_dropout_touches_only_the_spec_modalities_and_keeps_a_lone_one():
    spec, batch = (
        make_spec(heads=("lstm", "audio", "fusion"), text_models=("lstm",), image=False, sequences=("audio",)),
        tiled(),
    )
    out = augment(batch, spec, AugmentParams(modality_dropout=0.99), seeded())
    for key in ("image.present", "vision.present"):
        assert out[key] is batch[key]
    # Every fourth sample has no audio: its text, drawn or not, is all it has and stays.
    assert torch.equal(out["text.attention_mask"][3::4], batch["text.attention_mask"][3::4])
    assert not out["audio.present"][3::4].any()


def test_token_dropout_keeps_cls_sep_and_a_word_and_han_follows():
    batch, spec = tiled(), make_spec()
    batch["text.attention_mask"][2::4] = False  # every fourth sample but one has no text: it stays without
    batch["text.sentence_mask"][2::4] = False
    out = augment(batch, spec, AugmentParams(token_dropout=0.9), seeded())
    mask, kept = batch["text.attention_mask"], out["text.attention_mask"]
    assert kept.dtype == torch.bool and not (kept & ~mask).any()
    assert not kept[2::4].any()
    present = mask.any(1)
    had_words, kept_words = words(mask), kept & words(mask)
    assert torch.equal(kept & ~had_words, mask & ~had_words), "[CLS]/[SEP] were dropped"
    assert kept_words[had_words.any(1)].any(1).all(), "a text lost every word"
    assert kept_words.sum() < had_words.sum() / 2, "p 0.9 dropped too few words"
    assert kept[present].any(1).all()
    index, slots = batch["text.sentence_index"], batch["text.sentence_mask"]
    grid = out["text.sentence_mask"]
    assert torch.equal(grid, slots & kept.gather(1, index.flatten(1)).view(slots.shape))
    assert not (grid & ~slots).any()
    assert grid.flatten(1)[slots.flatten(1).any(1)].any(1).all(), "HAN lost every word of a text"


def test_token_dropout_at_a_low_rate_drops_few():
    batch, spec = tiled(64), make_spec()
    kept = augment(batch, spec, AugmentParams(token_dropout=0.1), seeded())["text.attention_mask"]
    had = words(batch["text.attention_mask"])
    share = 1 - (kept & had).sum() / had.sum()
    assert 0.05 < share < 0.15


def test_token_replacement_swaps_words_for_the_batchs_own_and_keeps_cls_sep_and_the_input():
    batch, spec = tiled(64), make_spec()
    before = {k: v.clone() for k, v in batch.items()}
    out = augment(batch, spec, AugmentParams(token_replacement=0.3), seeded())
    assert all(torch.equal(batch[k], before[k]) for k in batch), "the input batch was written into"
    assert {k for k in batch if out[k] is not batch[k]} == {"text.input_ids", "text.states"}
    mask = batch["text.attention_mask"]
    ids, new_ids = batch["text.input_ids"], out["text.input_ids"]
    states, new_states = batch["text.states"], out["text.states"]
    moved = (new_states != states).any(-1)
    assert not (moved & ~words(mask)).any(), "padding, [CLS] or [SEP] was replaced"
    assert torch.equal(new_ids[~words(mask)], ids[~words(mask)])
    # Each position takes one drawn token whole: its id and its state come from the same place in the batch.
    pool = {(int(i), tuple(s.tolist())) for i, s in zip(ids[words(mask)], states[words(mask)], strict=True)}
    assert all((int(i), tuple(s.tolist())) in pool for i, s in zip(new_ids[moved], new_states[moved], strict=True))
    share = moved.sum() / words(mask).sum()
    assert 0.2 < share < 0.35  # 0.3, less the draws that picked a token equal to the one they replace


def test_a_share_augments_that_share_of_the_samples_and_leaves_the_rest_whole():
    batch, spec = tiled(64), make_spec()

    def touched(share: float) -> float:
        out = augment(batch, spec, EVERYTHING.model_copy(update={"share": share}), seeded())
        changed = torch.zeros(len(batch["label"]), dtype=torch.bool)
        for key, value in out.items():
            changed |= (value.to(batch[key].dtype) != batch[key]).reshape(len(changed), -1).any(1)
        return changed.float().mean().item()

    everything, half = touched(1.0), touched(0.5)
    assert everything > 0.9
    assert 0.4 * everything < half < 0.6 * everything


def test_token_replacement_without_words_changes_nothing():
    batch, spec = make_batch(), make_spec()
    batch["text.attention_mask"][:, 2:] = False  # [CLS] and [SEP] only
    out = augment(batch, spec, AugmentParams(token_replacement=0.9), seeded())
    assert out["text.input_ids"] is batch["text.input_ids"]


def test_feature_noise_leaves_padding_at_zero_and_moves_real_frames():
    batch, spec = tiled(64), make_spec()
    batch["image.present"][1::4] = False
    out = augment(batch, spec, AugmentParams(feature_noise=0.5), seeded())
    for m in ("audio", "vision"):
        before, after, mask = batch[f"{m}.features"], out[f"{m}.features"], batch[f"{m}.mask"]
        assert after.dtype == before.dtype and out[f"{m}.mask"] is mask
        assert (after[~mask] == 0).all(), f"{m} padding got noise"
        delta = (after - before)[mask]
        assert (delta != 0).all()
        assert delta.std().item() == pytest.approx(0.5, rel=0.1)
    pixels = out["image.pixels"]
    assert pixels.is_floating_point() and pixels.min() >= 0 and pixels.max() <= 255
    present = batch["image.present"]
    assert torch.equal(pixels[~present], batch["image.pixels"][~present].float())
    delta = pixels[present] - batch["image.pixels"][present].float()
    assert (delta != 0).float().mean() > 0.9
    # Pixel noise is in 255ths: measured where clamping at 0 or 255 cannot reach (5 std away from either end).
    small = augment(batch, spec, AugmentParams(feature_noise=0.05), seeded())["image.pixels"]
    middle = (batch["image.pixels"] > 64) & (batch["image.pixels"] < 191) & present.view(-1, 1, 1, 1)
    noise = (small - batch["image.pixels"].float())[middle]
    assert noise.std().item() == pytest.approx(0.05 * 255, rel=0.1)


def test_seeded_generator_and_global_stream_are_reproducible():
    batch, spec = tiled(), make_spec()
    a, b = (augment(batch, spec, EVERYTHING, seeded(7)) for _ in range(2))
    other = augment(batch, spec, EVERYTHING, seeded(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a)
    torch.manual_seed(3)
    c = augment(batch, spec, EVERYTHING)
    torch.manual_seed(3)
    d = augment(batch, spec, EVERYTHING)
    assert all(torch.equal(c[k], d[k]) for k in c)


def test_training_with_augmentation_differs_resumes_exactly_and_never_continues_a_plain_checkpoint(
    make_dataset, tiny_text_model, tmp_path
):
    features = featurize(
        make_dataset(),
        FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), image_size=8),
        progress=False,
    ).out
    quiet = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})  # draws no randomness

    def run(name: str, augment: AugmentParams, epochs: int, resume: bool | None = None) -> dict[str, np.ndarray]:
        params = TrainParams(out=tmp_path / name, epochs=epochs, batch_size=2, augment=augment)
        train(features, quiet, params, resume=resume, progress=False)
        saved = torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["model"]  # the last epoch's weights
        return {k: v.numpy() for k, v in saved.items()}

    plain, augmented = run("plain", AugmentParams(), 1), run("resumed", EVERYTHING, 1)
    assert plain.keys() == augmented.keys()
    assert all(np.isfinite(v).all() for v in augmented.values())
    assert any(not np.array_equal(plain[k], augmented[k]) for k in plain), "augmentation changed nothing"
    # Augmentation draws from the stream training reseeds every epoch: a resumed run ends where a straight one does.
    straight, resumed = run("straight", EVERYTHING, 2), run("resumed", EVERYTHING, 2, resume=True)
    assert any(not np.array_equal(straight[k], augmented[k]) for k in straight)
    assert all(np.array_equal(straight[k], resumed[k]) for k in straight), "augmented training does not resume exactly"
    # The plain run's checkpoint is continued by the same settings, never by augmented ones.
    same = TrainParams(out=tmp_path / "plain", epochs=1, batch_size=2)
    assert resume_point(features, quiet, same) == 1
    assert resume_point(features, quiet, same.model_copy(update={"augment": EVERYTHING})) is None
