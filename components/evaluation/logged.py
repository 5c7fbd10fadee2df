"""What the evaluate and robustness stages log into a pipeline run, as `Logged` payloads (components.tracking logs
them):

    evaluate     `valid_<metric>` / `test_<metric>` on every head's run (the same keys, so the compare view lines
                 them up) and the monitored head's on the parent; with several seeds, each metric's mean and std over
                 them beside it (`test_mae_mean`, `test_mae_std`) and each seed's on its run; the reports, and the
                 plot data and PNGs as `plots/` and `plots/images/`
    robustness   `robust_<perturbation>_<severity>_<metric>` likewise; the report, and the plot data and figure as
                 `plots/robustness/` and `plots/images/`

Head runs are training's, ended when its last epoch ended: results logged after it do not reopen them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from components.evaluation.reports import EvaluationReport, RobustnessReport, SeedSummary
from components.tracking import Artifact, ChildRun, Logged, flatten

if TYPE_CHECKING:
    from components.core.config import EvaluateParams, RobustnessParams
    from components.evaluation.metrics import Kind
    from components.models.spec import ModelSpec

__all__ = [
    "HEAD",
    "SEED",
    "evaluation_logged",
    "head_child",
    "robustness_logged",
    "robustness_metrics",
    "seed_child",
    "seed_metrics",
    "split_metrics",
]

HEAD = "msa.head"  # the tag of a head's run (training creates them)
SEED = "msa.seed"  # the tag of a seed's run, in a multi-seed training


def head_child(head: str, logged: Logged) -> ChildRun:
    """`logged` into the run of `head`, as it is (training's, ended)."""
    return ChildRun("head", head, logged, tags={HEAD: head}, reopen=False)


def seed_child(seed: int, logged: Logged) -> ChildRun:
    """`logged` into the newest run of `seed` (its latest training attempt's), as it is."""
    return ChildRun("seed", f"seed {seed}", logged, tags={SEED: str(seed)}, match={SEED: str(seed)}, reopen=False)


def evaluation_logged(
    spec: ModelSpec, paths: EvaluateParams, report: EvaluationReport, seeds: SeedSummary | None = None
) -> Logged:
    """Every head's valid and test metrics on its run, the monitored head's on the parent; the reports, plot data
    and figures that evaluate wrote to `paths`. With several seeds, their mean and std too, and each seed's."""
    from components.models.store import monitored_head

    several = seeds if seeds is not None and seeds.several else None  # one seed's summary adds nothing

    def scores(head: str) -> dict[str, float]:
        return split_metrics(report.splits, head) | (seed_metrics(several, head) if several else {})

    monitored = monitored_head(spec)
    children = [head_child(head, Logged(metrics=scores(head))) for head in spec.heads]
    if several:
        children += [
            seed_child(int(s), Logged(metrics=split_metrics(run, monitored))) for s, run in several.runs.items()
        ]
    artifacts = (
        Artifact(paths.seeds, "reports", optional=True),
        Artifact(paths.report, "reports"),
        Artifact(paths.plots, "plots", contents=True),
        Artifact(paths.figures, "plots/images", contents=True),
    )
    return Logged(metrics=scores(monitored), artifacts=artifacts, children=tuple(children))


def split_metrics(splits: Mapping[str, Mapping[str, Mapping[str, Any]]], head: str) -> dict[str, float]:
    """`{split}_{metric}` of one head (per-class tables flattened: `test_per_class_<class>_f1`)."""
    return {
        f"{split}_{key}": value
        for split, heads in splits.items()
        if head in heads
        for key, value in flatten(heads[head], "_").items()
    }


def seed_metrics(seeds: SeedSummary, head: str) -> dict[str, float]:
    """`{split}_{metric}_mean` and `_std` of one head over the seeds of a multi-seed training."""
    over = {"mean": seeds.mean, "std": seeds.std}
    return {
        f"{key}_{stat}": value for stat, splits in over.items() for key, value in split_metrics(splits, head).items()
    }


def robustness_logged(spec: ModelSpec, paths: RobustnessParams, report: RobustnessReport) -> Logged:
    """`robust_*` of every head on its run, the monitored head's on the parent; the report, plot data and figure
    that robustness wrote to `paths`."""
    from components.models.store import monitored_head

    kind = spec.label.kind
    children = tuple(head_child(h, Logged(metrics=robustness_metrics(report, h, kind))) for h in spec.heads)
    artifacts = (
        Artifact(paths.report, "reports"),
        Artifact(paths.plots, "plots/robustness", contents=True),
        Artifact(paths.figure, "plots/images", optional=True),
    )
    return Logged(
        metrics=robustness_metrics(report, monitored_head(spec), kind), artifacts=artifacts, children=children
    )


def robustness_metrics(report: RobustnessReport, head: str, kind: Kind) -> dict[str, Any]:
    """The robustness metric and the primary one (`robust_text_typos_0.3_acc2`) of `head` under each setting."""
    from components.evaluation.metrics import primary_metric

    keys = dict.fromkeys((report.metric, primary_metric(kind)[0]))
    return {
        f"robust_{name}_{severity}_{key}": scores[head][key]
        for name, severity, scores in report.settings()
        if head in scores
        for key in keys
        if key in scores[head]
    }
