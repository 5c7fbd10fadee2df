"""The gate: whether a new version becomes `champion`. The first model does; a later one must beat the champion on
the same test split by more than `register.margin`, and with `register.robustness`, lose at most `max_drop` points
against it under one perturbation.

The champion's score is the one registration signed into its package when that was measured on the same split,
else it is measured again: the champion is loaded through serving and its predictions scored by evaluation. Tags
are never read: anyone with registry access can edit them.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.core.config import RegisterParams, RobustnessGate
from components.core.errors import DataError, TrackingError, TrainingError
from components.data.dataset import Dataset
from components.evaluation.metrics import Kind, is_better, primary_metric
from components.evaluation.reports import RobustnessReport
from components.registry.context import split_fingerprint
from components.registry.versions import champion_version

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.serving.package import Evidence

__all__ = ["Candidate", "Decision", "champion_score", "decide", "gate", "robustness_gate", "robustness_tag"]


@dataclass(frozen=True)
class Candidate:
    """What the gate weighs of the model being registered."""

    kind: Kind  # the label kind: what "better" means
    head: str  # the head that serves predictions
    metric: str  # the primary metric of `kind`
    score: float  # the served model's test score
    variant: str  # what it serves: "baseline" (the uncompressed torch model) or a compress variant
    robust: RobustnessReport | None  # its robustness report
    robust_tag: str  # what that was measured on (`robustness_tag`); "none" without one

    @property
    def measured(self) -> str:
        """What `score` is: "<split> <head> <metric>"."""
        return f"test {self.head} {self.metric}"


@dataclass(frozen=True)
class Decision:
    champion: Any | None  # the champion's version when the gate ran
    champion_score: float | None
    promoted: bool
    why: str


def decide(
    client: MlflowClient,
    name: str,
    candidate: Candidate,
    settings: RegisterParams,
    dataset: Dataset,
    test_split: str,
    *,
    rescore: bool = False,
) -> Decision:
    """The gate on `candidate` against the champion of `name`, whose score is measured on `test_split` (the
    fingerprint of `dataset`'s test split): signed into its package, or again when `rescore`."""
    champion = champion_version(client, name)
    score, evidence = None, None
    if champion is not None:
        score, evidence = champion_score(champion, name, dataset, test_split, candidate.metric, rescore)
    promoted, why = gate(candidate.kind, candidate.score, champion, score, settings.margin)
    if settings.robustness is not None:
        assert candidate.robust is not None  # robustness_report reads it whenever the gate asks for a condition
        holds, said = robustness_gate(
            settings.robustness, candidate.robust, candidate.head, candidate.robust_tag, champion, evidence
        )
        promoted, why = promoted and holds, why + said
    return Decision(champion, score, promoted, why)


def gate(kind: Kind, score: float, champion: Any, champion_score: float | None, margin: float) -> tuple[bool, str]:
    """(promote?, why): the first model becomes champion; later ones must beat it by more than `margin`."""
    metric, mode = primary_metric(kind)
    if champion is None:
        return True, "first model: promoted to champion"
    if champion_score is None or not math.isfinite(champion_score):
        return True, f"champion v{champion.version} has no usable test score: promoted"
    target = champion_score - margin if mode == "min" else champion_score + margin
    if is_better(kind, score, target):
        return (
            True,
            f"{metric} {score:.4f} beats champion v{champion.version}'s {champion_score:.4f} by more than {margin}",
        )
    return (
        False,
        f"{metric} {score:.4f} does not beat champion v{champion.version}'s {champion_score:.4f} by more than {margin}",
    )


def robustness_tag(dataset: Dataset, report: RobustnessReport) -> str:
    """What a robustness score was measured on: split, its fingerprint and the perturbations' seed. Two versions'
    `robust_*` metrics compare only when their tags are equal."""
    return f"{report.split}:{split_fingerprint(dataset, report.split)}:seed{report.seed}"


def robustness_gate(
    condition: RobustnessGate,
    report: RobustnessReport | Mapping[str, Any],
    head: str,
    tag: str,
    champion: Any,
    evidence: Evidence | None,
) -> tuple[bool, str]:
    """(holds?, why, to append to the clean gate's decision): under `condition`'s perturbation and severity, the
    challenger's robustness metric of `head` may be at most `max_drop` points below the champion's, as the
    champion's verified package records it (`evidence`: None when it has none or fails verification). A report as
    JSON is validated first."""
    from components.evaluation.robustness import severity_key

    report = RobustnessReport.model_validate(report)
    name, severity, metric = condition.perturbation, severity_key(condition.severity), report.metric
    perturbed = report.perturbations[name].severities.get(severity, {}) if name in report.perturbations else {}
    ours = perturbed.get(head, {}).get(metric)
    setting = f"{name} {severity}"
    if ours is None:
        skipped = [why for why in report.skipped if why.startswith(f"{name}:")]
        fix = skipped[0] if skipped else "run `msa robustness` with it in robustness.perturbations"
        raise TrackingError(
            f"register.robustness asks for {setting}, which the robustness report has no {head} {metric} for "
            f"({fix}). Nothing was registered"
        )
    if champion is None:
        return True, ""
    theirs = evidence.robust.get(f"robust_{name}_{severity}_{metric}") if evidence is not None else None
    if theirs is None or evidence is None or evidence.robustness != tag:
        return True, f"; robustness condition not applied: champion v{champion.version} has no {setting} score on {tag}"
    # The change is challenger - champion in points, signed (negative: the challenger scores lower), as every
    # change this project reports; register.robustness.max_drop is the largest loss it allows, i.e. down to -max_drop.
    change = 100 * (ours - theirs)
    said = (
        f"under {setting} its {metric} {100 * ours:.1f}, change {change:+.1f} points against champion "
        f"v{champion.version}'s {100 * theirs:.1f} (register.robustness allows down to -{condition.max_drop})"
    )
    if -change > condition.max_drop:
        return False, f"; but {said}"
    return True, f"; {said}"


def champion_score(
    champion: Any, name: str, dataset: Dataset, test_split: str, metric: str, rescore: bool
) -> tuple[float | None, Evidence | None]:
    """The champion's primary test metric on this test split: the score registration signed into its package when
    that was measured on the same split, else measured now through its package (a different dataset version has a
    different test split). Tags are never read: anyone with registry access can edit them. A champion whose
    signature fails is re-scored (its package is read as data only: no code of it runs); None for a model this
    project did not package, whose code is never run, or one that predicts other classes: the challenger wins.
    Also the champion's evidence, when its package is verified."""
    from components.core.errors import UntrustedModelError
    from components.evaluation.rescore import rescore as score_predictions
    from components.serving.package import dataset_bounds
    from components.serving.pyfunc import load_model
    from components.serving.values import raw_frame

    uri = f"models:/{name}/{champion.version}"
    with tempfile.TemporaryDirectory(prefix="msa-champion-") as tmp:
        log = logging.getLogger(__name__)
        try:
            model = load_model(uri, Path(tmp))
        except UntrustedModelError as e:
            try:
                model = load_model(uri, Path(tmp) / "unverified", verify=False)
            except UntrustedModelError:
                return None, None
            log.warning(f"champion v{champion.version} fails verification, re-scored: {e}")
        except (DataError, TrainingError) as e:  # an unreadable champion must not block every later registration
            log.warning(f"champion v{champion.version} cannot be loaded ({e}): the challenger is scored alone")
            return None, None
        evidence = model.evidence
        if evidence is not None and evidence.run_id != champion.run_id:  # another version's evidence, copied here
            log.warning(f"champion v{champion.version} carries the evidence of run {evidence.run_id}: re-scored")
            evidence = None
        measured = evidence is not None and (evidence.test_split, evidence.metric.rsplit(" ", 1)[-1])
        if not rescore and evidence is not None and measured == (test_split, metric):
            return evidence.score, evidence
        frame = raw_frame(dataset, "test")
        bounds = dataset_bounds(dataset, frame, model.predictor.limits)  # validated rows, not a stranger's request
        predicted = model.predictor.predict_frame(
            frame.drop(columns=["id", "label"]), image_root=dataset.root, bounds=bounds
        )
    return score_predictions(predicted, dataset, "test", metric), evidence
