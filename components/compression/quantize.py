"""int8 in torch (`quantize_int8`): dynamic int8 quantization of every nn.Linear (activations quantized per batch,
weights per output channel) and a weight-only 8-bit word-embedding table (per row, float scale/offset). LSTM/GRU
layers stay float: quantized, the demo model's lstm head moved from 0.72 to 1.13.

It uses `torch.ao.quantization`, which PyTorch marks deprecated in favour of torchao. torchao's int8 kernels need
torch.compile on x86 CPUs: measured in eager mode on MiniLM at batch 1, its dynamic int8 took 388 ms against 18.6 ms
in fp32, weight-only int8 25 ms, and its embedding quantization made the model 4x slower, while torch.ao's eager
kernels take 14 ms. onnx_int8 is the int8 that serves; int8 stays as the torch-only one (e.g. for CUDA builds).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from components.models import MultiTaskModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DEPRECATIONS", "known_deprecations", "quantize_int8"]

DEPRECATIONS = (  # torch.ao.quantization's own, its quantized tensors', and torch.load's on reading them back
    ".*torch.ao.quantization is deprecated",
    ".*quantized tensor creation functions .* are deprecated",
    "TypedStorage is deprecated",
)


def quantize_int8(model: MultiTaskModel) -> MultiTaskModel:
    """A copy with int8 dynamic Linear layers and an 8-bit word-embedding table; RNNs, convolutions, norms and the
    other embeddings stay float."""
    from torch.ao.quantization import float_qparams_weight_only_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig: dict = {nn.Linear: per_channel_dynamic_qconfig}
    if model.token_states is not None and model.token_states.transformer is not None:
        # The word table only (47 of MiniLM's 48 MB of embeddings): the quantized lookup needs contiguous ids, and
        # BERT's token-type ids are an expanded (strided) buffer.
        # A transformers model (`load_transformer`), typed there as a bare nn.Module.
        transformer = cast("PreTrainedModel", model.token_states.transformer)
        table = transformer.get_input_embeddings()
        qconfig |= {name: float_qparams_weight_only_qconfig for name, m in model.named_modules() if m is table}
    with known_deprecations():
        return quantize_dynamic(model, qconfig, dtype=torch.qint8).eval()


@contextmanager
def known_deprecations() -> Iterator[None]:
    """Silence the deprecation warnings of the quantized-tensor API chosen knowingly (see the module docstring)."""
    with warnings.catch_warnings():
        for message in DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message)
        yield
