"""The machine a benchmark ran on and the date, as every bench/*.py script records them in its results JSON.

Each script writes, at the top level of its results or in one top-level section (`settings`; in pipeline_stages.py
each labelled run), which is where docs/hooks/generate.py looks for them:

    "machine"           one line for people: CPU model, logical cores, OS, Python, torch and its threads, GPU
    "date"              the ISO date of the run (local time), e.g. 2026-12-06
    "machine_details"   the same facts one by one, for comparing runs

Call `this_machine()` when the results are written, after the timing: torch is imported here (not at import time,
so spawned workers and scripts that time torch's import stay as they were), and `torch.get_num_threads()` then
reports the thread count the benchmark set.

    python bench/_support/machine.py    # prints what a benchmark run now would record
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Machine:
    summary: str  # the results' "machine"
    date: str  # the results' "date"
    details: dict[str, Any]  # the results' "machine_details"


def this_machine() -> Machine:
    details = machine_details()
    return Machine(summary=summarize(details), date=datetime.date.today().isoformat(), details=details)


def machine_details() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    torch_version, threads, gpus = _torch()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,  # this process's CPU affinity (a container or taskset may allow fewer)
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "torch": torch_version,
        "torch_threads": threads,
        "gpus": gpus,
    }


def summarize(d: dict[str, Any]) -> str:
    """One line, e.g. `Intel(R) Xeon(R) Processor, 2 logical cores, x86_64; Linux 6.1.0; CPython 3.11.9; torch 2.4.1,
    1 thread; no GPU`."""
    cores = f"{d['logical_cores']} logical cores"
    if d["usable_cores"] is not None and d["logical_cores"] and d["usable_cores"] < d["logical_cores"]:
        cores += f" ({d['usable_cores']} usable)"
    cores += f", {d['arch']}"
    torch = "no torch"
    if d["torch"]:
        torch = f"torch {d['torch']}, {d['torch_threads']} thread{'s' if d['torch_threads'] != 1 else ''}"
    gpus = ", ".join(d["gpus"]) or "no GPU"
    return f"{d['cpu']}, {cores}; {d['os']}; {d['python']}; {torch}; {gpus}"


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux (platform.processor() is empty there), sysctl on macOS, else
    what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():  # x86; ARM boards
                return " ".join(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _torch() -> tuple[str | None, int | None, list[str]]:
    """(torch version, torch.get_num_threads(), GPU names); (None, None, []) without torch."""
    try:
        import torch
    except ImportError:
        return None, None, []
    gpus: list[str] = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        gpus = ["Apple MPS"]
    return torch.__version__, torch.get_num_threads(), gpus


if __name__ == "__main__":
    import json

    machine = this_machine()
    print(json.dumps({"machine": machine.summary, "date": machine.date, "machine_details": machine.details}, indent=2))
