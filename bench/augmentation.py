"""Benchmark training-time augmentation (`train.augment`): clean and perturbed scores of the fused head, trained with
and without it, side by side in one run.

Datasets (`--datasets`, default both):
    demo   the synthetic demo (`msa data demo`, 1000 samples, every modality); params.yaml as it is
    mosi   real CMU-MOSI transcripts (../shared/datasets/mosi-text): train.tsv with a valid split carved from it,
           dev.tsv as the test split, text only, bench/mosi_text.py's frozen configuration
Each trains once per seed without augmentation and once with AUGMENT below, then runs the robustness stage
(components.evaluation.robustness, params.yaml's perturbations of the modalities the dataset has) on the test split. The
table gives the fused head's clean Acc-2 and MAE and its mean Acc-2 drop, in points, at each perturbation's middle
severity, per family (text, image, audio/vision frames, a missing modality).

AUGMENT was set before measuring, not tuned on any split: Robust-MSA-like rates, modality dropout only where there
is more than one modality. Choosing them belongs to `msa tune` on train/valid; dev is never tuned on.

    python bench/augmentation.py [--datasets demo mosi] [--seeds 0] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from _support.machine import this_machine
from mosi_text import CONFIGS, MOSI, SPLIT_SEED, VALID_FRAC
from rich.console import Console
from rich.table import Table

from components.core.config import DEFAULT_PARAMS, AugmentParams, Params, load_params
from components.data.demo import generate_demo
from components.data.importers import import_text_tsv
from components.evaluation.robustness import robustness
from components.features.featurize import featurize
from components.training.train import train

RESULTS = Path(__file__).parent / "results" / "augmentation.json"
AUGMENT = {
    "demo": AugmentParams(modality_dropout=0.3, token_dropout=0.1, feature_noise=0.1),
    "mosi": AugmentParams(token_dropout=0.1),
}
FAMILIES = {"text": ("text_",), "image": ("image_",), "frames": ("audio_", "vision_"), "missing": ("missing_",)}


def main(
    datasets: Annotated[list[str], typer.Option(help="demo, mosi")] = ["demo", "mosi"],  # noqa: B006
    mosi: Annotated[Path, typer.Option(help="mosi-text folder (train.tsv, dev.tsv).")] = MOSI,
    params: Annotated[Path, typer.Option(help="params.yaml to start from.")] = DEFAULT_PARAMS,
    seeds: Annotated[list[int], typer.Option(help="train.seed values.")] = [0],  # noqa: B006
    threads: Annotated[int, typer.Option(help="torch intra-op threads; 0: torch's default.")] = 1,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    if unknown := [d for d in datasets if d not in AUGMENT]:
        raise typer.BadParameter(f"unknown dataset(s) {unknown}; choose from {list(AUGMENT)}")
    if threads:
        torch.set_num_threads(threads)
    base = load_params(params)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for dataset in datasets:
            raw, p = _prepare(dataset, base, root, mosi)
            features = featurize(
                raw, p.featurize.model_copy(update={"out": root / f"features-{dataset}"}), progress=False
            )
            for seed in seeds:
                for augmented in (False, True):
                    augment = AUGMENT[dataset] if augmented else AugmentParams()
                    name = f"{dataset}-{seed}-{'augmented' if augmented else 'plain'}"
                    tp = p.train.model_copy(update={"out": root / name, "seed": seed, "augment": augment})
                    started = time.perf_counter()
                    trained = train(features.out, p.model, tp, progress=False)
                    train_s = time.perf_counter() - started
                    rp = p.robustness.model_copy(
                        update={
                            "report": root / f"{name}.json",
                            "plots": root / f"{name}-plots",
                            "figure": root / f"{name}.png",
                        }
                    )
                    report = robustness(raw, features.out, trained.out, rp, progress=False).scores
                    runs.append(
                        {
                            "dataset": dataset,
                            "seed": seed,
                            "augment": augment.model_dump(),
                            "augmented": augmented,
                            "train_s": train_s,
                            "epochs": trained.epochs_run,
                            "best_epoch": trained.best_epoch,
                            **summarize(report),
                            "robustness": report,
                        }
                    )
                    print(f"{name}: {trained.summary()}")
    print_table(runs)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    result = {
        "machine": machine.summary,
        "date": machine.date,
        "machine_details": machine.details,
        "augment": {k: v.model_dump() for k, v in AUGMENT.items()},
        "runs": runs,
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")


def _prepare(dataset: str, base: Params, root: Path, mosi: Path) -> tuple[Path, Params]:
    if dataset == "demo":
        return generate_demo(root / "demo", size=base.data.demo.size, seed=base.data.demo.seed), base
    raw = import_text_tsv(
        mosi / "train.tsv",
        root / "mosi",
        test=mosi / "dev.tsv",
        name="mosi-text",
        seed=SPLIT_SEED,
        valid_frac=VALID_FRAC,
    )
    config = CONFIGS["frozen"]
    p = base.model_copy(
        update={
            "featurize": base.featurize.model_copy(update=config["featurize"]),
            "model": base.model.model_copy(update=config["model"]),
            "train": base.train.model_copy(update=config["train"]),
        }
    )
    return raw, p


def summarize(report: dict) -> dict:
    """The fused head's clean scores and its mean Acc-2 drop (points) at each perturbation's middle severity, per
    family; the worst single perturbation."""
    head, metric = report["head"], report["metric"]
    clean = report["clean"][head]
    drops: dict[str, float] = {}
    for name, entry in report["perturbations"].items():
        severities = entry["severities"]
        middle = severities[list(severities)[len(severities) // 2]]
        # Scored on fewer samples (the only modality removed from some): not a drop of the same test set.
        if head in middle and middle[head]["samples"] == clean["samples"]:
            drops[name] = 100 * (clean[metric] - middle[head][metric])
    families = {
        family: float(np.mean(values)) if (values := [d for n, d in drops.items() if n.startswith(prefixes)]) else None
        for family, prefixes in FAMILIES.items()
    }
    worst = max(drops, key=drops.get) if drops else None
    return {
        "clean_acc2": clean["acc2"],
        "clean_mae": clean["mae"],
        "drop_by_family": families,
        "drops": drops,
        "worst": worst,
        "worst_drop": drops.get(worst),
    }


def print_table(runs: list[dict]) -> None:
    table = Table(title="Fused head, test split (MOSI: dev): clean, and mean Acc-2 drop (points) at middle severity")
    for column in ("dataset", "augment", "seed", "Acc-2", "MAE", *FAMILIES, "worst (drop)", "epochs", "train s"):
        table.add_column(column, justify="right")
    for r in runs:
        augment = ", ".join(f"{k} {v:g}" for k, v in r["augment"].items() if v) or "off"
        families = ["" if (d := r["drop_by_family"][f]) is None else f"{d:.1f}" for f in FAMILIES]
        worst = f"{r['worst']} ({r['worst_drop']:.1f})" if r["worst"] else ""
        table.add_row(
            r["dataset"],
            augment,
            str(r["seed"]),
            f"{100 * r['clean_acc2']:.1f}",
            f"{r['clean_mae']:.3f}",
            *families,
            worst,
            f"{r['best_epoch']}/{r['epochs']}",
            f"{r['train_s']:.0f}",
        )
    Console(width=180).print(table)


if __name__ == "__main__":
    typer.run(main)
