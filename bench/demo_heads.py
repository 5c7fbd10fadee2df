"""Benchmark the heads of the multi-task model on the synthetic demo data: does fusion beat every single modality?

Featurizes `data.raw` (default data/raw) into a temporary directory, trains with the settings of params.yaml (only the
output directories are redirected: data/features and models/ are never touched), reloads the best weights and scores
every head on the test split: the unimodal heads (lstm, textcnn, han on text; image; audio; vision) against the fusion
head. Metrics are MMSA's (components.evaluation.metrics.regression_metrics): Acc-2 on non-zero labels, Acc-2 with zero
counted as non-negative (has0), weighted F1 on non-zero labels, MAE and Pearson r. Also reported: the fusion head's
margin over the best single-modality head in Acc-2 points (the demo data is built so that only the combination gets
nearly all signs; target >= 5 points) and the training wall time and epochs (target < 3 minutes for the whole demo
training on a 2-core CPU).

`--ablations` also trains each head alone (train.single_task: lstm, ..., fusion) and adds those rows.

    python bench/demo_heads.py [--ablations] [--threads 1] [--json bench/results/demo_heads.json]

Threads: torch's default on a 2-core machine is 2 intra-op threads. When another process holds a core, every
parallel region waits for a descheduled thread and small-op models (LSTM/GRU steps) run 10-100x slower; one
thread is immune to that, hence `--threads 1` by default (0 keeps torch's default).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.core.config import DEFAULT_PARAMS, load_params
from components.evaluation.heads import evaluate_split
from components.features.featurize import featurize
from components.training.train import train

RESULTS = Path(__file__).parent / "results" / "demo_heads.json"
UNIMODAL = ("lstm", "textcnn", "han", "image", "audio", "vision")
MARGIN_TARGET = 5.0  # Acc-2 points of fusion over the best single-modality head
TIME_TARGET_S = 180.0  # whole demo training


def main(
    params: Annotated[Path, typer.Option(help="params.yaml to train with (output paths are redirected).")] = (
        DEFAULT_PARAMS
    ),
    data: Annotated[Path | None, typer.Option(help="Dataset directory (default: data.raw in params).")] = None,
    ablations: Annotated[bool, typer.Option(help="Also train each head alone (train.single_task).")] = False,
    threads: Annotated[int, typer.Option(help="torch intra-op threads; 0: torch's default.")] = 1,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    p = load_params(params)
    raw = data or p.data.raw
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        features = featurize(raw, p.featurize.model_copy(update={"out": root / "features"}), progress=False)
        featurize_s = time.perf_counter() - started
        variants = [("multi-task", None)] + (
            [(f"single-task {h}", h) for h in (*UNIMODAL, "fusion")] if ablations else []
        )
        for name, single in variants:
            settings = p.train.model_copy(update={"out": root / name.replace(" ", "-"), "single_task": single})
            try:
                result = train(features.out, p.model, settings, progress=False)
            except Exception as e:  # noqa: BLE001 - e.g. a head the dataset lacks: report it and go on
                print(f"{name}: skipped ({type(e).__name__}: {e})")
                continue
            print(result.summary())
            runs.append(
                {
                    "run": name,
                    "seconds": result.seconds,
                    "epochs": result.epochs_run,
                    "best_epoch": result.best_epoch,
                    "stopped_early": result.stopped_early,
                    "samples_per_s": result.train_samples_per_s,
                    "heads": evaluate_split(features.out, result.out, "test"),
                }
            )

    multi = runs[0]
    single_heads = {h: m for h, m in multi["heads"].items() if h in UNIMODAL}
    best_single = max(single_heads, key=lambda h: single_heads[h]["acc2"])
    margin = 100 * (multi["heads"]["fusion"]["acc2"] - single_heads[best_single]["acc2"])
    summary = {
        "dataset": str(raw),
        "threads": torch.get_num_threads(),
        "featurize_s": featurize_s,
        "train_s": multi["seconds"],
        "epochs": multi["epochs"],
        "best_epoch": multi["best_epoch"],
        "best_single_head": best_single,
        "fusion_margin_acc2_points": margin,
        "margin_target_met": margin >= MARGIN_TARGET,
        "time_target_met": multi["seconds"] < TIME_TARGET_S,
    }
    if ablations:
        alone = {r["run"].removeprefix("single-task "): r["heads"] for r in runs[1:]}
        alone_single = {h: m[h]["acc2"] for h, m in alone.items() if h in UNIMODAL}
        if alone_single:
            best = max(alone_single, key=alone_single.get)
            summary["best_single_task_head"] = best
            summary["fusion_margin_over_single_task_points"] = 100 * (
                multi["heads"]["fusion"]["acc2"] - alone_single[best]
            )

    table = Table(title=f"Demo heads on the test split ({raw}; train with {params})")
    for column in ("run", "head", "Acc-2", "Acc-2 has0", "F1", "MAE", "Corr", "epochs", "train s"):
        table.add_column(column, justify="right")
    for run in runs:
        heads = run["heads"]
        for i, (head, m) in enumerate(heads.items()):
            last = i == len(heads) - 1
            table.add_row(
                run["run"] if i == 0 else "",
                head,
                f"{100 * m['acc2']:.1f}",
                f"{100 * m['acc2_has0']:.1f}",
                f"{100 * m['f1']:.1f}",
                f"{m['mae']:.3f}",
                f"{m['corr']:.3f}",
                f"{run['best_epoch']}/{run['epochs']}" if i == 0 else "",
                f"{run['seconds']:.0f}" if i == 0 else "",
                end_section=last,
            )
    console = Console(width=140)
    console.print(table)
    console.print(
        f"fusion - best single-modality head ({best_single}): {margin:+.1f} Acc-2 points "
        f"(target >= {MARGIN_TARGET:.0f}: {'met' if summary['margin_target_met'] else 'NOT met'}); "
        f"training {multi['seconds']:.0f} s, {multi['epochs']} epochs (best {multi['best_epoch']}) "
        f"(target < {TIME_TARGET_S:.0f} s: {'met' if summary['time_target_met'] else 'NOT met'}); "
        f"featurize {featurize_s:.0f} s; {summary['threads']} torch thread(s)"
    )
    if "fusion_margin_over_single_task_points" in summary:
        console.print(
            f"fusion - best head trained alone ({summary['best_single_task_head']}): "
            f"{summary['fusion_margin_over_single_task_points']:+.1f} Acc-2 points"
        )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    result = {
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
        "summary": summary,
        "runs": runs,
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
