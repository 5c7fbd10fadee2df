"""The trained model: the sub-models a spec asks for, an optional fusion, and one prediction layer per head."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from components.data.dataset import SEQUENCE_MODALITIES
from components.models.encoders import ImageCNN, SequenceEncoder
from components.models.fusion import TEXT_MODELS, HierarchicalFusion
from components.models.spec import ModelSpec
from components.models.text import TokenStates, text_encoder

__all__ = ["OTHER_MODALITIES", "MultiTaskModel", "check_spec", "modality_presence", "presence"]

OTHER_MODALITIES = ("image", *SEQUENCE_MODALITIES)


def check_spec(spec: ModelSpec) -> None:
    """Reject a spec the model cannot honour, naming the fix, before any weights are built.

    Besides heads without an encoder, an encoder that feeds no head is rejected: its parameters would never get a
    gradient, which wastes memory and makes DDP fail.
    """
    heads, encoders = spec.heads, spec.encoders
    if not heads:
        raise ValueError("spec.heads is empty: name at least one head")
    for name, names in (("spec.heads", heads), ("spec.text.models", spec.text.models if spec.text else ())):
        if len(set(names)) != len(names):
            raise ValueError(f"{name} repeats a name: {names}")
    if spec.text is not None and not spec.text.models:
        raise ValueError("spec.text is set but spec.text.models is empty: name a text model or drop spec.text")
    for head in heads:
        if head != "fusion" and head not in encoders:
            raise ValueError(f"head {head!r} has no encoder: {_missing(spec, head)}")
    if "fusion" in heads and not encoders:
        raise ValueError("head 'fusion' has no encoder to fuse: the spec declares no modality")
    if "fusion" not in heads and (idle := [e for e in encoders if e not in heads]):
        raise ValueError(f"encoders {idle} feed no head: add them (or 'fusion') to spec.heads, or drop them")
    if spec.label.kind == "classification" and len(spec.label.classes) < 2:
        raise ValueError(f"classification needs at least 2 classes, got {spec.label.classes}")


def _missing(spec: ModelSpec, head: str) -> str:
    if head not in TEXT_MODELS:
        return f"spec.{head} is not set"
    if spec.text is None:
        return "spec.text is not set"
    return f"{head!r} is not in spec.text.models {spec.text.models}"


def modality_presence(spec: ModelSpec, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Modality -> bool [B]: a text is present when it has a token, other modalities say so themselves."""
    present = {"text": batch["text.attention_mask"].any(-1)} if spec.text is not None else {}
    present |= {m: batch[f"{m}.present"].bool() for m in OTHER_MODALITIES if getattr(spec, m) is not None}
    return present


def presence(spec: ModelSpec, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Head -> bool [B]: which samples a head can be scored on (fusion: any modality present)."""
    modalities = modality_presence(spec, batch)
    present: dict[str, Tensor] = {}
    for head in spec.heads:
        if head == "fusion":
            present[head] = torch.stack(list(modalities.values())).any(0)
        else:
            present[head] = modalities["text" if head in TEXT_MODELS else head]
    return present


def prediction_layer(hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, outputs)
    )


class MultiTaskModel(nn.Module):
    """Builds only what `spec` names; `pretrained=False` skips loading the transformer's weights (a state dict
    follows). `standalone=True` carries a frozen transformer inside too, so the model needs token ids but no
    precomputed states: the form that is compressed and served. `forward` returns, per head, scores [B]
    (regression) or logits [B, classes] (classification)."""

    def __init__(self, spec: ModelSpec, pretrained: bool = True, standalone: bool = False) -> None:
        super().__init__()
        check_spec(spec)
        self.spec = spec
        hidden = spec.params.hidden
        self.token_states = TokenStates(spec.text, pretrained, standalone) if spec.text is not None else None
        encoders: dict[str, nn.Module] = {}
        if spec.text is not None:
            encoders |= {m: text_encoder(m, spec.text.hidden_size, spec.params) for m in spec.text.models}
        if spec.image is not None:
            encoders["image"] = ImageCNN(spec.image, hidden)
        for m in SEQUENCE_MODALITIES:
            if (sequence := getattr(spec, m)) is not None:
                encoders[m] = SequenceEncoder(sequence.dim, hidden)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = HierarchicalFusion(spec.encoders, hidden) if "fusion" in spec.heads else None
        outputs, dropout = spec.label.outputs, spec.params.dropout
        self.heads = nn.ModuleDict({h: prediction_layer(hidden, outputs, dropout) for h in spec.heads})

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.heads_from(self.represent(batch), batch)

    def heads_from(self, representations: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fusion and every head's prediction from the encoders' representations (`batch` gives the presence)."""
        representations = dict(representations)
        if self.fusion is not None:
            representations["fusion"] = self.fusion(representations, self.modality_presence(batch))
        outputs = {head: layer(representations[head]) for head, layer in self.heads.items()}
        if self.spec.label.kind == "regression":
            outputs = {head: out.squeeze(-1) for head, out in outputs.items()}
        return outputs

    def represent(self, batch: Mapping[str, Tensor], modalities: Collection[str] | None = None) -> dict[str, Tensor]:
        """Encoder name -> representation [B, hidden], of the encoders of `modalities` (None: all).

        What a perturbation of one modality changes: robustness reruns only its encoders.
        """
        out: dict[str, Tensor] = {}
        text = self.spec.text  # present exactly when token_states is
        if text is not None and self.token_states is not None and (modalities is None or "text" in modalities):
            states, mask = self.token_states(batch), batch["text.attention_mask"]
            for model in text.models:
                if model == "han":
                    out[model] = self.encoders[model](states, batch["text.sentence_index"], batch["text.sentence_mask"])
                else:
                    out[model] = self.encoders[model](states, mask)
        if "image" in self.encoders and (modalities is None or "image" in modalities):
            out["image"] = self.encoders["image"](batch["image.pixels"])
        for m in SEQUENCE_MODALITIES:
            if m in self.encoders and (modalities is None or m in modalities):
                out[m] = self.encoders[m](batch[f"{m}.features"], batch[f"{m}.mask"])
        return out

    def modality_presence(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return modality_presence(self.spec, batch)

    def presence(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return presence(self.spec, batch)

    def transformer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the fine-tuned transformer (none when frozen): they train with their own learning rate."""
        return [p for _, p in self.transformer_named_parameters()]

    def transformer_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name inside the transformer, parameter): the names tell each parameter's layer (layer-wise decay)."""
        if self.token_states is None or self.token_states.transformer is None:
            return []
        return list(self.token_states.transformer.named_parameters())
