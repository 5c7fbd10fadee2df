"""The same numbers on any machine: the demo trained twice, once alone with one thread by default and once with
two threads by default beside a CPU burner, gives the same features, weights, history and metrics, byte for byte.

Both runs hold torch at the stages' `threads` setting (components.core.devices.cpu_threads) and the kernels at AVX2
(components/__init__.py); without the first, 1 and 2 threads round a matrix product differently and the weights
part after the first epoch.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import PROJECT_FILES, copy_project
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.integration

COMPARED = (
    "data/features/features.safetensors",
    "models/trained/model.safetensors",
    "models/trained/history.json",
    "metrics/evaluate.json",
)


def _burn() -> None:
    while True:
        pass


@contextmanager
def cpu_burner(processes: int) -> Iterator[None]:
    """Busy loops on every core: the load of a shared machine."""
    burners = [multiprocessing.get_context("spawn").Process(target=_burn, daemon=True) for _ in range(processes)]
    for burner in burners:
        burner.start()
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.join()


def trained_demo(root: Path, threads: int) -> tuple[Path, str]:
    """A fresh project: a small demo, featurized, trained for a few epochs and evaluated, with `threads` as the
    machine's default thread count (what torch takes when nobody sets it). Returns the project and train's stderr."""
    copy_project(root, PROJECT_FILES)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"] |= {"epochs": 3, "patience": 10}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    msa = str(BIN / "msa")
    run([msa, "data", "demo", "--size", "150"], cwd=root, env=env)
    run([msa, "featurize"], cwd=root, env=env)
    trained = run([msa, "train"], cwd=root, env=env)
    run([msa, "evaluate"], cwd=root, env=env)
    return root, trained.stderr


def test_training_repeats_to_the_last_bit_whatever_the_threads_and_the_load(tmp_path):
    alone, said = trained_demo(tmp_path / "alone", threads=1)
    with cpu_burner(os.cpu_count() or 2):
        busy, _ = trained_demo(tmp_path / "busy", threads=2)
    for name in COMPARED:
        assert (alone / name).read_bytes() == (busy / name).read_bytes(), f"{name} differs"

    # The run talks when its output is not a terminal: the device once, then a line per epoch.
    lines = said.splitlines()
    assert any(line.startswith("train: cpu, 1 thread") for line in lines), said
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"], said
