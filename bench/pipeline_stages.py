"""Benchmark the demo pipeline stage by stage: validate, featurize, train, evaluate, compress.

Runs the stages' component functions in one process, as `msa run` does, with every output redirected to a
scratch directory (nothing in the workspace is touched): featurize from scratch (never its cache), training from
scratch. Records per stage the wall and process CPU time, and the headline metrics of evaluate and compress, so
that a speed-up can be checked to leave the results alone. Prints a table and merges the run into
bench/results/pipeline_stages.json under `--label`; the table compares every label recorded there.

    python bench/pipeline_stages.py [--label after] [--stages train,evaluate] [--threads 1] [--profile DIR]

`--profile DIR` writes one cProfile file per stage (`DIR/<stage>.prof`; read with `python -m pstats`).
"""

from __future__ import annotations

import cProfile
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.core.config import Params, load_params

RESULTS = Path(__file__).parent / "results" / "pipeline_stages.json"
STAGES = ("validate", "featurize", "train", "evaluate", "compress")


def redirected(params: Params, scratch: Path) -> Params:
    """`params` with every output under `scratch`."""

    def section(name: str, **paths: str) -> object:
        return getattr(params, name).model_copy(update={k: scratch / v for k, v in paths.items()})

    return params.model_copy(
        update={
            "validation": section("validation", report="validation.json", data_docs="data_docs"),
            "featurize": section("featurize", out="features"),
            "train": section("train", out="trained"),
            "evaluate": section(
                "evaluate", headline="evaluate.json", report="evaluation.json", plots="plots", figures="figures"
            ),
            "compress": section("compress", out="compressed", headline="compress.json", report="compression.json"),
        }
    )


def run_stage(name: str, p: Params) -> dict:
    """Run one stage; what it reports besides its time (epochs, headline metrics)."""
    if name == "validate":
        from components.data.validation import validate_dataset

        report = validate_dataset(p.data.raw, p.validation)
        return {"success": report.success}
    if name == "featurize":
        from components.features.featurize import featurize

        featurize(p.data.raw, p.featurize, progress=False)
        return {}
    if name == "train":
        from components.training.train import train

        result = train(p.featurize.out, p.model, p.train, resume=False, progress=False)
        return {"epochs": result.epochs_run, "best_epoch": result.best_epoch, "best": result.best_value}
    if name == "evaluate":
        from components.evaluation.evaluate import evaluate

        evaluate(p.featurize.out, p.train.out, p.evaluate, progress=False)
        return {"headline": json.loads(Path(p.evaluate.headline).read_text())}
    from components.compression.compress import compress

    compress(p.featurize.out, p.train.out, p.compress, p.train, progress=False)
    headline = json.loads(Path(p.compress.headline).read_text())
    report = json.loads(Path(p.compress.report).read_text())
    changes = {name: v["change"] for name, v in report["variants"].items()}  # variant - uncompressed, signed
    return {
        "headline": {n: {k: v for k, v in h.items() if k != "faster"} for n, h in headline.items()},
        "change": changes,
    }


def main(
    label: Annotated[str, typer.Option(help="Name of this run in the results file (before, after, ...).")] = "after",
    stages: Annotated[str, typer.Option(help="Comma-separated stages; later ones need the earlier ones.")] = ",".join(
        STAGES
    ),
    params: Annotated[Path, typer.Option(help="params.yaml to read settings from.")] = Path("params.yaml"),
    scratch: Annotated[Path | None, typer.Option(help="Keep the outputs here (default: a temporary dir).")] = None,
    profile: Annotated[Path | None, typer.Option(help="Write DIR/<stage>.prof (cProfile) per stage.")] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads; 0: torch's default (one per core).")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs (a shorter profile).")] = None,
) -> None:
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        raise typer.BadParameter(f"unknown stages {unknown}; choose from {STAGES}")
    started = time.perf_counter()
    import torch

    imports = time.perf_counter() - started
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="msa-bench-") as tmp:
        root = scratch or Path(tmp)
        p = redirected(load_params(params), root)
        if epochs is not None:
            p = p.model_copy(update={"train": p.train.model_copy(update={"epochs": epochs})})
        if "featurize" not in wanted:  # the later stages read the workspace's features
            p = p.model_copy(
                update={"featurize": p.featurize.model_copy(update={"out": load_params(params).featurize.out})}
            )
        measured = {}
        for name in wanted:
            profiler = cProfile.Profile() if profile else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            info = run_stage(name, p)
            if profiler:
                profiler.disable()
                profile.mkdir(parents=True, exist_ok=True)
                profiler.dump_stats(profile / f"{name}.prof")
            measured[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, **info}
            Console().print(f"{name}: {measured[name]['wall_s']:.1f} s", highlight=False)

    runs = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    machine = this_machine()
    runs[label] = {
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
        "torch_import_s": imports,
        "threads": torch.get_num_threads(),
        "epochs": epochs,
        "stages": measured,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(runs, indent=2) + "\n")

    table = Table(title="demo pipeline, seconds per stage (wall / CPU)")
    table.add_column("stage")
    for name in runs:
        table.add_column(name, justify="right")
    for stage in STAGES:
        cells = [runs[n]["stages"].get(stage) for n in runs]
        if any(cells):
            table.add_row(stage, *(f"{c['wall_s']:.1f} / {c['cpu_s']:.1f}" if c else "-" for c in cells))
    totals = [sum(s["wall_s"] for s in runs[n]["stages"].values()) for n in runs]
    table.add_row("total (wall)", *(f"{t:.1f}" for t in totals))
    Console().print(table)
    for stage in ("evaluate", "compress"):
        if stage in measured:
            Console().print(f"{stage} headline: {json.dumps(measured[stage]['headline'])}", highlight=False)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    typer.run(main)
