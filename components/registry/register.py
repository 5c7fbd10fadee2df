"""Registration: one pipeline run's model, made a version of the registered model and moved through the gate.

`register` runs last in a pipeline run (components.tracking.runs opened it): it publishes the served model (named
like the registered model) and the model card into the run, creates the version linked to that logged model, and
moves the aliases. It never leaves a half-registered version: the gate's inputs are gathered and checked before
anything is created (components.registry.gate), and a version whose registration fails halfway is removed
(components.registry.versions). `record_and_register` is `msa register` after `dvc repro`: the run recorded from
the files the stages wrote, then registered.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from components import tracking
from components.core.config import Params
from components.core.errors import TrackingError, first_line
from components.data.dataset import Dataset, read_dataset
from components.evaluation.metrics import primary_metric
from components.registry import reports
from components.registry.card import (
    _robustness_section,  # noqa: F401 - tests/unit/evaluation/test_robustness.py imports it here
    model_card,
    seeds_tag,
)
from components.registry.context import (
    RunContext,
    Skipped,
    Verified,
    registered_with_same_lineage,
    robustness_report,
    run_context,
    run_name,
    verified_outputs,
)
from components.registry.gate import Candidate, Decision, decide, robustness_gate, robustness_tag
from components.registry.gate import champion_score as _champion_score  # noqa: F401 - tests import it from here
from components.registry.versions import CHALLENGER, CHAMPION, check_compatible, create_version
from components.serving.publish import model_signature

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.evaluation.reports import SeedSummary
    from components.features.contract import FeaturizerState
    from components.models.store import ModelCard
    from components.serving.package import Evidence
    from components.training.run_log import TrainingLog

__all__ = [
    "Registration",
    "RunContext",
    "Skipped",
    "model_signature",
    "record_and_register",
    "record_validation",
    "register",
    "registered_with_same_lineage",
    "robustness_gate",
    "run_context",
    "run_name",
    "verified_outputs",
]


@dataclass(frozen=True)
class Registration:
    experiment: str
    run_id: str
    name: str
    version: str
    metric: str  # "<split> <head> <metric>"
    score: float
    champion_before: str | None  # the champion's version when the gate ran
    champion_score: float | None
    promoted: bool
    decision: str
    variant: str  # what the version serves: "baseline" (the uncompressed torch model) or a compress variant
    url: str = ""  # the run in the MLflow UI, in its model-training view
    runs_url: str = ""  # the experiment's runs table there

    registered: ClassVar[bool] = True

    def summary(self) -> str:
        return (
            f"register: run {self.run_id} in experiment '{self.experiment}'; {self.name} version {self.version} is "
            f"{CHALLENGER}{f' and {CHAMPION}' if self.promoted else ''} ({self.decision}); it serves {self.variant}"
            + (f"\n  MLflow: {self.url}" if self.url else "")
        )


def register(
    client: MlflowClient,
    params: Params,
    run_id: str,
    context: RunContext,
    *,
    model_digest: str | None = None,
    force_gate_rescore: bool = False,
    verified: Verified | None = None,
) -> Registration:
    """Log the model and its card into the pipeline run `run_id`, register a version and apply the gate.

    Reads what the stages wrote: featurize.out, train.out, evaluate.report, compress.report. `model_digest`, when
    given, is what train.out must still hold (the model training uploaded and the pipeline checked): anything that
    rewrote it since is refused. `force_gate_rescore` re-scores the champion on the test split even when its
    recorded score was measured on the same split. The package holds the drift reference of the dataset."""
    from components.serving import publish

    trained = verified or verified_outputs(params, context.lineage)
    if model_digest is not None and trained.model != model_digest:
        raise TrackingError(
            f"{params.train.out} no longer holds the model this run trained and evaluated (digest "
            f"{model_digest[:12]}...): something rewrote it meanwhile. Nothing was registered"
        )
    model = _served_model(params, trained)
    name, test_split, candidate = context.model_name, context.tags["msa.test_split"], model.candidate
    with tempfile.TemporaryDirectory(prefix="msa-package-") as tmp:
        package = publish.signed_package(
            params.train.out,
            params.featurize.out,
            Path(tmp) / "package",
            params.serve,
            model.path,
            _evidence(run_id, model, test_split, trained),
            (model.dataset, params.drift),
        )
        example = publish.input_example(model.dataset, params.serve)
        signature = model_signature(model.card.spec, model.state)
        check_compatible(client, name, signature)  # the gate's inputs before anything is written
        decision = decide(
            client, name, candidate, params.registry, model.dataset, test_split, rescore=force_gate_rescore
        )
        seeds = reports.seed_summary(params.evaluate.seeds)
        text = model_card(
            context.tags,
            model.dataset.manifest.synthetic,
            model.card,
            trained.evaluation,
            trained.compression,
            candidate.variant,
            candidate.robust,
            seeds,
        )
        client.log_text(run_id, text, "model_card.md")
        clips = bool(model.state.clip_modalities)
        with publish.logged_model(run_id, name, package, signature, example, clips=clips) as info:
            tags = _gate_tags(candidate, decision, seeds, context, model_digest)
            version = create_version(client, name, info, run_id, tags, decision.promoted)
            _copy_tags(client, run_id, {**tags, "msa.registered_version": version})
    return _registration(client, context, run_id, version, candidate, decision)


def _registration(
    client: MlflowClient, context: RunContext, run_id: str, version: str, candidate: Candidate, decision: Decision
) -> Registration:
    """What `register` did, with the links to its run and to the experiment's runs."""
    experiment_id = client.get_run(run_id).info.experiment_id
    return Registration(
        experiment=context.experiment,
        run_id=run_id,
        name=context.model_name,
        version=version,
        metric=candidate.measured,
        score=candidate.score,
        champion_before=decision.champion.version if decision.champion else None,
        champion_score=decision.champion_score,
        promoted=decision.promoted,
        decision=decision.why,
        variant=candidate.variant,
        url=tracking.ui_url(experiment_id, run_id),
        runs_url=tracking.ui_url(experiment_id),
    )


def _copy_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """The version's tags on the run too. The version is complete and carries them itself: the run's copy is a
    convenience, and a failure here must not make a retry register the same model twice."""
    try:
        tracking.log_tags(client, run_id, tags)
    except Exception as e:  # noqa: BLE001
        logging.getLogger(__name__).warning(f"run {run_id}: gate tags not copied ({first_line(e)})")


@dataclass(frozen=True)
class _ServedModel:
    """What registration packages and gates: the trained model, or the compressed variant of it that serves."""

    state: FeaturizerState
    dataset: Dataset
    card: ModelCard
    path: str | None  # the compressed variant's directory, as compress wrote it; None: the uncompressed model
    candidate: Candidate


def _served_model(params: Params, trained: Verified) -> _ServedModel:
    from components.compression.report import served_variant
    from components.features.contract import read_state
    from components.models import store as model_store

    state = read_state(params.featurize.out)
    dataset = read_dataset(params.data.raw)
    card = model_store.read_card(params.train.out)
    metrics, compression = trained.evaluation, trained.compression
    robust = robustness_report(params, trained.model)
    head, (metric, _) = card.monitor.head, primary_metric(state.label_kind)
    if "test" not in metrics or head not in metrics["test"]:
        raise TrackingError(f"{params.evaluate.report}: no test metrics for head {head!r}: evaluate the test split")
    variant = served_variant(compression or {}, params.registry.variant, params.compress.report)
    # The gate scores what will serve: a variant's own test score, measured by compress on the same split.
    served = compression.variants[variant] if compression is not None and variant else None
    measured = served.metrics[metric] if served else metrics["test"][head][metric]
    score = float(cast("float", measured))  # the primary metric: a number
    robust_tag = robustness_tag(dataset, robust) if robust is not None else "none"
    candidate = Candidate(state.label_kind, head, metric, score, variant or "baseline", robust, robust_tag)
    return _ServedModel(state, dataset, card, served.path if served else None, candidate)


def _evidence(run_id: str, model: _ServedModel, test_split: str, trained: Verified) -> Evidence:
    """What the package signs of this registration: the gate's score and what it was measured on."""
    from components.evaluation.logged import robustness_metrics
    from components.serving.package import Evidence

    c, manifest, lineage = model.candidate, model.dataset.manifest, trained.lineage
    robust = _finite(robustness_metrics(c.robust, c.head, c.kind)) if c.robust is not None else {}
    return Evidence(
        run_id=run_id,
        metric=c.measured,
        score=c.score,
        test_split=test_split,
        variant=c.variant,
        dataset=manifest.name,
        dataset_version=manifest.version,
        data_hash=lineage.data,
        params_hash=lineage.params,
        code_hash=lineage.code,
        robustness=c.robust_tag,
        robust=robust,
    )


def _gate_tags(
    candidate: Candidate, decision: Decision, seeds: SeedSummary | None, context: RunContext, model_digest: str | None
) -> dict[str, str]:
    """The version's tags: the gate's inputs and decision, and the lineage, so a later run can tell it would train
    the same model."""
    champion = decision.champion
    return {
        "msa.metric": candidate.measured,
        "msa.score": f"{candidate.score:.6g}",
        "msa.champion_before": champion.version if champion else "none",
        "msa.champion_score": "none" if decision.champion_score is None else f"{decision.champion_score:.6g}",
        "msa.decision": decision.why,
        "msa.variant": candidate.variant,
        "msa.robustness": candidate.robust_tag,
        "msa.seeds": seeds_tag(seeds),
        **context.tags,
        **({"msa.model_digest": model_digest} if model_digest else {}),
    }


def record_and_register(
    params: Params, *, force: bool = False, force_gate_rescore: bool = False
) -> Registration | Skipped:
    """`msa register` after `dvc repro`: one pipeline run recorded from the files the stages wrote, then registered.

    The same records as a live `msa run` (dataset, validation, per-head curves and metrics, variants), logged at
    once: DVC ran the stages without MLflow. Like `msa run`, it records and registers nothing when a registered
    version has the same lineage, unless `force`.
    """
    from components.compression.logged import compression_logged
    from components.evaluation.logged import evaluation_logged, robustness_logged
    from components.models.store import read_card, read_history
    from components.training.run_log import TrainingLog

    context = run_context(params)
    verified = verified_outputs(params, context.lineage)  # before the tracking store is even opened
    if not force and (same := registered_with_same_lineage(params, context.lineage)) is not None:
        return same
    card, history = read_card(params.train.out), read_history(params.train.out)
    robust = robustness_report(params, verified.model)
    with (
        tracking.connected(params.registry) as client,
        tracking.pipeline_run(client, context.experiment, run_name(), context.tags, params) as run_id,
    ):
        record_validation(client, params, run_id, context)
        log = TrainingLog(client, run_id, card.spec, params.train.out, params=params)
        for record in history:
            log.log_epoch(record)
        seeds = reports.seed_summary(params.evaluate.seeds)
        if seeds is not None and seeds.several:
            _record_seeds(log, params)
        log.finish()
        log.close("FINISHED")
        tracking.log(client, run_id, evaluation_logged(card.spec, params.evaluate, verified.scores, seeds))
        if robust is not None:
            tracking.log(client, run_id, robustness_logged(card.spec, params.robustness, robust))
        if verified.compression is not None:
            c = params.compress
            tracking.log(client, run_id, compression_logged(verified.compression, c.report, c.tolerance))
        return register(client, params, run_id, context, force_gate_rescore=force_gate_rescore, verified=verified)


def _record_seeds(log: TrainingLog, params: Params) -> None:
    """Each seed's curves on its own run, and which seed is the model (training's seeds record)."""
    from components.models.store import SEEDS, read_history, seed_dirs

    for seed, directory in seed_dirs(params.train.out).items():
        for record in read_history(directory):
            log.on_epoch({**record, "seed": seed}, improved=False)
    trained = reports.trained_seeds(params.train.out / SEEDS)
    log.record_seeds([], {int(s): v for s, v in trained.valid.items()}, trained.chosen)


def record_validation(client: MlflowClient, params: Params, run_id: str, context: RunContext) -> None:
    """The dataset as the run's input, and the validation report when the validate stage wrote one."""
    from components.training.logged import training_input

    source = {"path": str(params.data.raw), "dvc_md5": context.tags["data_dvc_md5"], "git": context.tags["git_commit"]}
    dataset = training_input(read_dataset(params.data.raw), context.dataset_digest, source)
    tracking.log(client, run_id, tracking.Logged(inputs=(dataset,)))
    report = params.validation.report
    if report.is_file():
        logged = tracking.Logged(
            metrics=reports.validation_metrics(report), artifacts=(tracking.Artifact(report, "reports"),)
        )
        tracking.log(client, run_id, logged)


def _finite(numbers: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in numbers.items() if isinstance(v, int | float) and math.isfinite(v)}
