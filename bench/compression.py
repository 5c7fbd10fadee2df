"""Benchmark the compress stage: size, latency, throughput and metric delta of each variant against the model.

Runs `components.compression.compress.compress` with the default `CompressParams` and `TrainParams` (int8, unstructured
and structured pruning at 50% with a 2-epoch fine-tune; 50 timed single-sample passes; throughput at batch 64; one torch
thread) on the trained demo model, writing the variants and the stage's report into a temporary directory. All ratios
come from the same run, in which the models take turns (see `_round_robin` in the component).

Targets: int8 at least 3x smaller on disk and at least 1.5x faster at batch 1 on CPU, with a metric drop of at
most 1 point; pruning at 50% sparsity within 1 point after fine-tuning.

    python bench/compression.py [--features data/features] [--model models] [--threads 1] [--latency-runs 50]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import torch
import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.compression.compress import compress
from components.core.config import CompressParams, TrainParams

RESULTS = Path(__file__).parent / "results" / "compression.json"
KEPT = {None: "-", True: "yes", False: "no"}


def main(
    features: Annotated[Path, typer.Option(help="Feature directory written by `msa featurize`.")] = Path(
        "data/features"
    ),
    model: Annotated[Path, typer.Option(help="Model directory written by `msa train`.")] = Path("models/trained"),
    threads: Annotated[int, typer.Option(min=1, help="torch threads while timing.")] = 1,
    latency_runs: Annotated[int, typer.Option(min=1, help="Timed single-sample passes per model.")] = 50,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    torch.set_num_threads(threads)  # the fine-tune too: the machine may be shared
    with tempfile.TemporaryDirectory() as tmp:
        params = CompressParams(
            out=Path(tmp) / "compressed",
            report=Path(tmp) / "compression.json",
            headline=Path(tmp) / "headline.json",
            threads=threads,
            latency_runs=latency_runs,
        )
        result = compress(features, model, params, TrainParams(), progress=False)
        report = json.loads(params.report.read_text())
    base = report["baseline"]
    rows = [{"variant": "fp32 (baseline)", **base, "kept": None}]
    rows += [{"variant": name, **v} for name, v in report["variants"].items()]
    for row in rows:
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["latency_ratio"] = base["latency_ms_p50"] / row["latency_ms_p50"]
        row["throughput_ratio"] = row["throughput_per_s"] / base["throughput_per_s"]
        delta = row.get("delta", dict.fromkeys(base["metrics"], 0.0))
        row["acc2_delta_points"], row["mae_delta"] = 100 * delta["acc2"], delta["mae"]

    table = Table(
        title=f"Compression of the standalone model ({base['params'] / 1e6:.1f}M params) on the test split: "
        f"batch 1 latency over {latency_runs} passes, throughput at batch {params.throughput_batch}, "
        f"{threads} torch thread(s); {report['head']} head"
    )
    columns = (
        "variant",
        "size MB",
        "x smaller",
        "non-zero params",
        "non-zero task",
        "p50 ms",
        "p95 ms",
        "x faster b1",
        "samples/s b64",
        "x b64",
        "Δ Acc-2 pts",
        "Δ MAE",
        "kept",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['size_bytes'] / 1e6:.1f}",
            f"{r['size_ratio']:.2f}",
            f"{r['nonzero_params']:,}",
            f"{r['task_nonzero_params']:,}",
            f"{r['latency_ms_p50']:.1f}",
            f"{r['latency_ms_p95']:.1f}",
            f"{r['latency_ratio']:.2f}",
            f"{r['throughput_per_s']:.0f}",
            f"{r['throughput_ratio']:.2f}",
            f"{r['acc2_delta_points']:+.2f}",
            f"{r['mae_delta']:+.4f}",
            KEPT[r["kept"]],
        )
    Console(width=180).print(table)
    print(
        f"baseline {report['metric']} {base['metrics'][report['metric']]:.4f}, mae {base['metrics']['mae']:.4f}; "
        "non-zero task: the trained sub-models, fusion and heads (what pruning acts on; the transformer is not); "
        f"targets: int8 >= 3x smaller, >= 1.5x faster at batch 1, drop <= 1 point; pruning within 1 point"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    settings = {
        "threads": threads,
        "latency_runs": latency_runs,
        "throughput_batch": params.throughput_batch,
        "sparsity": params.sparsity,
        "finetune_epochs": params.finetune_epochs,
        "seconds": result.seconds,
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    json_path.write_text(json.dumps({"settings": settings, "rows": rows, "report": report}, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
