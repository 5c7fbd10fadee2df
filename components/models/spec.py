"""What a trained model is: everything needed to rebuild it before loading its weights.

The spec is saved beside the weights (`model.json` in `train.out`) and inside every checkpoint, so a resumed run can
refuse a checkpoint written for a different architecture instead of failing deep inside `load_state_dict`.
"""

from __future__ import annotations

from typing import Literal

from components.core.config import Head, ModelParams, Section, TextModel
from components.data.dataset import SEQUENCE_MODALITIES

__all__ = ["ImageSpec", "LabelSpec", "ModelSpec", "SequenceSpec", "TextSpec"]


class LabelSpec(Section):
    kind: Literal["regression", "classification"]
    classes: tuple[str, ...] = ()

    @property
    def outputs(self) -> int:
        """Width of each head's output: 1 score, or one logit per class."""
        return 1 if self.kind == "regression" else len(self.classes)


class TextSpec(Section):
    mode: Literal["frozen", "finetune"]
    encoder: str  # the text model's name as configured (components.features.text_model resolves it where it loads)
    hidden_size: int  # width of the token states
    models: tuple[TextModel, ...]


class ImageSpec(Section):
    size: int
    mean: tuple[float, float, float]  # per-channel statistics of the train split, on pixels scaled to [0, 1]
    std: tuple[float, float, float]


class SequenceSpec(Section):
    dim: int
    max_len: int


class ModelSpec(Section):
    label: LabelSpec
    text: TextSpec | None = None
    image: ImageSpec | None = None
    audio: SequenceSpec | None = None
    vision: SequenceSpec | None = None
    heads: tuple[Head, ...]  # heads with a prediction layer (and a loss): sub-models, plus "fusion"
    params: ModelParams = ModelParams()

    @property
    def encoders(self) -> tuple[str, ...]:
        """Sub-models that produce a representation, in a fixed order: text models, then image, audio, vision."""
        names: list[str] = list(self.text.models) if self.text else []
        names += [m for m in ("image", *SEQUENCE_MODALITIES) if getattr(self, m) is not None]
        return tuple(names)
