"""One optimization step of the multi-task loss (`Stepper`): a loss per head (`head_losses`), their weights
(`loss_weights`), the optimizer (`optimizer_for`) and the learning-rate schedule (`lr_scale`). Training and
compression's fine-tune after pruning share it.

The schedule is a function of the step alone, not an object with state: a resumed run sets the same rates as the
uninterrupted one without a scheduler in the checkpoint."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F

from components.core.config import TrainParams
from components.models import MultiTaskModel
from components.models.spec import ModelSpec

__all__ = ["Stepper", "head_losses", "loss_weights", "lr_scale", "optimizer_for"]


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
    """AdamW. A fine-tuned transformer gets its own, much smaller learning rate, decayed layer by layer downwards
    (`train.layer_decay`): the top layer trains at `encoder_lr`, each one below at `layer_decay` times the one above,
    the embeddings lowest. Each group keeps its rate as `base_lr`, which the schedule (`lr_scale`) multiplies."""
    encoder = {id(p) for p in model.transformer_parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder]
    groups = [{"params": rest, "lr": params.lr}]
    if encoder:
        groups += _layer_groups(model.transformer_named_parameters(), params.encoder_lr, params.layer_decay)
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.AdamW(groups, weight_decay=params.weight_decay)


_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # BERT's encoder.layer.<i>., and the layers.<i>. of others


def _layer_groups(named: list[tuple[str, torch.nn.Parameter]], lr: float, decay: float) -> list[dict]:
    """One parameter group per depth: layer i at depth i + 1, everything outside the layers (the embeddings) at 0."""
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, parameter in named:
        depth = int(m.group(1)) + 1 if (m := _LAYER.search(name)) else 0
        groups.setdefault(depth, []).append(parameter)
    top = max(groups)
    return [{"params": ps, "lr": lr * decay ** (top - depth)} for depth, ps in sorted(groups.items())]


def lr_scale(step: int, total: int, warmup: float, schedule: str) -> float:
    """The learning rate's factor at optimizer step `step` (0-based) of `total`: a linear rise over the first
    `warmup` fraction of the steps (the first step already moves), then 1 ("constant") or a linear fall to the
    last step ("linear"), as in BERT's fine-tuning."""
    warm = math.ceil(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    return max(total - step, 0) / max(total - warm, 1)


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

    def step(
        self, batch: dict[str, torch.Tensor], lr_scale: float | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(total loss, per-head losses, gradient norm before clipping); the optimizer step is skipped when the
        norm is not finite (fp16 loss scaling then lowers its scale). `lr_scale` sets every group's rate to its
        `base_lr` times it first (None: the rates stay as they are)."""
        if lr_scale is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_scale
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
