"""Benchmark the orchestration overhead of `msa run` (the Prefect `pipeline` flow) on the demo data.

In one run, in a temporary copy of the project (params.yaml and data/raw; its own PREFECT_HOME and a sqlite MLflow
store there, so the checkout's models, reports and mlflow.db are never touched), with the same torch thread count
for every contender:

1. direct: the stage component functions called in-process, as the tasks call them (validate_dataset, featurize,
   train, evaluate, compress, registry.record_and_register), each timed; module imports count (they are lazy,
   as in `msa run`); the MLflow store's schema is created beforehand, so neither contender pays its migration;
2. `msa run --force` as a subprocess after the outputs (data/features, models, reports, metrics) are removed, so
   it does the same work, featurize included: wall time, Python start, imports and the ephemeral Prefect API included;
3. `msa run` again, unchanged: the skip path (the lineage equals the version just registered).

Besides wall time each contender's CPU time (user + sys, of every thread and of the subprocesses it waited for: the
ephemeral API server included) is recorded: on a shared machine wall time follows the neighbours' load, CPU time
much less so. The load average before and after each contender is kept in the JSON.

Targets: overhead (msa run --force - direct) / direct <= 15%; the skip path under 20 s.

    python bench/orchestration.py [--epochs 30] [--threads 2]    # defaults: params.yaml as it is
    python bench/orchestration.py --epochs 2 --finetune-epochs 1 --latency-runs 5   # a quick check
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "orchestration.json"
MSA = Path(sys.executable).parent / "msa"
# What the stages write (mlflow.db and mlruns stay: the registry).
OUTPUTS = ("data/features", "models", "reports", "metrics")
CONTENDER_KEYS = ("seconds", "cpu_seconds", "load_before", "load_after")
OVERHEAD_TARGET, SKIP_TARGET_S = 0.15, 20.0
PROGRESS = re.compile(r"it/s|s/it|step/s|s/step|batch/s|s/batch")  # progress bars stay out of an error's tail


def cpu_seconds() -> float:
    """User + sys seconds of this process (every thread) and of the children it waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def direct(params_path: Path) -> dict[str, dict]:
    """Each stage's component function, in-process and in order: wall and CPU seconds per stage."""
    from components.core.config import load_params

    p = load_params(params_path)
    seconds: dict[str, dict] = {}

    def stage(name: str, module: str, call) -> None:
        load, cpu, started = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
        call(importlib.import_module(module))  # the import is lazy in the tasks too: it counts
        seconds[name] = {
            "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds() - cpu,
            "load_before": load,
            "load_after": os.getloadavg()[0],
        }

    def validate(m) -> None:
        report = m.validate_dataset(p.data.raw, p.validation)
        assert report.success, report.summary()

    stage("validate", "components.data.validation", validate)
    stage("featurize", "components.features.featurize", lambda m: m.featurize(p.data.raw, p.featurize, progress=False))
    stage("train", "components.training.train", lambda m: m.train(p.featurize.out, p.model, p.train, progress=False))
    stage(
        "evaluate",
        "components.evaluation.evaluate",
        lambda m: m.evaluate(p.featurize.out, p.train.out, p.evaluate, progress=False),
    )
    stage(
        "compress",
        "components.compression.compress",
        lambda m: m.compress(p.featurize.out, p.train.out, p.compress, p.train, progress=False),
    )
    stage("register", "components.registry.register", lambda m: m.record_and_register(p))
    return seconds


def msa_run(project: Path, env: dict[str, str], *args: str) -> dict:
    """`msa run ARGS` in `project`: wall and CPU seconds, the flow's seconds (what the CLI prints), its last line."""
    load, cpu, started = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    done = subprocess.run([str(MSA), "run", *args], cwd=project, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    if done.returncode:
        tail = [ln for ln in (done.stdout + done.stderr).splitlines() if not PROGRESS.search(ln)]
        raise SystemExit(f"msa run {' '.join(args)} failed ({done.returncode}):\n" + "\n".join(tail[-40:]))
    last = done.stdout.strip().splitlines()[-1]
    flow = re.search(r"\[([\d.]+)s\]$", last)
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "flow_seconds": float(flow.group(1)) if flow else None,
        "outcome": last,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def main(
    epochs: Annotated[int | None, typer.Option(min=1, help="train.epochs (default: params.yaml's).")] = None,
    finetune_epochs: Annotated[
        int | None, typer.Option(min=0, help="compress.finetune_epochs (default: params.yaml's).")
    ] = None,
    latency_runs: Annotated[
        int | None, typer.Option(min=1, help="compress.latency_runs (default: params.yaml's).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (and OMP/MKL) for every contender.")] = 2,
    params: Annotated[Path, typer.Option(help="params.yaml to copy.")] = ROOT / "params.yaml",
    data: Annotated[Path, typer.Option(help="Dataset to copy to the copy's data.raw.")] = ROOT / "data/raw",
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    settings = yaml.safe_load(params.read_text())
    for section, key, value in (
        ("train", "epochs", epochs),
        ("compress", "finetune_epochs", finetune_epochs),
        ("compress", "latency_runs", latency_runs),
    ):
        if value is not None:
            settings[section][key] = value
    threads_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(threads_env)  # torch is not imported yet (that counts in direct's stages): it reads them
    with tempfile.TemporaryDirectory(prefix="msa-bench-orchestration-") as tmp:
        project = Path(tmp) / "project"
        shutil.copytree(data, project / settings["data"]["raw"])
        (project / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH")}
        env |= threads_env | {
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'mlflow.db'}",
        }
        os.environ.update(env)  # in-process: the same MLflow store and Prefect home
        # MLflow's schema migration is a one-off cost of a new store: neither contender pays it.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import mlflow, os; mlflow.MlflowClient(os.environ['MLFLOW_TRACKING_URI']).search_experiments()",
            ],
            env=env,
            check=True,
            capture_output=True,
        )

        cwd = Path.cwd()
        os.chdir(project)
        try:
            stages = direct(project / "params.yaml")
        finally:
            os.chdir(cwd)
        import torch

        assert torch.get_num_threads() == threads, (torch.get_num_threads(), threads)
        for output in OUTPUTS:
            shutil.rmtree(project / output, ignore_errors=True)
        forced = msa_run(project, env, "--force")
        skipped = msa_run(project, env)

    total = sum(s["seconds"] for s in stages.values())
    total_cpu = sum(s["cpu_seconds"] for s in stages.values())
    overhead = (forced["seconds"] - total) / total
    overhead_cpu = (forced["cpu_seconds"] - total_cpu) / total_cpu
    rows = [{"contender": f"direct: {name}", **s} for name, s in stages.items()]
    rows += [
        {"contender": "direct (sum of stages)", "seconds": total, "cpu_seconds": total_cpu},
        {"contender": "msa run --force: flow", "seconds": forced["flow_seconds"], "cpu_seconds": None},
        {"contender": "msa run --force"} | {k: forced[k] for k in CONTENDER_KEYS},
        {"contender": "msa run, unchanged (skip)"} | {k: skipped[k] for k in CONTENDER_KEYS},
    ]
    table = Table(
        title=f"Orchestration overhead on the demo data: train.epochs {settings['train']['epochs']}, "
        f"{threads} torch thread(s); one run, direct first; wall and CPU (user + sys) seconds"
    )
    for column in ("contender", "seconds", "x direct", "CPU s", "CPU x direct", "load 1 min"):
        table.add_column(column, justify="right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for row in rows:
        row["ratio_to_direct"] = None if row["seconds"] is None else row["seconds"] / total
        row["cpu_ratio_to_direct"] = None if row["cpu_seconds"] is None else row["cpu_seconds"] / total_cpu
        load = f"{row['load_before']:.1f}-{row['load_after']:.1f}" if "load_before" in row else "-"
        table.add_row(
            row["contender"],
            fmt(row["seconds"], ".1f"),
            fmt(row["ratio_to_direct"], ".3f"),
            fmt(row["cpu_seconds"], ".1f"),
            fmt(row["cpu_ratio_to_direct"], ".3f"),
            load,
        )
    Console(width=140).print(table)
    checks = {
        "overhead_ok": overhead <= OVERHEAD_TARGET,
        "skip_ok": skipped["seconds"] < SKIP_TARGET_S,
    }
    print(
        f"overhead (msa run --force - direct) / direct: wall {100 * overhead:+.1f}%, CPU {100 * overhead_cpu:+.1f}% "
        f"(target <= {100 * OVERHEAD_TARGET:.0f}%: {'met' if checks['overhead_ok'] else 'MISSED'} on wall); "
        f"skip path {skipped['seconds']:.1f} s (target < {SKIP_TARGET_S:.0f} s: "
        f"{'met' if checks['skip_ok'] else 'MISSED'})"
    )
    print(f"forced: {forced['outcome']}\nunchanged: {skipped['outcome']}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    run_settings = {
        "epochs": settings["train"]["epochs"],
        "finetune_epochs": settings["compress"]["finetune_epochs"],
        "latency_runs": settings["compress"]["latency_runs"],
        "threads": threads,
        "order": "direct, msa run --force, msa run",
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    result = {
        "settings": run_settings,
        "rows": rows,
        "direct_stage_seconds": stages,
        "direct_seconds": total,
        "direct_cpu_seconds": total_cpu,
        "msa_run_force": forced,
        "msa_run_unchanged": skipped,
        "overhead_fraction": overhead,
        "overhead_fraction_cpu": overhead_cpu,
        "targets": {"overhead_fraction_max": OVERHEAD_TARGET, "skip_seconds_max": SKIP_TARGET_S} | checks,
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
