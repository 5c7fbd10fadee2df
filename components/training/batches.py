"""What training feeds the model: the tensors of the train and valid rows (`training_data`: the test split never
reaches training) and each epoch's batches of this rank's train rows (`TrainingData.batches`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from components.core.config import AugmentParams, ConfigError, TrainParams
from components.data.dataset import SPLITS
from components.models.spec import ModelSpec
from components.models.store import model_inputs, split_rows, trim_padding
from components.training.augmentation import augment, enabled

__all__ = ["TrainingData", "training_data", "without_test"]


def without_test(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The train and valid rows only: the test split never reaches training, so nothing chosen by a valid score
    (an epoch, a seed, a tuning trial) can have seen it."""
    keep = arrays["split"] != SPLITS.index("test")
    return {name: values[keep] for name, values in arrays.items()}


@dataclass
class TrainingData:
    tensors: dict[str, torch.Tensor]  # every model input of the train and valid rows (the split codes left out)
    train_rows: torch.Tensor
    valid_rows: torch.Tensor
    sampler: DistributedSampler  # this rank's slice of each epoch's seeded permutation of the train rows
    local_batch: int  # this rank's share of train.batch_size

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.local_batch)

    def batches(
        self, epoch: int, device: torch.device, spec: ModelSpec, augmentation: AugmentParams
    ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        """(step, its number of rows, the batch on `device`) for each step of `epoch`, each batch cut to its
        longest row; augmented (`train.augment`) from torch's global stream, which training seeds per epoch."""
        self.sampler.set_epoch(epoch)
        augmenting = enabled(augmentation)
        for step, rows in enumerate(self.train_rows[torch.tensor(list(self.sampler))].split(self.local_batch), start=1):
            batch = trim_padding({k: v[rows] for k, v in self.tensors.items()})
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if augmenting:  # training batches only: validation and compression's fine-tune see clean ones
                batch = augment(batch, spec, augmentation)
            yield step, len(rows), batch


def training_data(
    arrays: dict[str, np.ndarray], spec: ModelSpec, params: TrainParams, rank: int, world: int
) -> TrainingData:
    """The model inputs of `arrays` (train and valid rows, see `without_test`) and this rank's sampler."""
    tensors = model_inputs(arrays, spec)
    split = tensors.pop("split")
    train_rows, valid_rows = split_rows(split, "train"), split_rows(split, "valid")
    if params.batch_size % world:
        raise ConfigError(f"train.batch_size {params.batch_size} must divide evenly over {world} processes")
    if not len(train_rows) or not len(valid_rows):
        raise ConfigError("training needs samples in both the train and the valid split")
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(train_rows)),  # type: ignore[arg-type]  # it reads only len(dataset); its stub asks for a Dataset
        num_replicas=world,
        rank=rank,
        seed=params.seed,
    )
    return TrainingData(tensors, train_rows, valid_rows, sampler, params.batch_size // world)
