"""Encoders of the non-text modalities, and the masked-sequence building blocks every sub-model shares.

Masks mark real positions (True) and padding (False) anywhere in a sequence: `compact` moves the real positions
to the front first, so recurrent layers see packed sequences and no padding in either direction, and attention
gives padding exactly zero weight. Padding therefore cannot change any output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.models.spec import ImageSpec

__all__ = ["AdditiveAttention", "BiLSTM", "ImageCNN", "SequenceEncoder", "compact", "masked_softmax", "prefix_mask"]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim restricted to `mask`; a row without any True gets all-zero weights, not NaN."""
    scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    return scores.softmax(-1) * mask


def compact(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move the real positions of each row of `x` [N, L, ...] to the front, in order: (x, lengths [N])."""
    # Unique sort keys (padding after every real position, ties broken by position) make a plain argsort stable;
    # a stable sort has no ONNX export.
    positions = torch.arange(mask.shape[1], device=mask.device)
    order = torch.argsort((~mask).long() * mask.shape[1] + positions, dim=1)
    index = order.view(*order.shape, *(1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(1, index), mask.sum(1)


def prefix_mask(lengths: Tensor, size: int) -> Tensor:
    return torch.arange(size, device=lengths.device) < lengths.unsqueeze(-1)


class MaskedBiRNN:
    """A one-layer bidirectional batch-first RNN (mixed into nn.LSTM / nn.GRU, so weights and their names stay the
    module's) that runs over the real positions of masked rows only.

    `forward(x [N, L, D], mask [N, L])` returns the outputs [N, L, 2H] in compacted order (real positions first),
    their mask [N, L], and the final hidden states [2, N, H] (forward, backward). Each direction runs on its own:
    the forward one over the compacted rows (padding comes after every real position, so it cannot reach them), the
    backward one as a forward pass over each row's real positions reversed in place. That is what packing computes,
    in ops that export to ONNX (LSTM/GRU without sequence lengths) and run as one fused recurrence, where packed
    sequences have no export and cost a sort per call. An empty row reads its first position, as packing with
    lengths clamped to 1 does; callers mask it out. Calling the module (not a functional) keeps pruning's hooks.
    The recurrence runs in float32 even under autocast: cuDNN takes bf16 RNNs only from version 9.13, and the
    fallback kernels have no bf16 at all.
    """

    hidden_size: int  # set by the RNN it is mixed into

    def __init__(self, in_dim: int, hidden: int) -> None:
        # nn.LSTM's or nn.GRU's __init__, next in a subclass's MRO (a type checker sees object's)
        super().__init__(in_dim, hidden, batch_first=True, bidirectional=True)  # type: ignore[call-arg]

    def _recur(self, x: Tensor, h0: Tensor, weights: list[Tensor]) -> Tensor:
        """One direction's recurrence over [N, L, D] from h0 [1, N, H]: the outputs [N, L, H]."""
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, lengths = compact(x, mask)
        valid = prefix_mask(lengths, x.shape[1])
        steps = torch.arange(x.shape[1], device=x.device)
        last = (lengths - 1).clamp(min=0)
        # Position t of a row's real part takes position length-1-t; padding stays. The map is its own inverse.
        reverse = torch.where(valid, last.unsqueeze(1) - steps, steps).unsqueeze(-1)
        x = x.float()
        outputs = []
        with torch.autocast(x.device.type, enabled=False):
            for direction, inputs in (("", x), ("_reverse", x.gather(1, reverse.expand_as(x)))):
                names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                weights = [getattr(self, f"{name}_l0{direction}") for name in names]
                h0 = x.new_zeros(1, x.shape[0], self.hidden_size)
                outputs.append(self._recur(inputs, h0, weights))
        forward, backward = outputs[0], outputs[1].gather(1, reverse.expand(-1, -1, self.hidden_size))
        last_forward = forward.gather(1, last.view(-1, 1, 1).expand(-1, 1, self.hidden_size)).squeeze(1)
        return torch.cat((forward, backward), dim=-1), valid, torch.stack((last_forward, backward[:, 0]))


class BiLSTM(MaskedBiRNN, nn.LSTM):  # type: ignore[misc]  # forward(x, mask) replaces the RNN's on purpose
    def _recur(self, x: Tensor, h0: Tensor, weights: list[Tensor]) -> Tensor:
        return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, False, False, True)[0]


class BiGRU(MaskedBiRNN, nn.GRU):  # type: ignore[misc]  # forward(x, mask) replaces the RNN's on purpose
    def _recur(self, x: Tensor, h0: Tensor, weights: list[Tensor]) -> Tensor:
        return torch.gru(x, h0, weights, True, 1, 0.0, False, False, True)[0]


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
        self.rnn = BiGRU(in_dim, hidden)
        self.attention = AdditiveAttention(2 * hidden)
        self.out = nn.Linear(2 * hidden, hidden)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        states, valid, _ = self.rnn(x, mask)
        pooled, _ = self.attention(states, valid)
        return self.out(pooled)


class ImageCNN(nn.Module):
    """Small CNN over raw uint8 pixels, normalized inside so the featurized data stays compact.

    Stride-2 convolutions with GroupNorm (BatchNorm would make DDP differ from a single process) and a mean over
    space (adaptive pooling has no deterministic CUDA backward).
    """

    widths = (32, 64, 128)
    mean: Tensor  # buffers, registered in __init__
    std: Tensor

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
