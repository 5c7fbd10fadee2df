"""Benchmark what verifying a signed model costs its loaders: signing at registration, and loading with and without
the signature check.

The trained demo model is packaged as registration packages it (the variant `register.variant` picks, with its
tokenizer, featurizer state and bounds) and signed once (`sign`). Then, for `--rounds` rounds, the two contenders
take turns on the same package:

    load            `Predictor(package)`: what a loader did before packages were signed
    verify + load   `signing.verify(package)` then `Predictor(package)`: what `msa predict`, `msa serve`, MLflow's
                    loader and the gate do now

The table gives medians and the ratio of the two in this one run (`verify / load` is the price of the check).

    python bench/verification.py [--rounds 7] [--params params.yaml]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.compression.compress import served_variant
from components.core.config import load_params
from components.serving import signing
from components.serving.package import package_model
from components.serving.predictor import Predictor

RESULTS = Path(__file__).parent / "results" / "verification.json"


def main(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of both contenders, taking turns.")] = 7,
    params_file: Annotated[Path, typer.Option("--params", help="The project's params.yaml.")] = Path("params.yaml"),
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    params = load_params(params_file)
    report = json.loads(params.compress.report.read_text()) if params.compress.report.exists() else {}
    variant = served_variant(report, params.registry.variant, params.compress.report) if report else None
    with tempfile.TemporaryDirectory(prefix="msa-bench-verify-") as tmp:
        where = params.compress.out / variant if variant else None
        package = package_model(params.train.out, params.featurize.out, Path(tmp) / "package", params.serve, where)
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        files = sum(1 for f in package.rglob("*") if f.is_file())
        start = time.perf_counter()
        signing.sign(package)
        signed_s = time.perf_counter() - start
        times: dict[str, list[float]] = {"load": [], "verify + load": []}
        for _ in range(rounds):
            for name in times:
                start = time.perf_counter()
                if name == "verify + load":
                    signing.verify(package, "bench")
                Predictor(package)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = [
        {"contender": "sign (registration)", "median_s": signed_s, "x_load": signed_s / medians["load"]},
        *({"contender": n, "median_s": m, "x_load": m / medians["load"]} for n, m in medians.items()),
    ]
    table = Table(
        title=f"Verification of the served package ({variant or 'baseline'}, {size / 1e6:.1f} MB, {files} files)"
    )
    for column in ("contender", "median s", "x load"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for row in rows:
        table.add_row(row["contender"], f"{row['median_s']:.3f}", f"{row['x_load']:.2f}")
    Console().print(table)
    machine = this_machine()
    settings = {
        "rounds": rounds,
        "variant": variant or "baseline",
        "package_bytes": size,
        "files": files,
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
