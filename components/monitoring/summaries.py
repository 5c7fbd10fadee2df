"""Per-row summaries of what the model reads, the inputs of the drift tests.

They are made from the model's prepared input batches (`Predictor.prepare_frame`), so the reference registration
packages and every scored batch are summarized by the same code from the same tensors:

- text: the counts of each word piece of the model's own tokenizer (its special tokens left out), sparse; the
  drift test weighs them by their inverse document frequencies;
- image: each channel's mean and spread over the fitted pixels (brightness, colour, contrast);
- audio and vision: each feature's mean over the row's frames (standardized with the train split's statistics, as
  the model reads them), and the log of the frame count;
- every modality: whether the row has it.

A summary keeps no text and no pixels: the package holds the counts of word pieces and a few numbers per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from components.data.dataset import SEQUENCE_MODALITIES

__all__ = ["MODALITIES", "Summaries", "summarize"]

MODALITIES = ("text", "image", *SEQUENCE_MODALITIES)


@dataclass
class Summaries:
    """Rows' summaries: `text` word-piece counts [rows, vocabulary] (None without text), `stats` per other modality
    [rows, features] (zeros where a row lacks it), `present` per modality [rows]."""

    rows: int
    text: sparse.csr_matrix | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.present]

    def take(self, rows: np.ndarray) -> Summaries:
        """These rows, in this order."""
        return Summaries(
            len(rows),
            None if self.text is None else self.text[rows],
            {m: s[rows] for m, s in self.stats.items()},
            {m: p[rows] for m, p in self.present.items()},
        )

    @staticmethod
    def concat(parts: Iterable[Summaries]) -> Summaries:
        parts = [p for p in parts if p.rows]
        if not parts:
            return Summaries(0)
        first = parts[0]
        text = None if first.text is None else sparse.vstack([p.text for p in parts], format="csr")
        return Summaries(
            sum(p.rows for p in parts),
            text,
            {m: np.concatenate([p.stats[m] for p in parts]) for m in first.stats},
            {m: np.concatenate([p.present[m] for p in parts]) for m in first.present},
        )


def summarize(batches: Iterable[Mapping[str, np.ndarray]], vocabulary: int, special_ids: Iterable[int]) -> Summaries:
    """The summaries of prepared batches' rows, in order; `vocabulary` and `special_ids` are the tokenizer's."""
    special = np.fromiter(special_ids, dtype=np.int64)
    return Summaries.concat(_summarize(batch, vocabulary, special) for batch in batches)


def _summarize(batch: Mapping[str, np.ndarray], vocabulary: int, special: np.ndarray) -> Summaries:
    rows = len(next(iter(batch.values())))
    out = Summaries(rows)
    if "text.input_ids" in batch:
        ids, mask = batch["text.input_ids"].astype(np.int64), batch["text.attention_mask"].astype(bool)
        keep = mask & ~np.isin(ids, special) & (ids >= 0) & (ids < vocabulary)
        row_of = np.broadcast_to(np.arange(rows)[:, None], ids.shape)[keep]
        counts = sparse.csr_matrix(
            (np.ones(len(row_of), np.float32), (row_of, ids[keep])), shape=(rows, vocabulary), dtype=np.float32
        )
        counts.sum_duplicates()
        out.text, out.present["text"] = counts, np.diff(counts.indptr) > 0
    if "image.pixels" in batch:
        pixels = batch["image.pixels"].astype(np.float32) / 255.0  # [rows, 3, size, size]
        flat = pixels.reshape(rows, pixels.shape[1], -1)
        out.stats["image"] = np.concatenate([flat.mean(2), flat.std(2)], axis=1)
        out.present["image"] = batch["image.present"].astype(bool)
    for modality in SEQUENCE_MODALITIES:
        if f"{modality}.features" in batch:
            frames, mask = batch[f"{modality}.features"].astype(np.float32), batch[f"{modality}.mask"].astype(bool)
            count = mask.sum(1)
            mean = (frames * mask[..., None]).sum(1) / np.maximum(count, 1)[:, None]
            # float32 as the reference stores them: a float64 copy of the same number would sort apart from it
            out.stats[modality] = np.concatenate([mean, np.log1p(count)[:, None]], axis=1).astype(np.float32)
            out.present[modality] = count > 0
    return out
