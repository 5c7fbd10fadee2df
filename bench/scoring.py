"""Benchmark batch scoring (`msa score`) against a bare ONNX Runtime session over the same rows.

The trained demo model is packaged with the variant registration serves (`register.variant`, e.g. onnx_int8),
signed and saved as an MLflow pyfunc directory as `msa register` logs it. The demo's rows (every split, images
inline as base64, frames as lists) are repeated to `--rows` rows and written as JSONL and parquet. Contenders,
taking turns for `--rounds` rounds so that load on a shared machine hits all alike:

    score jsonl     `score_input` on the JSONL file: verify and load the model, check every row, read, prepare
                    (tokenize, decode images, standardize frames), score and write parquet, chunk by chunk
    score parquet   the same on the parquet file
    bare session    the ONNX Runtime session of the same package alone, over the same rows' input tensors, made
                    before any timing in the batches `Predictor` uses: the floor no scorer of these rows can beat

Rows/s are medians over the rounds; `x bare` is the contender's rows/s over the bare session's in the same round.
The goal: `msa score` at least 0.8x the bare session.

    python bench/scoring.py [--rows 5000] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.compression.compress import served_variant
from components.compression.onnx_model import OnnxModel
from components.core.config import load_params
from components.data.dataset import SPLITS, read_dataset
from components.models.store import trim_padding
from components.serving import signing
from components.serving.package import package_model
from components.serving.predictor import BATCH, Predictor
from components.serving.publish import model_signature
from components.serving.score import score_input
from components.serving.values import raw_frame

RESULTS = Path(__file__).parent / "results" / "scoring.json"
GOAL = 0.8  # msa score's rows/s over the bare session's


def main(
    params_file: Annotated[Path, typer.Option("--params", help="params.yaml of the project.")] = Path("params.yaml"),
    rows: Annotated[int, typer.Option(min=1, help="Rows scored per contender per round.")] = 5000,
    rounds: Annotated[int, typer.Option(min=1, help="Alternated rounds.")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of torch and ONNX Runtime alike.")] = 1,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    import mlflow

    params = load_params(params_file)
    report = json.loads(params.compress.report.read_text())
    variant = served_variant(report, params.registry.variant, params.compress.report)
    if variant is None or not variant.startswith("onnx"):
        raise SystemExit(f"register.variant serves {variant or 'the torch model'}: the bare session needs an ONNX one")
    torch.set_num_threads(threads)  # ONNX Runtime sessions take torch's thread count
    dataset = read_dataset(params.data.raw)
    demo = pd.concat([raw_frame(dataset, s, inline_images=True) for s in SPLITS]).drop(columns=["label"])
    frame = demo.iloc[np.arange(rows) % len(demo)].reset_index(drop=True)
    frame["id"] = [f"r{i}" for i in range(rows)]
    with tempfile.TemporaryDirectory(prefix="msa-bench-scoring-") as tmp:
        root = Path(tmp)
        pack = package_model(
            params.train.out, params.featurize.out, root / "package", params.serve, params.compress.out / variant
        )
        predictor = Predictor(pack)
        signing.sign(pack)
        model_dir = root / "pyfunc"
        mlflow.pyfunc.save_model(
            str(model_dir),
            loader_module="components.serving",
            data_path=str(pack),
            signature=model_signature(predictor.spec),
        )
        inputs = {"jsonl": root / "rows.jsonl", "parquet": root / "rows.parquet"}
        frame.to_json(inputs["jsonl"], orient="records", lines=True)
        frame.to_parquet(inputs["parquet"])
        assert isinstance(predictor.model, OnnxModel)
        session, names = predictor.model.session, predictor.model.inputs
        feeds = [  # before any timing
            {k: np.ascontiguousarray(v) for k, v in trim_padding(predictor.features(frame.iloc[s : s + BATCH])).items()}
            for s in range(0, rows, BATCH)
        ]
        contenders: dict[str, Callable[[int], object]] = {
            f"score {kind}": lambda r, path=path: score_input(
                str(model_dir), path, root / f"out-{r}-{path.suffix[1:]}.parquet", progress=False
            )
            for kind, path in inputs.items()
        }
        contenders["bare session"] = lambda r: [session.run(None, {n: f[n] for n in names}) for f in feeds]
        order = list(contenders)
        wall: dict[str, list[float]] = {name: [] for name in order}
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                started = time.perf_counter()
                contenders[name](r)
                wall[name].append(time.perf_counter() - started)
        scored = pd.read_parquet(root / "out-0-parquet.parquet")
        head = list(predictor.model.heads).index(predictor.head)
        bare = np.concatenate([session.run(None, {n: f[n] for n in names})[head] for f in feeds]).reshape(-1)
        largest = float(np.abs(scored["score"].to_numpy() - bare).max())

    results = [
        {
            "contender": name,
            "rows": rows,
            "rows_per_s": statistics.median(rows / t for t in wall[name]),
            "x_bare": statistics.median(b / t for t, b in zip(wall[name], wall["bare session"], strict=True)),
        }
        for name in order
    ]
    table = Table(
        title=f"Batch scoring of {rows} demo rows ({variant}; images inline, frames as lists) against a bare ONNX "
        f"Runtime session; {threads} thread(s); medians of {rounds} rounds"
    )
    for column in ("contender", "rows/s", "x bare"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["contender"], f"{r['rows_per_s']:.0f}", f"{r['x_bare']:.2f}")
    Console(width=150).print(table)
    met = {r["contender"]: r["x_bare"] >= GOAL for r in results if r["contender"].startswith("score")}
    print(
        "; ".join(f"{name} >= {GOAL}x bare: {'met' if ok else 'MISSED'}" for name, ok in met.items())
        + f"; scores equal the bare session's within {largest:.1e}"
    )
    machine = this_machine()
    settings = {
        "rows": rows,
        "rounds": rounds,
        "threads": threads,
        "variant": variant,
        "goal": GOAL,
        "largest_difference": largest,
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"settings": settings, "rows": results, "goals": met}, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
