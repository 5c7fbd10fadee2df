"""Explanations on request: why the served model scored a row as it did, measured on the served model itself.

A row that asks (its `explain` column true) gets two more output columns:

- `modality_shares`: each modality's share of the fused score, measured by taking it away. The row is scored again
  once per modality it has, that modality marked absent (as the fusion's attention masks a missing modality: zero
  weight, never read); a modality's share is how far the score moves without it, over the sum of those moves.
- `top_words`: the words that moved the text heads most, each with its effect: the text heads' mean score minus
  their mean score with that word left out (positive: the word pushed the score up). For a classifier, the score
  is the probability of the class the model chose.

Occlusion, not attention weights or gradients: it needs nothing but the served model's outputs, so it works for
every variant that is served (an ONNX int8 graph has neither the torch model's attention nor its gradients), and
it says what the score would have been, which an attention weight does not. Its cost is bounded before any work:
one extra row per modality and one per word tried, at most `serve.explain_words` words (the first ones), all in
one batch; the server explains at most `serve.max_explain_rows` rows per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from components.core.config import TEXT_MODELS

if TYPE_CHECKING:
    from components.serving.predictor import Predictor

__all__ = ["EXPLAIN", "OUTPUTS", "TOP_WORDS", "explain_row"]

EXPLAIN = "explain"  # the input column a row asks with (light to import: the signature and the registry read it)
OUTPUTS = ("modality_shares", "top_words")
TOP_WORDS = 5


def explain_row(predictor: Predictor, base: Mapping[str, np.ndarray], text: str | None) -> dict[str, Any]:
    """The explanation of one row: `base` is its prepared input (a batch of one, `Predictor.features`), `text` its
    text (None without one)."""
    from components.features.contract import encode_texts
    from components.models.store import trim_padding

    limits = predictor.limits
    modalities = [m for m in predictor.modalities if _present(base, m)]
    words = text.split() if text else []
    tried = range(min(len(words), limits.explain_words)) if len(words) > 1 else range(0)
    rows = 1 + len(modalities) + len(tried)
    batch = {k: np.repeat(v, rows, axis=0) for k, v in base.items() if not k.startswith("text.")}
    if predictor.spec.text is not None and text is not None:
        state = predictor.state.text
        assert state is not None and predictor.tokenizer is not None  # a model that reads text has both
        variants = [text] * (1 + len(modalities)) + [" ".join(words[:j] + words[j + 1 :]) for j in tried]
        batch |= encode_texts(predictor.tokenizer, variants, state)
    for i, modality in enumerate(modalities, start=1):
        _remove(batch, modality, i)
    scores = _scores(predictor, predictor.outputs(trim_padding(batch)))
    served = scores[predictor.head]
    moves = {m: abs(float(served[0] - served[i])) for i, m in enumerate(modalities, start=1)}
    total = sum(moves.values())
    shares = {m: (move / total if total > 0 else 1 / len(moves)) for m, move in moves.items()}
    text_heads = [h for h in scores if h in TEXT_MODELS]
    effects: list[tuple[str, float]] = []
    if text_heads and len(tried):
        mean = np.mean([scores[h] for h in text_heads], axis=0)
        offset = 1 + len(modalities)
        effects = [(words[j], float(mean[0] - mean[offset + j])) for j in tried]
    top = sorted(effects, key=lambda e: -abs(e[1]))[:TOP_WORDS]
    return {
        "modality_shares": {m: round(s, 4) for m, s in shares.items()},
        "top_words": [{"word": w, "effect": round(e, 4)} for w, e in top],
    }


def _present(batch: Mapping[str, np.ndarray], modality: str) -> bool:
    if modality == "text":
        return bool(batch["text.attention_mask"].any())
    return bool(batch[f"{modality}.present"].any())


def _remove(batch: dict[str, np.ndarray], modality: str, row: int) -> None:
    """Row `row` of `batch` without `modality`, as a row that never had it is fed."""
    if modality == "text":
        batch["text.attention_mask"][row] = False
        batch["text.sentence_mask"][row] = False
        return
    batch[f"{modality}.present"][row] = False
    if modality == "image":
        batch["image.pixels"][row] = 0
    else:
        batch[f"{modality}.features"][row] = 0
        batch[f"{modality}.mask"][row] = False


def _scores(predictor: Predictor, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each head's score per row: regression as is; a classifier's probability of the class the served head chose
    for the unchanged row (row 0)."""

    if predictor.spec.label.kind == "regression":
        return {h: o.astype(np.float64) for h, o in outputs.items()}
    chosen = int(outputs[predictor.head][0].argmax())
    out = {}
    for head, logits in outputs.items():
        shifted = logits - logits.max(1, keepdims=True)
        out[head] = (np.exp(shifted[:, chosen]) / np.exp(shifted).sum(1)).astype(np.float64)
    return out
