"""PyTorch sub-models for multimodal sentiment analysis: text (BiLSTM, TextCNN, HAN), image, audio/vision
sequences, hierarchical attention fusion, and the multi-task model that ties them to a `ModelSpec`.

The torch-backed names load on first use, so reading a spec (e.g. in a stage's cache check) does not import torch.
"""

from importlib import import_module

from components.models.spec import ImageSpec, LabelSpec, ModelSpec, SequenceSpec, TextSpec

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

__all__ = ["ImageSpec", "LabelSpec", "ModelSpec", "SequenceSpec", "TextSpec", *_MODULES]


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(import_module(f"components.models.{_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
