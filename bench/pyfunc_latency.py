"""Benchmark the served model: what raw-input preprocessing and the MLflow pyfunc wrapper add to the bare forward.

The trained demo model is packaged once with `package_model` into a temporary directory (the standalone model: the
frozen transformer runs inside it). Three contenders score the same rows of the test split:

    pyfunc         `mlflow.pyfunc.load_model(dir).predict(rows)` on a model saved with `mlflow.pyfunc.save_model`
                   exactly as `msa register` logs it (loader_module components.serving, the package as data, the
                   components as code, the signature of `components.registry.model_signature`): schema
                   enforcement + preprocessing + forward, what a user who loads the registered model gets
    predict_frame  `Predictor.predict_frame(rows)`: preprocessing (tokenize, decode and resize the image,
                   standardize the sequences) + forward, no MLflow
    forward        `model(batch)` under `torch.inference_mode()` on the input tensors of the same rows, made by
                   `Predictor.features` once before any timing: the bare standalone forward

Latency is per row at batch 1: the rows go in blocks (`--block` rows), and within a block every contender scores
each row in turn (order rotated per row), so that load on a shared machine hits all three alike; ratios are the
median of the per-row ratios to `forward` on the same row. Throughput is at batch `--batch`, contenders alternating
for `--rounds` rounds. Images go in inline (`image_base64`, as a REST client sends them) or, with
`--image-paths`, as file paths. Wall and process CPU time are both recorded.

    python bench/pyfunc_latency.py [--rows 150] [--block 10] [--batch 64] [--rounds 5] [--threads 1]
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
from rich.console import Console
from rich.table import Table

import components
from components.dataset import read_dataset
from components.registry import model_signature
from components.serving import Predictor, package_model, raw_frame

RESULTS = Path(__file__).parent / "results" / "pyfunc_latency.json"
NAMES = ("pyfunc", "predict_frame", "forward")


def timed(call: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(
    raw: Annotated[Path, typer.Option(help="Canonical dataset (`msa data`).")] = Path("data/raw"),
    features: Annotated[Path, typer.Option(help="Feature directory written by `msa featurize`.")] = Path(
        "data/features"
    ),
    model: Annotated[Path, typer.Option(help="Model directory written by `msa train`.")] = Path("models/trained"),
    rows: Annotated[int, typer.Option(min=1, help="Test rows timed at batch 1 (each by every contender).")] = 150,
    block: Annotated[int, typer.Option(min=1, help="Rows per block of the batch-1 timing.")] = 10,
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the throughput rows.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Alternated throughput rounds.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rows per contender first.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (the machine may be shared).")] = 1,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    import mlflow

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="msa-bench-pyfunc-") as tmp:
        pack = package_model(model, features, Path(tmp) / "package")
        predictor = Predictor(pack)
        dataset = read_dataset(raw)
        frame = raw_frame(dataset, "test", inline_images=True).drop(columns=["id", "label"])
        signature = model_signature(predictor.spec)
        mlflow.pyfunc.save_model(
            str(Path(tmp) / "pyfunc"), loader_module="components.serving", data_path=str(pack),
            code_paths=[str(Path(components.__file__).parent)], signature=signature, input_example=frame.head(2),
        )  # fmt: skip
        pyfunc = mlflow.pyfunc.load_model(str(Path(tmp) / "pyfunc"))
        torch.set_num_threads(threads)  # in case loading changed it

        net, head = predictor.model, predictor.head

        def forward(tensors: dict[str, torch.Tensor]) -> np.ndarray:
            with torch.inference_mode():
                return net(tensors)[head].float().numpy()

        def tensors_of(rows_: pd.DataFrame) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(v) for k, v in predictor.features(rows_).items()}

        n = min(rows, len(frame))
        singles = [frame.iloc[i : i + 1].reset_index(drop=True) for i in range(n)]
        single_tensors = [tensors_of(r) for r in singles]  # before any timing
        contenders: dict[str, Callable[[int], object]] = {
            "pyfunc": lambda i: pyfunc.predict(singles[i]),
            "predict_frame": lambda i: predictor.predict_frame(singles[i]),
            "forward": lambda i: forward(single_tensors[i]),
        }
        for i in range(min(warmup, n)):
            for name in NAMES:
                contenders[name](i)

        wall: dict[str, list[float]] = {name: [] for name in NAMES}
        cpu: dict[str, list[float]] = {name: [] for name in NAMES}
        scores: dict[str, list[float]] = {name: [] for name in NAMES}
        for start in range(0, n, block):
            for i in range(start, min(start + block, n)):
                order = NAMES[i % 3 :] + NAMES[: i % 3]
                for name in order:
                    w, c, out = timed(lambda name=name, i=i: contenders[name](i))
                    wall[name].append(w)
                    cpu[name].append(c)
                    value = out["score"].iloc[0] if isinstance(out, pd.DataFrame) else float(out.reshape(-1)[0])
                    scores[name].append(float(value))

        # Throughput: whole batches of the test split, contenders alternating per round.
        m = min(batch, len(frame))
        big = frame.head(m).reset_index(drop=True)
        big_tensors = tensors_of(big)
        batched: dict[str, Callable[[], object]] = {
            "pyfunc": lambda: pyfunc.predict(big),
            "predict_frame": lambda: predictor.predict_frame(big),
            "forward": lambda: forward(big_tensors),
        }
        for name in NAMES:
            batched[name]()  # warm-up
        batch_wall: dict[str, list[float]] = {name: [] for name in NAMES}
        batch_cpu: dict[str, list[float]] = {name: [] for name in NAMES}
        for r in range(rounds):
            for name in NAMES if r % 2 == 0 else NAMES[::-1]:
                w, c, _ = timed(batched[name])
                batch_wall[name].append(w)
                batch_cpu[name].append(c)

    agree = max(abs(a - b) for name in NAMES for a, b in zip(scores[name], scores["forward"], strict=True))
    if agree > 1e-4:
        raise SystemExit(f"contenders disagree on the scores (max |diff| {agree:.2g}): not the same model")
    results = []
    for name in NAMES:
        base = wall["forward"]
        results.append(
            {
                "contender": name,
                "rows": n,
                "latency_ms_p50": 1000 * statistics.median(wall[name]),
                "latency_ms_p95": 1000 * percentile(wall[name], 95),
                "cpu_ms_p50": 1000 * statistics.median(cpu[name]),
                "ratio_vs_forward": statistics.median(t / b for t, b in zip(wall[name], base, strict=True)),
                "overhead_ms_p50": 1000 * statistics.median(t - b for t, b in zip(wall[name], base, strict=True)),
                "batch": m,
                "throughput_per_s": statistics.median(m / t for t in batch_wall[name]),
                "throughput_per_s_cpu": statistics.median(m / t for t in batch_cpu[name]),
                "throughput_ratio_vs_forward": statistics.median(
                    t / b for t, b in zip(batch_wall[name], batch_wall["forward"], strict=True)
                ),
            }
        )

    table = Table(
        title=f"Served model ({sum(p.numel() for p in net.parameters()) / 1e6:.1f}M params, {head} head) on "
        f"{n} test rows at batch 1 (blocks of {block}, rotated) and batch {m} x {rounds} rounds; "
        f"images inline (base64); {torch.get_num_threads()} torch thread(s); medians"
    )
    columns = ("contender", "p50 ms", "p95 ms", "CPU p50 ms", "x forward b1", "+ms b1", f"samples/s b{m}",
               f"x forward b{m}")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["contender"], f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p95']:.2f}", f"{r['cpu_ms_p50']:.2f}",
            f"{r['ratio_vs_forward']:.2f}", f"{r['overhead_ms_p50']:+.2f}", f"{r['throughput_per_s']:.0f}",
            f"{r['throughput_ratio_vs_forward']:.2f}",
        )  # fmt: skip
    Console(width=160).print(table)
    print(
        "x forward: contender time / bare forward time, median over the same rows (b1) or adjacent runs (batch); "
        f"+ms: contender minus forward per row; scores agree within {agree:.1g}"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "rows": n, "block": block, "batch": m, "rounds": rounds, "warmup": warmup, "threads": torch.get_num_threads(),
        "images": "base64", "mlflow": mlflow.__version__, "torch": torch.__version__,
    }  # fmt: skip
    json_path.write_text(json.dumps({"settings": settings, "rows": results}, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
