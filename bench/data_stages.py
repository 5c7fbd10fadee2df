"""Benchmark the data stages: demo generation, import and validation time against dataset size.

Prints a table and writes bench/results/data_stages.json. Ratios within one run (per-sample cost at each size
against the smallest, and the share of validation spent in GX itself) are what to compare across machines.

    python bench/data_stages.py [--sizes 1000 4000] [--mosi ../shared/datasets/mosi-text]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.core.config import ValidateParams
from components.data.dataset import read_dataset
from components.data.demo import generate_demo
from components.data.importers import import_text_tsv
from components.data.validation import build_frame, validate_dataset

RESULTS = Path(__file__).parent / "results" / "data_stages.json"
MOSI = Path("../shared/datasets/mosi-text")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


def main(
    sizes: Annotated[list[int], typer.Option(help="Demo dataset sizes to measure.")] = [1000, 4000],  # noqa: B006
    mosi: Annotated[Path, typer.Option(help="mosi-text folder (skipped if absent).")] = MOSI,
) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = ValidateParams(report=root / "validation.json", data_docs=root / "docs")
        validate_dataset(generate_demo(root / "warmup", size=60), params)  # pay the one-off GX import here
        for size in sizes:
            path = root / f"demo-{size}"
            generate_s, _ = timed(generate_demo, path, size=size, seed=0)
            dataset = read_dataset(path)
            checks_s, _ = timed(build_frame, path, dataset.manifest, dataset.samples, dataset.sequences)
            validate_s, report = timed(validate_dataset, path, params)
            assert report.success, report.summary()
            mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
            rows.append(
                {
                    "dataset": f"demo {size}",
                    "samples": size,
                    "size_mb": mb,
                    "generate_s": generate_s,
                    "validate_s": validate_s,
                    "derived_checks_s": checks_s,
                    "import_s": None,
                }
            )
        if (mosi / "train.tsv").is_file():
            path = root / "mosi"
            import_s, _ = timed(import_text_tsv, mosi / "train.tsv", path, valid=mosi / "dev.tsv")
            n = len(read_dataset(path).samples)
            validate_s, report = timed(validate_dataset, path, params)
            mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
            rows.append(
                {
                    "dataset": "mosi-text",
                    "samples": n,
                    "size_mb": mb,
                    "generate_s": None,
                    "validate_s": validate_s,
                    "derived_checks_s": None,
                    "import_s": import_s,
                }
            )

    base = rows[0]
    for row in rows:
        row["validate_ms_per_sample"] = 1000 * row["validate_s"] / row["samples"]
        row["validate_per_sample_vs_smallest"] = row["validate_ms_per_sample"] / (
            1000 * base["validate_s"] / base["samples"]
        )
    table = Table(title="Data stages (seconds; one run, warm GX import)")
    for column in (
        "dataset",
        "samples",
        "MB",
        "generate",
        "import",
        "validate",
        "derived checks",
        "ms/sample",
        "per-sample vs first",
    ):
        table.add_column(column, justify="right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        table.add_row(
            r["dataset"],
            str(r["samples"]),
            fmt(r["size_mb"], ".2f"),
            fmt(r["generate_s"], ".2f"),
            fmt(r["import_s"], ".2f"),
            fmt(r["validate_s"], ".2f"),
            fmt(r["derived_checks_s"], ".2f"),
            fmt(r["validate_ms_per_sample"], ".2f"),
            fmt(r["validate_per_sample_vs_smallest"], ".2f"),
        )
    Console(width=140).print(table)
    machine = this_machine()
    settings = {
        "sizes": sizes,
        "mosi": str(mosi) if mosi.is_dir() else None,
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    typer.run(main)
