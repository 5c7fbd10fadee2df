"""Where tensors run: one rule for every stage (cuda, then mps, then cpu), and how many CPU threads they use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from components.core.errors import ConfigError

__all__ = ["autocast_dtype", "cpu_threads", "describe", "pick_device"]


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device {name!r} is not a torch device (use auto, cpu, cuda, cuda:N or mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine (use auto or cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r} requested but MPS is not available on this machine (use auto or cpu)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads held at `n` for a stage's work, whatever the machine's core count or load.

    A sum or a matrix product split over 2 threads rounds differently from one over 1, so a stage that recorded
    its numbers at `n` threads reproduces them to the last bit only at `n` threads: the count is a setting of each
    stage (`<stage>.threads`), never taken from the machine. Set per calling thread: Prefect runs tasks in threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe(device: torch.device, amp: torch.dtype | None = None) -> str:
    """What a stage runs on, said once when it starts: "cpu, 1 thread (AVX2)", "cuda:0, NVIDIA H100, bf16"."""
    precisions: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    precision = precisions.get(amp, "fp32")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}, {torch.cuda.get_device_name(index)}, {precision}"
    if device.type == "cpu":
        threads, isa = torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()
        return f"cpu, {threads} thread{'s' if threads > 1 else ''} ({isa}), {precision}"
    return f"{device}, {precision}"


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Mixed-precision dtype for `precision` on `device`; None means plain fp32.

    `auto` uses bf16 on CUDA when the card supports it (no loss scaling needed), else fp16, and fp32 elsewhere:
    CPU autocast is slower than fp32 for these small recurrent models.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
