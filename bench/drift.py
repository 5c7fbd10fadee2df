"""Benchmark the drift report: how often it calls a batch drifted when nothing moved, how often when one thing did,
and what it adds to `msa score`.

The trained demo model is packaged with the variant registration serves and the drift reference registration
signs into it (`drift:` of params.yaml). Batches of `--batch` rows are drawn, without overlap, from a fresh demo
dataset (`--seed`, never the model's), and each condition changes them:

    like training       nothing: the demo generator's rows, as the model's training data were drawn
    images missing      30% of the rows lose their image
    audio noise         Gaussian noise on every audio frame, its std half the spread of all audio values
    real transcripts    the texts swapped for CMU-MOSI dev transcripts (../shared/datasets/mosi-text), the
                        images and frames kept

Each batch goes through the code `msa score` runs (prepare, score, summarize, sample, compare). `called drifted` is
the share of batches whose report says drifted; the modality columns, the share that named that modality.
`like training` is the false-alarm rate (drift.level bounds it over draws of reference and batch alike).

The overhead: `msa score` on `--rows` demo rows as JSONL with the reference in the package and without, taking
turns for `--rounds` rounds; `x without` is the rows/s with drift over the rows/s without, in the same round.

    python bench/drift.py [--batches 20] [--batch 200] [--rows 5000] [--rounds 3]
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import tempfile
import time
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
from components.data.dataset import SPLITS, read_dataset
from components.data.demo import generate_demo
from components.monitoring.drift import DriftSample, compare
from components.monitoring.reference import REFERENCE_DIR, read_reference, write_reference
from components.serving import signing
from components.serving.monitored import batch_summaries, drift_reference, prediction_values
from components.serving.package import package_model
from components.serving.predictor import Predictor
from components.serving.publish import model_signature
from components.serving.score import score_input
from components.serving.values import raw_frame

RESULTS = Path(__file__).parent / "results" / "drift.json"
MOSI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mosi-text" / "dev.tsv"
MODALITIES = ("text", "image", "audio", "vision", "prediction")


def conditions(rng: np.random.Generator, spread: float) -> dict:
    transcripts = [r["text"] for r in csv.DictReader(MOSI.open(), delimiter="\t")] if MOSI.is_file() else []

    def images_missing(batch: pd.DataFrame) -> pd.DataFrame:
        lose = rng.random(len(batch)) < 0.3
        return batch.assign(
            image_base64=[None if gone else v for v, gone in zip(batch["image_base64"], lose, strict=True)]
        )

    def audio_noise(batch: pd.DataFrame) -> pd.DataFrame:
        noisy = [
            None if f is None else (np.asarray(f) + rng.normal(0, 0.5 * spread, np.shape(f))).tolist()
            for f in batch["audio"]
        ]
        return batch.assign(audio=noisy)

    def real_transcripts(batch: pd.DataFrame) -> pd.DataFrame:
        return batch.assign(text=list(rng.choice(transcripts, len(batch))))

    out = {"like training": lambda b: b, "images missing": images_missing, "audio noise": audio_noise}
    if transcripts:
        out["real transcripts"] = real_transcripts
    return out


def main(
    params_file: Annotated[Path, typer.Option("--params", help="params.yaml of the project.")] = Path("params.yaml"),
    batches: Annotated[int, typer.Option(min=1, help="Batches per condition.")] = 20,
    batch: Annotated[int, typer.Option(min=2, help="Rows per batch.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the fresh demo data the batches come from.")] = 11,
    rows: Annotated[int, typer.Option(min=1, help="Rows `msa score` scores per round of the overhead.")] = 5000,
    rounds: Annotated[int, typer.Option(min=1, help="Alternated rounds of the overhead.")] = 3,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    params = load_params(params_file)
    settings = params.drift
    torch.set_num_threads(1)
    report = json.loads(params.compress.report.read_text())
    variant = served_variant(report, params.registry.variant, params.compress.report)
    with tempfile.TemporaryDirectory(prefix="msa-bench-drift-") as tmp:
        root = Path(tmp)
        variant_dir = params.compress.out / variant if variant else None
        pack = package_model(params.train.out, params.featurize.out, root / "package", params.serve, variant_dir)
        predictor = Predictor(pack)
        write_reference(pack, drift_reference(predictor, read_dataset(params.data.raw), settings))
        fresh = read_dataset(generate_demo(root / "fresh", size=batches * batch * 2, seed=seed))
        frame = pd.concat([raw_frame(fresh, s, inline_images=True) for s in SPLITS]).drop(columns=["id", "label"])
        frame = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
        spread = float(np.std(np.concatenate([np.asarray(f) for f in frame["audio"] if f is not None])))
        rng = np.random.default_rng(seed)
        detection = []
        reference = read_reference(pack)
        assert reference is not None
        for name, change in conditions(rng, spread).items():
            reports = []
            for b in range(batches):
                rows_b = change(frame.iloc[b * batch : (b + 1) * batch].reset_index(drop=True))
                prepared = predictor.prepare_frame(rows_b)
                sample = DriftSample(settings.sample_rows, settings.seed)
                sample.add(batch_summaries(predictor, prepared), prediction_values(predictor, predictor.run(prepared)))
                reports.append(compare(reference, sample, settings))
            detection.append(
                {
                    "condition": name,
                    "batches": batches,
                    "called_drifted": sum(r.drifted for r in reports) / batches,
                    **{m: sum(r.modalities[m].drifted for r in reports) / batches for m in MODALITIES},
                }
            )
        overhead = _overhead(root, pack, predictor, frame, rows, rounds)

    table = Table(
        title=f"Drift reports on {batches} batches of {batch} fresh demo rows per condition (level "
        f"{settings.level:g}; {variant or 'torch'}): the share called drifted, and naming each modality"
    )
    for column in ("condition", "called drifted", *MODALITIES):
        table.add_column(column, justify="right")
    for d in detection:
        table.add_row(d["condition"], f"{d['called_drifted']:.2f}", *(f"{d[m]:.2f}" for m in MODALITIES))
    Console(width=150).print(table)
    print(
        f"msa score on {rows} rows: {overhead['with_drift']:.0f} rows/s with the drift report, "
        f"{overhead['without']:.0f} without: {overhead['x_without']:.2f}x"
    )
    machine = this_machine()
    results = {
        "settings": {
            "batches": batches,
            "batch": batch,
            "seed": seed,
            "level": settings.level,
            "reference_rows": settings.reference_rows,
            "permutations": settings.permutations,
            "variant": variant,
            "machine": machine.summary,
            "date": machine.date,
            "machine_details": machine.details,
        },
        "detection": detection,
        "overhead": overhead,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {json_path}")


def _overhead(root: Path, pack: Path, predictor: Predictor, frame: pd.DataFrame, rows: int, rounds: int) -> dict:
    """`msa score` with and without the package's reference, on the same rows, taking turns."""
    import mlflow

    bare = root / "package-without"
    shutil.copytree(pack, bare)
    shutil.rmtree(bare / REFERENCE_DIR)
    models = {}
    for name, package in (("with_drift", pack), ("without", bare)):
        signing.sign(package)
        models[name] = root / f"pyfunc-{name}"
        mlflow.pyfunc.save_model(
            str(models[name]),
            loader_module="components.serving",
            data_path=str(package),
            signature=model_signature(predictor.spec),
        )
    data = root / "rows.jsonl"
    frame.iloc[np.arange(rows) % len(frame)].to_json(data, orient="records", lines=True)
    wall: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in range(rounds):
        for name in order[r % 2 :] + order[: r % 2]:
            started = time.perf_counter()
            score_input(str(models[name]), data, root / f"out-{name}-{r}.parquet", progress=False)
            wall[name].append(time.perf_counter() - started)
    ratios = [b / a for a, b in zip(wall["with_drift"], wall["without"], strict=True)]
    return {
        "rows": rows,
        "rounds": rounds,
        "with_drift": statistics.median(rows / t for t in wall["with_drift"]),
        "without": statistics.median(rows / t for t in wall["without"]),
        "x_without": statistics.median(ratios),
    }


if __name__ == "__main__":
    typer.run(main)
