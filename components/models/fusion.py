"""Hierarchical attention fusion: the HAN idea lifted from words and sentences to sub-models and modalities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from components.core.config import TEXT_MODELS
from components.models.encoders import AdditiveAttention

__all__ = ["TEXT_MODELS", "HierarchicalFusion"]


class HierarchicalFusion(nn.Module):
    """Level 1 attends over the text sub-models to one text vector; level 2 attends over the modality vectors.

    An absent modality is masked at level 2: it gets exactly zero weight and its vector is never read, so whatever
    its encoder produced cannot reach the fused output. The weights of the last call are kept in `last_weights`
    (detached) for inspection: "text" [B, text models] and "modality" [B, modalities].
    """

    def __init__(self, encoders: Sequence[str], hidden: int) -> None:
        super().__init__()
        self.text_models = tuple(e for e in encoders if e in TEXT_MODELS)
        others = tuple(e for e in encoders if e not in TEXT_MODELS)
        self.modalities = ("text", *others) if self.text_models else others
        if not self.modalities:
            raise ValueError("fusion needs at least one encoder")
        self.text_attention = AdditiveAttention(hidden) if self.text_models else None
        self.modality_attention = AdditiveAttention(hidden)
        self.last_weights: dict[str, Tensor] = {}

    def forward(self, representations: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """representations: encoder name -> [B, hidden]; present: modality name -> bool [B]. Returns [B, hidden]."""
        vectors = dict(representations)
        weights: dict[str, Tensor] = {}
        if self.text_attention is not None:
            text = torch.stack([vectors[m] for m in self.text_models], dim=1)
            text_mask = present["text"].unsqueeze(1).expand(-1, len(self.text_models))
            vectors["text"], weights["text"] = self.text_attention(text, text_mask)
        stacked = torch.stack([vectors[m] for m in self.modalities], dim=1)
        mask = torch.stack([present[m] for m in self.modalities], dim=1)
        fused, weights["modality"] = self.modality_attention(stacked, mask)
        self.last_weights = {k: w.detach() for k, w in weights.items()}
        return fused
