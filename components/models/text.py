"""Text sub-models (BiLSTM, TextCNN, HAN, mean pooling) over one shared source of transformer token states.

All three read the same token states [B, L, E], so a fine-tuned transformer runs once per batch, and each returns
a representation [B, hidden].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.core.config import ModelParams, TextCNNParams, TextModel
from components.features.text_model import resolve_text_model
from components.models.encoders import BiLSTM, SequenceEncoder, compact, prefix_mask
from components.models.spec import TextSpec

__all__ = ["HAN", "BiLSTMText", "MeanPool", "TextCNN", "TokenStates", "text_encoder"]


def load_transformer(spec: TextSpec, pretrained: bool) -> nn.Module:
    """The transformer `spec.encoder` names (resolved on this machine by components.features.text_model), in float32.

    `pretrained=False` builds the same architecture with random weights, for when a state dict is loaded next.
    """
    from transformers import AutoConfig, AutoModel  # heavy, and only fine-tuning needs it
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its per-weight loading bar is noise beside ours, and in logs
    path = resolve_text_model(spec.encoder)
    if pretrained:
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    else:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_config(config, dtype=torch.float32)
    if model.config.hidden_size != spec.hidden_size:
        raise ValueError(
            f"text encoder {spec.encoder} has hidden_size {model.config.hidden_size}, "
            f"but the spec says {spec.hidden_size}"
        )
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # unused: parameters without gradients make DDP fail
    return model


class TokenStates(nn.Module):
    """Token states [B, L, E] for every text model: precomputed (frozen mode, in training) or from the transformer
    (fine-tuned; or `standalone`, the frozen transformer carried along so that the model runs on token ids alone)."""

    def __init__(self, spec: TextSpec, pretrained: bool = True, standalone: bool = False) -> None:
        super().__init__()
        carry = spec.mode == "finetune" or standalone
        self.transformer = load_transformer(spec, pretrained) if carry else None

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        if self.transformer is None:
            return batch["text.states"].float()
        mask = batch["text.attention_mask"].long()
        return self.transformer(input_ids=batch["text.input_ids"], attention_mask=mask).last_hidden_state


class BiLSTMText(nn.Module):
    """Bidirectional LSTM over the real tokens; the representation joins the final forward and backward states."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn = BiLSTM(in_dim, hidden)
        self.out = nn.Linear(2 * hidden, hidden)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        _, _, final = self.rnn(states, mask)
        return self.out(torch.cat((final[0], final[1]), dim=-1))


class TextCNN(nn.Module):
    """Kim (2014): parallel 1-D convolutions, ReLU, max over time, dropout, projection to `hidden`.

    Padding is zeroed and the convolutions are wide (k - 1 zeros each side), so every text, however short, has a
    window; the max runs only over windows that touch a real token.
    """

    def __init__(self, in_dim: int, hidden: int, cnn: TextCNNParams) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, cnn.feature_maps, k, padding=k - 1) for k in cnn.filter_sizes)
        self.dropout = nn.Dropout(cnn.dropout)
        self.out = nn.Linear(len(cnn.filter_sizes) * cnn.feature_maps, hidden)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        x, lengths = compact(states, mask)
        x = x.masked_fill(~prefix_mask(lengths, x.shape[1]).unsqueeze(-1), 0).transpose(1, 2)
        pooled = []
        for conv in cast("Iterable[nn.Conv1d]", self.convs):
            y = F.relu(conv(x))  # [B, F, L + k - 1]; window j covers tokens j - k + 1 .. j
            windows = prefix_mask(lengths + conv.kernel_size[0] - 1, y.shape[-1])
            pooled.append(y.masked_fill(~windows.unsqueeze(1), 0).amax(-1))  # 0 is neutral after ReLU
        return self.out(self.dropout(torch.cat(pooled, dim=-1)))


class HAN(nn.Module):
    """Yang et al. (2016): word GRU + attention per sentence, then sentence GRU + attention over non-empty ones."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.words = SequenceEncoder(in_dim, hidden)
        self.sentences = SequenceEncoder(hidden, hidden)

    def forward(self, states: Tensor, sentence_index: Tensor, sentence_mask: Tensor) -> Tensor:
        """states [B, L, E]; sentence_index, sentence_mask [B, S, W] (positions into L of each sentence's words)."""
        b, s, w = sentence_index.shape
        index = sentence_index.masked_fill(~sentence_mask, 0).reshape(b, s * w, 1).expand(-1, -1, states.shape[-1])
        words = states.gather(1, index).reshape(b * s, w, -1)
        sentences = self.words(words, sentence_mask.reshape(b * s, w)).reshape(b, s, -1)
        return self.sentences(sentences, sentence_mask.any(-1))


class MeanPool(nn.Module):
    """The mean of the real tokens' states, projected: how sentence transformers such as all-MiniLM-L6-v2 were
    trained to be read, so it starts from the encoder's own sentence embedding (plain BERT fine-tuning's readout)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.out = nn.Linear(in_dim, hidden)

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1)  # a text without tokens: zeros
        return self.out(pooled)


def text_encoder(name: TextModel, in_dim: int, params: ModelParams) -> nn.Module:
    if name == "textcnn":
        return TextCNN(in_dim, params.hidden, params.textcnn)
    if name == "mean":
        return MeanPool(in_dim, params.hidden)
    return (BiLSTMText if name == "lstm" else HAN)(in_dim, params.hidden)
