"""Training-time augmentation: the missing and noisy inputs of Robust-MSA, seen while learning (`train.augment`).

`augment` returns a new batch and never writes into the one it is given, so the feature tensors training indexes
batches from stay clean. Four independent perturbations, each off at 0:

- modality dropout: each sample loses each modality it has with probability p, but never all of them (when every
  modality it has was drawn, one of them, chosen at random, stays). A lost text has no real token left
  (`text.attention_mask` and HAN's `text.sentence_mask` all False), another modality says it is absent
  (`<m>.present` False): exactly what the model reads as a missing modality (`modality_presence`).
- token dropout: each word token of a present text is masked out with probability p, at least one word (of HAN's
  grid when it has one) staying; HAN's grid follows. [CLS] and [SEP], a text's first and last real positions,
  always stay: every text the model is scored or served on has them (the tokenizer adds them to any text, however
  many of its words are lost), and a fine-tuned transformer reads [CLS] as its summary position, so dropping them
  would teach an input no evaluation shows rather than robustness to lost words.
- token replacement: each word token of a present text is replaced with probability p by a word token drawn
  uniformly from the batch's real ones (its id when the transformer is fine-tuned, its precomputed state when
  frozen): words swapped for others the data uses, as the robustness stage's word replacement does. [CLS] and [SEP]
  stay, for the reason above. It runs before token dropout, so a replaced token may then be dropped.
- feature noise s: audio/vision frames get s * N(0, 1) (they are standardized, so s is in train-std units) on real
  frames only, padding stays 0; present images get s * 255 * N(0, 1), clamped to [0, 255], as float pixels.

`share` below 1 augments only that share of the samples, drawn afresh for each batch; the others keep every
tensor as it was, so a model can learn heavy noise (30% of the words lost, say) without unlearning clean text.

Randomness comes from `generator` when given (on the batch's device), else from torch's global stream, which
training reseeds per (seed, epoch, rank), so augmented runs stay reproducible and resume exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from components.core.config import AugmentParams
from components.models.multitask import OTHER_MODALITIES
from components.models.spec import ModelSpec

__all__ = ["augment", "enabled"]


def enabled(params: AugmentParams) -> bool:
    """Whether any augmentation is on (all 0: `augment` is the identity, and training skips it)."""
    return (
        params.modality_dropout > 0
        or params.token_dropout > 0
        or params.token_replacement > 0
        or params.feature_noise > 0
    )


def augment(
    batch: dict[str, Tensor], spec: ModelSpec, params: AugmentParams, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """`batch` augmented as `params` say, in a new dict; the tensors nothing changes are the input's own."""
    out = _augmented(batch, spec, params, generator)
    if params.share < 1:
        label = batch["label"]
        chosen = _rand((label.shape[0],), label, generator) < params.share
        for key, value in out.items():
            if value is not batch[key]:
                original = batch[key].to(value.dtype)
                out[key] = torch.where(chosen.view(-1, *(1,) * (value.dim() - 1)), value, original)
    return out


def _augmented(
    batch: dict[str, Tensor], spec: ModelSpec, params: AugmentParams, generator: torch.Generator | None
) -> dict[str, Tensor]:
    out = dict(batch)
    if params.modality_dropout > 0:
        out |= _modality_dropout(out, spec, params.modality_dropout, generator)
    if params.token_replacement > 0 and spec.text is not None:
        out |= _token_replacement(out, params.token_replacement, generator)
    if params.token_dropout > 0 and spec.text is not None:
        out |= _token_dropout(out, params.token_dropout, generator)
    if params.feature_noise > 0:
        out |= _feature_noise(out, spec, params.feature_noise, generator)
    return out


def _rand(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) draws on `like`'s device."""
    return torch.rand(shape, generator=generator, device=like.device)


def _modality_dropout(
    batch: dict[str, Tensor], spec: ModelSpec, p: float, generator: torch.Generator | None
) -> dict[str, Tensor]:
    modalities = ["text"] if spec.text is not None else []
    modalities += [m for m in OTHER_MODALITIES if getattr(spec, m) is not None]
    if not modalities:
        return {}
    present = torch.stack(
        [batch["text.attention_mask"].any(-1) if m == "text" else batch[f"{m}.present"] for m in modalities],
        dim=1,
    )  # [B, M]
    drop = present & (_rand(present.shape, present, generator) < p)
    # A sample whose every modality was drawn keeps one of them, chosen at random among those it has.
    lost_all = present.any(1) & ~(present & ~drop).any(1)
    choice = _rand(present.shape, present, generator).masked_fill(~present, -1).argmax(1)
    rescued = lost_all.unsqueeze(1) & (torch.arange(len(modalities), device=present.device) == choice.unsqueeze(1))
    drop &= ~rescued
    out: dict[str, Tensor] = {}
    for i, m in enumerate(modalities):
        lost = drop[:, i]
        if m == "text":
            for key in ("text.attention_mask", "text.sentence_mask"):
                if key in batch:
                    mask = batch[key]
                    out[key] = mask & ~lost.view(-1, *(1,) * (mask.dim() - 1))
        else:
            out[f"{m}.present"] = batch[f"{m}.present"] & ~lost
    return out


def _specials(mask: Tensor) -> Tensor:
    """[B, L]: the [CLS] and [SEP] of each text with tokens, its first and last real positions."""
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device)
    first = torch.where(mask, positions, length).amin(1, keepdim=True)
    last = torch.where(mask, positions, -1).amax(1, keepdim=True)
    return mask.any(1, keepdim=True) & ((positions == first) | (positions == last))


def _token_replacement(batch: dict[str, Tensor], p: float, generator: torch.Generator | None) -> dict[str, Tensor]:
    mask = batch["text.attention_mask"]  # [B, L]
    words = mask & ~_specials(mask)
    pool = words.flatten().nonzero().squeeze(1)  # flat positions of the batch's real words
    if not len(pool):
        return {}
    replaced = words & (_rand(mask.shape, mask, generator) < p)
    drawn = pool[(_rand(mask.shape, mask, generator) * len(pool)).long().clamp(max=len(pool) - 1)]  # [B, L]
    out: dict[str, Tensor] = {}
    for key in ("text.input_ids", "text.states"):  # whichever the model reads
        if key in batch:
            x = batch[key]
            substitutes = x.flatten(0, 1)[drawn.flatten()].view_as(x)
            out[key] = torch.where(replaced.view(*replaced.shape, *(1,) * (x.dim() - 2)), substitutes, x)
    return out


def _token_dropout(batch: dict[str, Tensor], p: float, generator: torch.Generator | None) -> dict[str, Tensor]:
    mask = batch["text.attention_mask"]  # [B, L]
    b, length = mask.shape
    positions = torch.arange(length, device=mask.device)
    special = _specials(mask)
    words = mask & ~special
    keep = special | (words & (_rand((b, length), mask, generator) >= p))
    # A text whose every word was drawn keeps one, at random, preferring words HAN's grid holds.
    preferred = words
    if "text.sentence_index" in batch:
        index, slots = batch["text.sentence_index"].flatten(1), batch["text.sentence_mask"].flatten(1)
        in_grid = ((index.unsqueeze(-1) == positions) & slots.unsqueeze(-1)).any(1)  # [B, L]
        held = words & in_grid
        preferred = torch.where(held.any(1, keepdim=True), held, words)
    no_word_kept = words.any(1) & ~(keep & words).any(1)
    choice = _rand((b, length), mask, generator).masked_fill(~preferred, -1).argmax(1)
    keep |= no_word_kept.unsqueeze(1) & (positions == choice.unsqueeze(1))
    out = {"text.attention_mask": keep}
    if "text.sentence_mask" in batch:
        index, slots = batch["text.sentence_index"], batch["text.sentence_mask"]
        out["text.sentence_mask"] = slots & keep.gather(1, index.flatten(1)).view(slots.shape)
    return out


def _feature_noise(
    batch: dict[str, Tensor], spec: ModelSpec, s: float, generator: torch.Generator | None
) -> dict[str, Tensor]:
    out = {}
    for m in ("audio", "vision"):
        if getattr(spec, m) is None:
            continue
        features, mask = batch[f"{m}.features"], batch[f"{m}.mask"]
        noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
        out[f"{m}.features"] = features + s * noise * mask.unsqueeze(-1)
    if spec.image is not None:
        pixels, present = batch["image.pixels"], batch["image.present"]
        noise = torch.randn(pixels.shape, generator=generator, device=pixels.device)
        noisy = (pixels.float() + s * 255 * noise).clamp(0, 255)
        out["image.pixels"] = torch.where(present.view(-1, 1, 1, 1), noisy, pixels.float())
    return out
