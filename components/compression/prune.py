"""Pruning of the weights this pipeline trained (never the carried, pretrained transformer) and the fine-tune after
it, the masks held.

    unstructured  global L1 magnitude pruning of every trained weight (the sub-models, fusion and heads) at
                  `sparsity`.
    structured    L2 pruning of whole output rows / channels of every trained Linear and Conv layer at `sparsity`,
                  except the heads' output layers and single-row attention scores (removing those would remove
                  outputs, not redundancy). RNN gate rows are left alone: zeroing a row of one gate matrix removes
                  no unit.

Pruning is followed by `finetune` epochs of training on the train split with the masks held (on precomputed token
states, as `train` does), then made permanent (`make_permanent`).
"""

from __future__ import annotations

import copy
import math
from typing import cast

import torch
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from components.core.config import ConfigError, TrainParams
from components.core.devices import pick_device
from components.core.errors import TrainingError
from components.models import MultiTaskModel
from components.models.store import trim_padding
from components.training.step import Stepper, loss_weights

__all__ = [
    "TRANSFORMER",
    "finetune",
    "make_permanent",
    "prune_model",
    "prune_targets",
    "reached_sparsity",
    "standalone_copy",
]

TRANSFORMER = "token_states."  # prefix of the carried (pretrained) transformer's modules


def prune_model(model: MultiTaskModel, *, structured: bool, sparsity: float) -> None:
    """Attach pruning masks (torch.nn.utils.prune) to the trained weights; `make_permanent` folds them in."""
    targets = prune_targets(model, structured)
    if structured:
        for module, name in targets:
            prune.ln_structured(module, name, amount=sparsity, n=2, dim=0)
    else:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)


def prune_targets(model: MultiTaskModel, structured: bool) -> list[tuple[nn.Module, str]]:
    """(module, weight name) pairs pruning acts on: trained layers only, see the module docstring."""
    # Each head is a Sequential (`prediction_layer`); ModuleDict's stub gives a bare Module.
    outputs = {id(cast(nn.Sequential, layer)[-1]) for layer in model.heads.values()}
    targets: list[tuple[nn.Module, str]] = []
    for name, module in model.named_modules():
        if name.startswith(TRANSFORMER):
            continue
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            if not structured or (id(module) not in outputs and module.weight.shape[0] > 1):
                targets.append((module, "weight"))
        elif isinstance(module, nn.RNNBase) and not structured:
            targets += [(module, w) for w in module._flat_weights_names if w.startswith("weight")]
    return targets


def make_permanent(model: nn.Module) -> None:
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def reached_sparsity(model: MultiTaskModel, structured: bool) -> float:
    """The share of zeros in the weights pruning acts on."""
    weights = [getattr(module, name) for module, name in prune_targets(model, structured)]
    return 1.0 - sum(int(w.count_nonzero()) for w in weights) / sum(w.numel() for w in weights)


def finetune(
    model: MultiTaskModel,
    tensors: dict[str, torch.Tensor],
    rows: torch.Tensor,
    train: TrainParams,
    epochs: int,
    label: str,
    progress: bool,
) -> None:
    """`epochs` passes over `rows` with train's loss, weights, AdamW settings and clipping; the pruning masks are
    applied in every forward pass, so pruned weights stay zero. The transformer, if carried, is not trained."""
    if not len(rows):
        raise ConfigError("compress.finetune_epochs needs samples in the train split (or set it to 0)")
    spec = model.spec
    device = pick_device(train.device)
    model.to(device).train()
    trainable = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(TRANSFORMER)]
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    stepper = Stepper(model, model, optimizer, loss_weights(spec, train), train.loss, train.grad_clip)
    generator = torch.Generator().manual_seed(train.seed)
    torch.manual_seed(train.seed)  # dropout
    steps = math.ceil(len(rows) / train.batch_size)
    with tqdm(
        total=epochs * steps, desc=label, unit="step", disable=None if progress else True, dynamic_ncols=True
    ) as bar:
        for _ in range(epochs):
            for part in rows[torch.randperm(len(rows), generator=generator)].split(train.batch_size):
                batch = trim_padding({k: v[part] for k, v in tensors.items()})
                stepper.step({k: v.to(device) for k, v in batch.items()})
                bar.update()
    model.cpu().eval()


def standalone_copy(baseline: MultiTaskModel, trained: MultiTaskModel) -> MultiTaskModel:
    """`baseline` (standalone) with the trained weights of `trained` (same spec, maybe without the transformer)."""
    model = copy.deepcopy(baseline)
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or any(not k.startswith(TRANSFORMER) for k in missing):
        raise TrainingError(f"pruned weights do not fit the standalone model: {unexpected[:3] or missing[:3]}")
    return model
