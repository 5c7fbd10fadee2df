"""Encoders of the non-text modalities, and the masked-sequence building blocks every sub-model shares.

Masks mark real positions (True) and padding (False) anywhere in a sequence: `compact` moves the real positions
to the front first, so recurrent layers see packed sequences and no padding in either direction, and attention
gives padding exactly zero weight. Padding therefore cannot change any output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from components.models.spec import ImageSpec


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim restricted to `mask`; a row without any True gets all-zero weights, not NaN."""
    scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    return scores.softmax(-1) * mask


def compact(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move the real positions of each row of `x` [N, L, ...] to the front, in order: (x, lengths [N])."""
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    index = order.view(*order.shape, *(1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(1, index), mask.sum(1)


def prefix_mask(lengths: Tensor, size: int) -> Tensor:
    return torch.arange(size, device=lengths.device) < lengths.unsqueeze(-1)


def run_packed(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor | tuple[Tensor, Tensor]]:
    """Run a batch-first RNN over the real positions only: (outputs [N, L, D], their mask [N, L], final state).

    Outputs are in compacted order (real positions first). Lengths are clamped to 1 because packing rejects empty
    sequences: an empty row yields a finite state that callers mask out. PyTorch wants the lengths on the CPU.
    The recurrence runs in the RNN's own dtype even under autocast: cuDNN takes bf16 RNNs only from version 9.13,
    and the fallback kernels have no bf16 at all. A dynamically quantized RNN has no float weights; it takes float32.
    """
    x, lengths = compact(x, mask)
    x = x.to(getattr(rnn, "weight_ih_l0", torch.empty(0)).dtype)
    packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    with torch.autocast(x.device.type, enabled=False):
        out, state = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, prefix_mask(lengths, x.shape[1]), state


class AdditiveAttention(nn.Module):
    """Attention pooling of Yang et al. (2016): u = tanh(W h + b), weights = masked softmax(u . c), c learned."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.context = nn.Linear(dim, 1, bias=False)

    def forward(self, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """values [N, M, D], mask [N, M] -> (pooled [N, D], weights [N, M]); masked values cannot leak in."""
        weights = masked_softmax(self.context(torch.tanh(self.proj(values))).squeeze(-1), mask)
        values = values.masked_fill(~mask.unsqueeze(-1), 0)
        return (weights.unsqueeze(-1) * values).sum(1), weights


class SequenceEncoder(nn.Module):
    """Bidirectional GRU over the real frames, attention-pooled and projected: [N, L, in_dim] -> [N, hidden]."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(in_dim, hidden, batch_first=True, bidirectional=True)
        self.attention = AdditiveAttention(2 * hidden)
        self.out = nn.Linear(2 * hidden, hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        states, valid, _ = run_packed(self.rnn, x, mask)
        pooled, _ = self.attention(states, valid)
        return self.out(pooled)


class ImageCNN(nn.Module):
    """Small CNN over raw uint8 pixels, normalized inside so the featurized data stays compact.

    Stride-2 convolutions with GroupNorm (BatchNorm would make DDP differ from a single process) and a mean over
    space (adaptive pooling has no deterministic CUDA backward).
    """

    widths = (32, 64, 128)

    def __init__(self, spec: ImageSpec, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((3, *self.widths[:-1]), self.widths, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(self.widths[-1], hidden)

    def forward(self, pixels: Tensor) -> Tensor:
        x = (pixels.float() / 255 - self.mean) / self.std
        return self.out(self.features(x).mean(dim=(2, 3)))
