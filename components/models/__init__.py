"""PyTorch sub-models for multimodal sentiment analysis: text (BiLSTM, TextCNN, HAN), image, audio/vision
sequences, hierarchical attention fusion, and the multi-task model that ties them to a `ModelSpec`.

The torch-backed names load on first use, so reading a spec (e.g. in a stage's cache check) does not import torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from components.models.spec import ImageSpec, LabelSpec, ModelSpec, SequenceSpec, TextSpec

if TYPE_CHECKING:  # the names __getattr__ loads, as a type checker is to see them
    from components.models.encoders import ImageCNN, SequenceEncoder
    from components.models.fusion import HierarchicalFusion
    from components.models.multitask import MultiTaskModel, check_spec
    from components.models.text import HAN, BiLSTMText, TextCNN, TokenStates

_MODULES = {
    "MultiTaskModel": "multitask",
    "check_spec": "multitask",
    "HierarchicalFusion": "fusion",
    "ImageCNN": "encoders",
    "SequenceEncoder": "encoders",
    "TokenStates": "text",
    "BiLSTMText": "text",
    "TextCNN": "text",
    "HAN": "text",
}

__all__ = [
    "HAN",
    "BiLSTMText",
    "HierarchicalFusion",
    "ImageCNN",
    "ImageSpec",
    "LabelSpec",
    "ModelSpec",
    "MultiTaskModel",
    "SequenceEncoder",
    "SequenceSpec",
    "TextCNN",
    "TextSpec",
    "TokenStates",
    "check_spec",
]


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(import_module(f"components.models.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
