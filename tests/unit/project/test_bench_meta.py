"""Every benchmark records the machine it ran on and the date, through the one helper bench/_support/machine.py,
under the keys the docs' benchmarks page reads (docs/hooks/generate.py: "machine" and "date", strings)."""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BENCH = ROOT / "bench"
HELPER = BENCH / "_support" / "machine.py"


@functools.cache
def _helper():
    """bench/_support/machine.py, imported from its path (bench/ is no package: the scripts run as files)."""
    spec = importlib.util.spec_from_file_location("bench_support_machine", HELPER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_helper_records_machine_and_date() -> None:
    machine = _helper().this_machine()
    assert isinstance(machine.summary, str) and machine.summary
    assert abs((datetime.date.fromisoformat(machine.date) - datetime.date.today()).days) <= 1  # run at midnight
    d = machine.details
    assert d["cpu"] and d["cpu"] in machine.summary
    assert isinstance(d["logical_cores"], int) and d["logical_cores"] >= 1
    assert d["python"] and d["os"]
    assert d["torch"] and isinstance(d["torch_threads"], int)  # torch is a dependency of the project
    assert isinstance(d["gpus"], list)
    json.dumps(d)  # goes into the results as it is


def test_cpu_model_is_not_empty_on_linux() -> None:
    assert _helper().cpu_model() not in ("", "unknown CPU")


def test_helper_runs_alone() -> None:
    out = subprocess.run([sys.executable, str(HELPER)], capture_output=True, text=True, check=True, cwd=ROOT)
    record = json.loads(out.stdout)
    assert set(record) == {"machine", "date", "machine_details"}


def test_every_bench_script_records_machine_and_date_through_the_helper() -> None:
    scripts = sorted(BENCH.glob("*.py"))
    assert scripts
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        assert "from _support.machine import this_machine" in source, script.name
        for key in ('"machine": machine.summary', '"date": machine.date', '"machine_details": machine.details'):
            assert key in source, f"{script.name} does not write {key}"
        assert "platform.processor()" not in source, f"{script.name} records its machine ad hoc"
