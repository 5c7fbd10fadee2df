"""One optimization step of the multi-task loss (`Stepper`): a loss per head (`head_losses`), their weights
(`loss_weights`) and the optimizer (`optimizer_for`). Training and compression's fine-tune after pruning share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F

from components.core.config import TrainParams
from components.models import MultiTaskModel
from components.models.spec import ModelSpec

__all__ = ["Stepper", "head_losses", "loss_weights", "optimizer_for"]


def head_losses(
    spec: ModelSpec, outputs: dict[str, torch.Tensor], presence: dict[str, torch.Tensor], label: torch.Tensor, loss: str
) -> dict[str, torch.Tensor]:
    """Per-head loss over the samples where that head's modality is present (an absent image teaches nothing)."""
    losses = {}
    for head, prediction in outputs.items():
        keep = presence[head]
        prediction, target = prediction.float()[keep], label[keep]
        if not len(target):
            losses[head] = prediction.sum() * 0.0  # keeps the graph (and DDP's gradient buckets) whole
        elif spec.label.kind == "classification":
            losses[head] = F.cross_entropy(prediction, target)
        else:
            losses[head] = (F.l1_loss if loss == "l1" else F.mse_loss)(prediction, target)
    return losses


def loss_weights(spec: ModelSpec, params: TrainParams) -> dict[str, float]:
    return {h: (1.0 if params.single_task else params.loss_weights.get(h, 1.0)) for h in spec.heads}


def optimizer_for(model: MultiTaskModel, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW; a fine-tuned transformer gets its own, much smaller learning rate."""
    encoder = {id(p) for p in model.transformer_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder]
    groups = [{"params": rest, "lr": params.lr}]
    if encoder:
        groups.append({"params": model.transformer_parameters(), "lr": params.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=params.weight_decay)


@dataclass
class Stepper:
    """One optimization step of the multi-task loss: what training and the fine-tune after pruning share.

    `forward` is the module called (the DDP wrapper when distributed); `model` is the model it wraps.
    """

    model: MultiTaskModel
    forward: torch.nn.Module
    optimizer: torch.optim.Optimizer
    weights: dict[str, float]
    loss: str
    grad_clip: float
    amp: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(  # loss scaling for fp16 autocast; by default none (a disabled one)
        default_factory=lambda: torch.amp.GradScaler(enabled=False)
    )

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(total loss, per-head losses, gradient norm before clipping); the optimizer step is skipped when the
        norm is not finite (fp16 loss scaling then lowers its scale)."""
        spec, device = self.model.spec, batch["label"].device
        with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
            outputs = self.forward(batch)
        losses = head_losses(spec, outputs, self.model.presence(batch), batch["label"], self.loss)
        # A tensor: a spec has at least one head (check_spec), so never sum's 0 of nothing.
        total = cast(torch.Tensor, sum(self.weights[h] * losses[h] for h in spec.heads))
        scaler = self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if torch.isfinite(norm) or scaler.is_enabled():
            scaler.step(self.optimizer)
            scaler.update()
        return total, losses, norm
