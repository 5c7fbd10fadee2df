"""Where training runs: one process or torch DDP under torchrun (`distributed`, `rank`), and deterministic kernels on
the CPU (`deterministic`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, cast

import torch
import torch.distributed as dist

from components.core.config import ConfigError
from components.core.devices import pick_device

__all__ = ["deterministic", "distributed", "rank"]


class _DeterministicFlags(Protocol):
    fill_uninitialized_memory: bool


# torch.utils.deterministic gets this flag at runtime by swapping its module's class for one with the property, which
# torch's stubs do not see.
_FLAGS = cast(_DeterministicFlags, torch.utils.deterministic)


def rank() -> int:
    """This process's rank under torchrun (0 alone): what rank 0 alone writes, before and after the process group."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Same seed, same weights on CPU (CUDA kernels trade that for speed, so it is not forced there)."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), _FLAGS.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    # Filling every torch.empty with NaN is a debugging aid (2-4% per step); results stay deterministic without it.
    _FLAGS.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        _FLAGS.fill_uninitialized_memory = before[1]


@contextmanager
def distributed(device_name: str) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device): one process by default, torch DDP when launched by torchrun."""
    try:
        device = pick_device(device_name)
    except ValueError as e:
        raise ConfigError(f"train.device: {e}") from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world, device
    finally:
        dist.destroy_process_group()
