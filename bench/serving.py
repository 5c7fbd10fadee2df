"""Benchmark the served model: the variant registration serves against the uncompressed fp32 torch model, and what
the MLflow pyfunc wrapper adds to each backend's bare forward.

The trained demo model is packaged with `package_model` once as the uncompressed torch model (`baseline`, what
every registered version served before compression variants could serve) and once per variant (default: the one
`register.variant: auto` picks from compress's report, the fastest kept at batch 1). Each package is saved with
`mlflow.pyfunc.save_model` exactly as `msa register` logs it and loaded back with `mlflow.pyfunc.load_model`.
Per package, two contenders score the same test rows:

    <package> pyfunc   `pyfunc.predict(rows)`: MLflow's schema enforcement + preprocessing (tokenize, decode the
                       base64 image, check and standardize the sequences) + forward: what a caller of the
                       registered model gets
    <package> forward  the backend's bare forward on the input tensors of the same rows, made before any timing

Latency is per row at batch 1, in blocks of `--block` rows: each contender scores a whole block back to back (a
served model runs warm in the caches), the contenders taking turns per block in rotated order, so load on a shared
machine hits all alike. Throughput is pyfunc at batch `--batch`,
contenders alternating for `--rounds` rounds. Quality: every package's pyfunc scores the whole test split; the
goals compare the served variant with the baseline in this one run.

    python bench/serving.py [--variant onnx_int8 ...] [--rows 150] [--block 10] [--batch 64] [--rounds 5]
                            [--threads 1]
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
from components.core.config import load_params
from components.data.dataset import read_dataset
from components.evaluation.metrics import metrics_for
from components.models.store import trim_padding
from components.serving import signing
from components.serving.package import package_model
from components.serving.predictor import Predictor
from components.serving.publish import model_signature
from components.serving.values import raw_frame

RESULTS = Path(__file__).parent / "results" / "serving.json"
GOALS = {"speedup_b1": 3.0, "acc2_points": 1.0, "mae": 0.02, "throughput": 2.0, "pyfunc_overhead": 1.10}


def main(
    variant: Annotated[
        list[str] | None, typer.Option(help="Variants to serve (compress.out/<name>); default: register.variant.")
    ] = None,
    params_file: Annotated[Path, typer.Option("--params", help="params.yaml of the project.")] = Path("params.yaml"),
    rows: Annotated[int, typer.Option(min=1, help="Test rows timed at batch 1 (each by every contender).")] = 150,
    block: Annotated[int, typer.Option(min=1, help="Rows per block of the batch-1 timing.")] = 10,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the throughput rows.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Alternated throughput rounds.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rows per contender first.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of torch and ONNX Runtime alike.")] = 1,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    import mlflow

    params = load_params(params_file)
    report = json.loads(params.compress.report.read_text())
    names = variant or [served_variant(report, params.registry.variant, params.compress.report) or "baseline"]
    packages = ["baseline", *(n for n in names if n != "baseline")]
    torch.set_num_threads(threads)  # before loading: ONNX Runtime sessions take torch's thread count
    dataset = read_dataset(params.data.raw)
    test = raw_frame(dataset, "test", inline_images=True)
    labels = test["label"].to_numpy(np.float64)
    frame = test.drop(columns=["id", "label"])
    with tempfile.TemporaryDirectory(prefix="msa-bench-serving-") as tmp:
        pyfuncs, predictors = {}, {}
        for name in packages:
            where = None if name == "baseline" else params.compress.out / name
            pack = package_model(params.train.out, params.featurize.out, Path(tmp) / name, params.serve, where)
            predictors[name] = Predictor(pack)
            signing.sign(pack)  # as registration does: MLflow's loader verifies before it loads
            mlflow.pyfunc.save_model(
                str(Path(tmp) / f"{name}-pyfunc"),
                loader_module="components.serving",
                data_path=str(pack),
                signature=model_signature(predictors[name].spec),
                input_example=frame.head(2),
            )
            pyfuncs[name] = mlflow.pyfunc.load_model(str(Path(tmp) / f"{name}-pyfunc"))
        torch.set_num_threads(threads)  # in case loading changed it

        n = min(rows, len(frame))
        singles = [frame.iloc[i : i + 1].reset_index(drop=True) for i in range(n)]
        contenders: dict[str, Callable[[int], object]] = {}
        for name in packages:
            predictor = predictors[name]
            tensors = [tensors_of(predictor, r) for r in singles]  # before any timing
            contenders[f"{name} pyfunc"] = lambda i, f=pyfuncs[name]: f.predict(singles[i])
            contenders[f"{name} forward"] = lambda i, p=predictor, t=tensors: forward(p, t[i])
        order = list(contenders)
        for i in range(min(warmup, n)):
            for name in order:
                contenders[name](i)
        wall: dict[str, list[float]] = {name: [] for name in order}
        for b, start in enumerate(range(0, n, block)):
            for name in order[b % len(order) :] + order[: b % len(order)]:
                for i in range(start, min(start + block, n)):
                    started = time.perf_counter()
                    contenders[name](i)
                    wall[name].append(time.perf_counter() - started)

        m = min(batch, len(frame))
        big = frame.head(m).reset_index(drop=True)
        for name in packages:
            pyfuncs[name].predict(big)  # warm-up
        batch_wall: dict[str, list[float]] = {name: [] for name in packages}
        for r in range(rounds):
            for name in packages if r % 2 == 0 else packages[::-1]:
                started = time.perf_counter()
                pyfuncs[name].predict(big)
                batch_wall[name].append(time.perf_counter() - started)

        kind, classes = predictors["baseline"].spec.label.kind, predictors["baseline"].spec.label.classes
        quality = {}
        for name in packages:
            scores = pd.concat([pyfuncs[name].predict(frame.iloc[s : s + m]) for s in range(0, len(frame), m)])
            if kind != "regression":
                raise SystemExit("the goals are for regression models (Acc-2, MAE): the demo's")
            metrics = metrics_for(kind, scores["score"].to_numpy(np.float32), labels.astype(np.float32), classes)
            quality[name] = {"acc2": float(metrics["acc2"]), "mae": float(metrics["mae"])}

    results = []
    base = "baseline"
    for name in packages:
        p, f = wall[f"{name} pyfunc"], wall[f"{name} forward"]
        results.append(
            {
                "package": name,
                "rows": n,
                "pyfunc_ms_p50": 1000 * statistics.median(p),
                "pyfunc_ms_p95": 1000 * float(np.percentile(p, 95)),
                "forward_ms_p50": 1000 * statistics.median(f),
                "pyfunc_overhead": statistics.median(a / b for a, b in zip(p, f, strict=True)),
                "speedup_b1": statistics.median(
                    a / b for a, b in zip(wall[f"{base} pyfunc"], p, strict=True)
                ),  # per row, against the baseline's pyfunc on the same row
                "batch": m,
                "throughput_per_s": statistics.median(m / t for t in batch_wall[name]),
                "throughput_ratio": statistics.median(
                    b / t for t, b in zip(batch_wall[name], batch_wall[base], strict=True)
                ),
                **quality[name],
                "acc2_points": 100 * (quality[base]["acc2"] - quality[name]["acc2"]),
                "mae_delta": quality[name]["mae"] - quality[base]["mae"],
            }
        )

    table = Table(
        title=f"Served model ({predictors[base].head} head) on {n} test rows at batch 1 (blocks of {block}, "
        f"rotated) and batch {m} x {rounds} rounds; images inline (base64); {threads} thread(s); medians"
    )
    columns = (
        "package",
        "pyfunc p50 ms",
        "p95 ms",
        "forward p50 ms",
        "pyfunc / forward",
        "x faster b1",
        f"samples/s b{m}",
        f"x b{m}",
        "Acc-2",
        "MAE",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["package"],
            f"{r['pyfunc_ms_p50']:.2f}",
            f"{r['pyfunc_ms_p95']:.2f}",
            f"{r['forward_ms_p50']:.2f}",
            f"{r['pyfunc_overhead']:.2f}",
            f"{r['speedup_b1']:.2f}",
            f"{r['throughput_per_s']:.0f}",
            f"{r['throughput_ratio']:.2f}",
            f"{100 * r['acc2']:.2f}",
            f"{r['mae']:.4f}",
        )
    Console(width=170).print(table)
    goals = {}
    for r in results[1:]:
        goals[r["package"]] = {
            f"batch-1 p50 >= {GOALS['speedup_b1']}x faster": r["speedup_b1"] >= GOALS["speedup_b1"],
            f"Acc-2 within {GOALS['acc2_points']} pt": r["acc2_points"] <= GOALS["acc2_points"],
            f"MAE within {GOALS['mae']}": r["mae_delta"] <= GOALS["mae"],
            f"batch-{m} throughput >= {GOALS['throughput']}x": r["throughput_ratio"] >= GOALS["throughput"],
            f"pyfunc <= {GOALS['pyfunc_overhead']}x its forward": r["pyfunc_overhead"] <= GOALS["pyfunc_overhead"],
        }
        print(
            f"{r['package']} against baseline: "
            + "; ".join(f"{g}: {'met' if ok else 'MISSED'}" for g, ok in goals[r["package"]].items())
        )
    print(
        "x faster b1: baseline pyfunc time / package pyfunc time, median over the same rows; x b64: the same at "
        "batch 64 over adjacent rounds; Acc-2 and MAE: pyfunc scores on the whole test split"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    settings = {
        "rows": n,
        "block": block,
        "batch": m,
        "rounds": rounds,
        "warmup": warmup,
        "threads": threads,
        "images": "base64",
        "mlflow": mlflow.__version__,
        "torch": torch.__version__,
        "goals": GOALS,
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
    }
    json_path.write_text(json.dumps({"settings": settings, "rows": results, "goals": goals}, indent=2) + "\n")
    print(f"wrote {json_path}")


def tensors_of(predictor: Predictor, rows: pd.DataFrame) -> dict[str, torch.Tensor]:
    """The input tensors `Predictor.predict_frame` feeds its backend for `rows`."""
    return {k: torch.from_numpy(v) for k, v in trim_padding(predictor.features(rows)).items()}


def forward(predictor: Predictor, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return predictor.model(tensors)[predictor.head].float().numpy()


if __name__ == "__main__":
    typer.run(main)
