"""Every head of a trained model scored on rows of the features: what training watches on valid, and what the
tests and benchmarks read a model's quality from."""

from __future__ import annotations

from pathlib import Path

import torch

from components.evaluation.metrics import metrics_for
from components.features.contract import load_features
from components.models import MultiTaskModel
from components.models.store import load_trained, model_inputs, predict, split_rows

__all__ = ["evaluate_heads", "evaluate_split"]


def evaluate_heads(
    model: MultiTaskModel,
    tensors: dict[str, torch.Tensor],
    rows: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, dict]:
    """Metrics of every head on `rows`, each over the samples where its modality is present."""
    spec = model.spec
    label = tensors["label"][rows].numpy()
    return {
        head: metrics_for(spec.label.kind, prediction[present], label[present], spec.label.classes)
        for head, (prediction, present) in predict(model, tensors, rows, device, amp).items()
    }


def evaluate_split(features: str | Path, out: str | Path, split: str) -> dict[str, dict]:
    """Metrics of every head of the model in `out` on one split of `features`, on the CPU."""
    model = load_trained(out)
    tensors = model_inputs(load_features(features)[0], model.spec)
    rows = split_rows(tensors.pop("split"), split)
    return evaluate_heads(model, tensors, rows, torch.device("cpu"))
