"""What `msa run` prints last when it registered a model: the scores, where its files are, how to use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from components.data.validation import html_path

if TYPE_CHECKING:
    from components.core.config import Params
    from components.registry.register import Registration

__all__ = ["run_summary"]


def run_summary(p: Params, registration: Registration) -> str:
    """Where a run's results are and how to use its model: what `msa run` prints last."""
    from components.models.store import CARD
    from components.tracking.connection import tracking_uri

    headline = json.loads(Path(p.evaluate.headline).read_text())
    split = "test" if "test" in headline else "valid"
    width = max(map(len, headline[split]))
    scores = [
        f"  {head:<{width}}  " + "  ".join(f"{metric} {value:.4f}" for metric, value in metrics.items())
        for head, metrics in headline[split].items()
    ]
    model = f"models:/{registration.name}/{registration.version}"
    uri = tracking_uri()
    on_server = uri.startswith(("http://", "https://"))
    ui = (
        [f"  open {registration.runs_url}"]
        if on_server
        else [f"  mlflow ui --backend-store-uri {uri}", f"  then open {registration.runs_url}"]
    )
    reports = (html_path(p.validation.report), p.evaluate.report, p.robustness.report, p.compress.report)
    return "\n".join(
        [
            f"\n{split} split, every head of the trained model:",
            *scores,
            f"  version {registration.version} serves {registration.variant}, which scores {registration.metric} "
            f"{registration.score:.4f} ({p.compress.headline} compares the variants)",
            "\nfiles:",
            f"  model card  {Path(p.train.out) / CARD} (model_card.md in the MLflow run)",
            f"  reports     {', '.join(map(str, reports))}",
            f"  figures     {p.evaluate.figures}/, {p.robustness.figure}",
            f"  metrics     {p.evaluate.headline}, {p.compress.headline} (dvc metrics show)",
            "\nMLflow (runs table, this run, the registry):",
            *ui,
            "\nuse the model:",
            f"  msa predict --model {model} --input examples/rows.jsonl",
            f"  msa serve {model} --port 5001",
            f"  mlflow models serve -m {model} --env-manager local --port 5001",  # MLflow's default store is ours
        ]
    )
