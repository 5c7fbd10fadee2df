"""The registry: one registered model name, each new version `challenger`, `champion` moved only by the gate.

`register` runs last in a pipeline run (components.tracking.runs opened it): it logs the pyfunc model (named like the
registered model) and the model card into the run, creates the version linked to that logged model, and moves the
aliases. It never leaves a half-registered version: the gate's inputs are gathered and checked before anything is
created, and when a step after `create_model_version` fails the version is deleted (or, if the server cannot even
do that, tagged `msa.status=failed` without an alias). `champion` moves last, and only when the candidate beats
the champion on the same test split by more than `register.margin`.

`registered_with_same_lineage` is the policy that skips a retrain: when a registered version was trained from the
same data, settings and code, there is nothing new to learn. `msa register`, the pipeline flow and its register
task all ask it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import yaml

from components.core.config import Params, RobustnessGate
from components.core.errors import DataError, TrackingError, TrainingError
from components.data.dataset import SEQUENCE_MODALITIES, Dataset, read_dataset, read_manifest
from components.evaluation.metrics import is_better, metrics_for, primary_metric
from components.models.spec import ModelSpec
from components.tracking import runs as tracking
from components.training.lineage import Lineage, lineage

if TYPE_CHECKING:
    from components.features.contract import FeaturizerState
    from components.serving.pyfunc import Evidence

CHALLENGER, CHAMPION = "challenger", "champion"
PIP_REQUIREMENTS = (
    "torch", "transformers", "safetensors", "onnxruntime", "numpy", "pandas", "pillow", "pydantic", "pyyaml"
)  # fmt: skip
CLIP_REQUIREMENTS = ("av", "librosa", "threadpoolctl")  # a model that extracts features from clips
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the versions made from it (what the UI reads)


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


@dataclass(frozen=True)
class Skipped:
    """A run that had nothing new to train: a registered version has its data, settings and code."""

    reason: str
    registered: ClassVar[bool] = False

    def summary(self) -> str:
        return f"nothing registered: {self.reason}"


@dataclass(frozen=True)
class RunContext:
    """What every record of one pipeline run shares, computed once per run: hashes are not cheap."""

    lineage: Lineage
    experiment: str
    model_name: str
    tags: dict[str, str]  # lineage, git commit, data.dvc md5, dataset name and version, test split fingerprint
    dataset_digest: str  # data.dvc's md5 (what `dvc pull` fetches for this commit), else the content hash


def run_context(params: Params, ours: Lineage | None = None) -> RunContext:
    dataset = read_dataset(params.data.raw)
    manifest = dataset.manifest
    ours = ours or lineage(params)
    dvc_md5 = _data_dvc_md5()
    tags = {
        **ours.tags(),
        "git_commit": _git_commit(),
        "data_dvc_md5": dvc_md5,
        "dataset": manifest.name,
        "dataset_version": manifest.version,
        "msa.test_split": split_fingerprint(dataset, "test"),
    }
    return RunContext(
        lineage=ours,
        experiment=params.registry.experiment or manifest.name,
        model_name=params.registry.model_name or manifest.name,
        tags=tags,
        dataset_digest=dvc_md5 if dvc_md5 != "unknown" else ours.data,
    )


def run_name() -> str:
    return f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"


def register(
    client: Any,
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
    recorded score was measured on the same split.
    """
    import mlflow

    from components.compression.compress import served_variant
    from components.features.contract import read_state
    from components.models import store as model_store
    from components.serving.pyfunc import LOADER_MODULE, Evidence, package_model, raw_frame, signing, write_evidence

    trained = verified or verified_outputs(params, context.lineage)
    if model_digest is not None and trained.model != model_digest:
        raise TrackingError(
            f"{params.train.out} no longer holds the model this run trained and evaluated (digest "
            f"{model_digest[:12]}...): something rewrote it meanwhile. Nothing was registered"
        )
    state = read_state(params.featurize.out)
    dataset = read_dataset(params.data.raw)
    card = model_store.read_card(params.train.out)
    metrics, compression = trained.evaluation, trained.compression
    robust = robustness_report(params, trained.model)
    head, (metric, _) = card.monitor.head, primary_metric(state.label_kind)
    if "test" not in metrics or head not in metrics["test"]:
        raise TrackingError(f"{params.evaluate.report}: no test metrics for head {head!r}: evaluate the test split")
    variant = served_variant(compression, params.registry.variant, params.compress.report)
    # The gate scores what will serve: a variant's own test score, measured by compress on the same split.
    served = compression["variants"][variant] if variant else None
    score = float(served["metrics"][metric] if served else metrics["test"][head][metric])
    name, test_split = context.model_name, context.tags["msa.test_split"]
    robust_tag = robustness_tag(dataset, robust) if robust else "none"

    with tempfile.TemporaryDirectory(prefix="msa-package-") as tmp:
        package = package_model(
            params.train.out,
            params.featurize.out,
            Path(tmp) / "package",
            params.serve,
            variant=served["path"] if served else None,
        )
        write_evidence(
            package,
            Evidence(
                run_id=run_id, metric=f"test {head} {metric}", score=score, test_split=test_split,
                variant=variant or "baseline", dataset=dataset.manifest.name,
                dataset_version=dataset.manifest.version, data_hash=trained.lineage.data,
                params_hash=trained.lineage.params, code_hash=trained.lineage.code, robustness=robust_tag,
                robust=_finite(tracking.robustness_metrics(robust, head, state.label_kind)) if robust else {},
            ),
        )  # fmt: skip
        signing.sign(package)  # last: the signature covers every file the package holds
        example = raw_frame(dataset, "test", limit=2, inline_images=True).drop(columns=["id", "label"])
        # An example the served model would refuse is no example: clips over the serving bound stay out of it.
        too_big = [c for c in ("audio_base64", "video_base64") if c in example and _longest(example[c]) > 
                   params.serve.max_clip_base64_chars]  # fmt: skip
        example = example.drop(columns=too_big)
        signature = model_signature(card.spec, state)
        _check_compatible(client, name, signature)  # the gate's inputs before anything is written
        champion = _champion(client, name)
        champion_score, evidence = None, None
        if champion is not None:
            champion_score, evidence = _champion_score(champion, name, dataset, test_split, metric, force_gate_rescore)
        promoted, decision = gate(state.label_kind, score, champion, champion_score, params.registry.margin)
        if params.registry.robustness is not None:
            holds, why = robustness_gate(params.registry.robustness, robust, head, robust_tag, champion, evidence)
            promoted, decision = promoted and holds, decision + why
        seeds = _read_json(params.evaluate.seeds, "run `msa evaluate`") if params.evaluate.seeds.is_file() else {}
        text = model_card(
            context.tags, dataset.manifest.synthetic, card, metrics, compression, variant or "baseline", robust, seeds
        )
        client.log_text(run_id, text, "model_card.md")
        with mlflow.start_run(run_id=run_id):  # log_model logs into the active run; registration ends the run
            info = mlflow.pyfunc.log_model(
                name=name,
                loader_module=LOADER_MODULE,  # the installed package's code: none travels with the model
                data_path=str(package),
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(clips=bool(state.clip_modalities)),
            )
            gate_tags = {
                "msa.metric": f"test {head} {metric}",
                "msa.score": f"{score:.6g}",
                "msa.champion_before": champion.version if champion else "none",
                "msa.champion_score": "none" if champion_score is None else f"{champion_score:.6g}",
                "msa.decision": decision,
                "msa.variant": variant or "baseline",
                "msa.robustness": robust_tag,
                "msa.seeds": _seeds_tag(seeds),
                **context.tags,  # the lineage, so a later run can tell it would train the same model
                **({"msa.model_digest": model_digest} if model_digest else {}),
            }
            version = _create_version(client, name, info, run_id, gate_tags, promoted)
            # The version is complete and carries these tags itself: the run's copy is a convenience, and a failure
            # here must not make a retry register the same model twice.
            try:
                tracking.log_tags(client, run_id, {**gate_tags, "msa.registered_version": version})
            except Exception as e:  # noqa: BLE001
                logging.getLogger(__name__).warning(f"run {run_id}: gate tags not copied ({tracking.first_line(e)})")
    return Registration(
        experiment=context.experiment,
        run_id=run_id,
        name=name,
        version=version,
        metric=f"test {head} {metric}",
        score=score,
        champion_before=champion.version if champion else None,
        champion_score=champion_score,
        promoted=promoted,
        decision=decision,
        variant=variant or "baseline",
        url=tracking.ui_url(experiment_id := client.get_run(run_id).info.experiment_id, run_id),
        runs_url=tracking.ui_url(experiment_id),
    )


def record_and_register(
    params: Params, *, force: bool = False, force_gate_rescore: bool = False
) -> Registration | Skipped:
    """`msa register` after `dvc repro`: one pipeline run recorded from the files the stages wrote, then registered.

    The same records as a live `msa run` (dataset, validation, per-head curves and metrics, variants), logged at
    once: DVC ran the stages without MLflow. Like `msa run`, it records and registers nothing when a registered
    version has the same lineage, unless `force`.
    """
    from components.models.store import read_card, read_history

    context = run_context(params)
    verified = verified_outputs(params, context.lineage)  # before the tracking store is even opened
    if not force and (same := registered_with_same_lineage(params, context.lineage)) is not None:
        return same
    card, history = read_card(params.train.out), read_history(params.train.out)
    metrics = verified.evaluation
    robust = robustness_report(params, verified.model)
    with (
        tracking.connected(params.registry) as client,
        tracking.pipeline_run(client, context.experiment, run_name(), context.tags, params) as run_id,
    ):
        record_validation(client, params, run_id, context)
        log = tracking.TrainingLog(client, run_id, card.spec, params.train.out, params=params)
        for record in history:
            log.log_epoch(record)
        e = params.evaluate
        seeds = _read_json(e.seeds, "run `msa evaluate`") if e.seeds.is_file() else {}
        if seeds.get("seeds"):
            from components.models.store import seed_dirs

            for seed, directory in seed_dirs(params.train.out).items():
                for record in read_history(directory):
                    log.on_epoch({**record, "seed": seed}, improved=False)
            log.record_seeds([], {int(s): v for s, v in _seed_record(params)["valid"].items()}, seeds["chosen"])
        log.finish()
        log.close("FINISHED")
        tracking.log_evaluation(client, run_id, card.spec, metrics, e.report, e.plots, e.figures, seeds, e.seeds)
        r = params.robustness
        if robust:
            tracking.log_robustness(client, run_id, card.spec, robust, r.report, r.plots, r.figure)
        if verified.compression:
            c = params.compress
            tracking.log_compression(client, run_id, verified.compression, c.report, c.tolerance)
        return register(client, params, run_id, context, force_gate_rescore=force_gate_rescore, verified=verified)


def _seed_record(params: Params) -> dict:
    from components.models.store import SEEDS

    return _read_json(params.train.out / SEEDS, "run `msa train`")


def record_validation(client: Any, params: Params, run_id: str, context: RunContext) -> None:
    """The dataset as the run's input, and the validation report when the validate stage wrote one."""
    source = {"path": str(params.data.raw), "dvc_md5": context.tags["data_dvc_md5"], "git": context.tags["git_commit"]}
    tracking.log_dataset(client, run_id, read_dataset(params.data.raw), context.dataset_digest, source)
    if params.validation.report.is_file():
        report = _read_json(params.validation.report, "run `msa validate`")
        tracking.log_validation(client, run_id, report, params.validation.report)


def gate(kind: str, score: float, champion: Any, champion_score: float | None, margin: float) -> tuple[bool, str]:
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


@dataclass(frozen=True)
class Verified:
    """What registration reads of the stages' outputs, once they are shown to be of one model trained on this data
    with these settings and this code."""

    model: str  # the trained model's digest
    lineage: Lineage  # the data, settings and code it was trained on: the version's tags
    evaluation: dict[str, Any]
    compression: dict[str, Any]  # {} when compress did not run


def verified_outputs(params: Params, ours: Lineage) -> Verified:
    """The chain from `params.data.raw` to every report: the features are of this data and these featurize
    settings, the model was trained on those features with these settings and this code, and each report scores
    that model. A broken link is one line naming the stage to run again; nothing is registered. `ours` is the
    lineage of the data and settings as they are now (`lineage(params)`)."""
    from components.features.contract import read_state
    from components.features.featurize import input_key
    from components.models import store as model_store
    from components.training.lineage import trained_code_hash
    from components.training.train import settings_hash

    features, out, again = params.featurize.out, params.train.out, "Nothing was registered"
    state = read_state(features)
    if state.key != input_key(params.data.raw, params.featurize):
        raise TrackingError(
            f"{features} was not made from {params.data.raw} as it is now with these featurize settings: run "
            f"`msa featurize` and the stages after it (`dvc repro` runs what is stale). {again}"
        )
    card = model_store.read_card(out)
    if card.featurizer_key != state.key:
        raise TrackingError(f"{out} was trained on other features than {features}: run `msa train`. {again}")
    made = card.trained_with
    if made is None or made.settings != settings_hash(params.model, params.train):
        raise TrackingError(
            f"{out} was trained with other model or train settings than the params now: run `msa train`. {again}"
        )
    if made.code != trained_code_hash():
        raise TrackingError(
            f"{out} was trained by other featurize or training code than this: run `msa train`. {again}"
        )
    model = model_store.digest(out)
    evaluation = _read_json(params.evaluate.report, "run `msa evaluate`")
    compression = _read_json(params.compress.report, "run `msa compress`") if params.compress.report.exists() else {}
    for report, stage, found in ((params.evaluate.report, "evaluate", evaluation),
                                 (params.compress.report, "compress", compression)):  # fmt: skip
        if found and found.get("model_digest") != model:
            raise TrackingError(f"{report} scores another model than {out}: run `msa {stage}`. {again}")
    evaluation = {split: heads for split, heads in evaluation.items() if split != "model_digest"}
    return Verified(model, ours, evaluation, compression)


def robustness_report(params: Params, model: str) -> dict[str, Any]:
    """The robustness report of the model in train.out, whose digest is `model` ({} when there is none and the
    gate does not ask for one); a report of another model is refused: its scores would be logged and gated on as
    this model's."""
    path = params.robustness.report
    if not path.exists() and params.registry.robustness is None:
        return {}
    report = _read_json(path, "run `msa robustness`")
    if report.get("model_digest") != model:
        raise TrackingError(
            f"{path} scores another model than {params.train.out}: run `msa robustness`. Nothing was registered"
        )
    return report


def robustness_tag(dataset: Dataset, report: Mapping[str, Any]) -> str:
    """What a robustness score was measured on: split, its fingerprint and the perturbations' seed. Two versions'
    `robust_*` metrics compare only when their tags are equal."""
    return f"{report['split']}:{split_fingerprint(dataset, report['split'])}:seed{report['seed']}"


def robustness_gate(
    condition: RobustnessGate,
    report: Mapping[str, Any],
    head: str,
    tag: str,
    champion: Any,
    evidence: Evidence | None,
) -> tuple[bool, str]:
    """(holds?, why, to append to the clean gate's decision): under `condition`'s perturbation and severity, the
    challenger's robustness metric of `head` may be at most `max_drop` points below the champion's, as the
    champion's verified package records it (`evidence`: None when it has none or fails verification)."""
    from components.evaluation.robustness import severity_key

    name, severity, metric = condition.perturbation, severity_key(condition.severity), report["metric"]
    ours = report["perturbations"].get(name, {}).get("severities", {}).get(severity, {}).get(head, {}).get(metric)
    setting = f"{name} {severity}"
    if ours is None:
        skipped = [why for why in report.get("skipped", []) if why.startswith(f"{name}:")]
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


def split_fingerprint(dataset: Dataset, split: str) -> str:
    """A hash of one split's samples (ids, texts, labels, image paths, sequence rows) and the dataset version."""
    rows = dataset.samples[dataset.samples["split"] == split]
    digest = hashlib.sha256(f"{dataset.manifest.name}\0{dataset.manifest.version}\0".encode())
    digest.update(pd.util.hash_pandas_object(rows.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def registered_with_same_lineage(params: Params, ours: Lineage | None = None) -> Skipped | None:
    """Which registered version, if any, was trained from the same data, settings and code as `params` describe.

    Looks at the champion and the latest version that registration completed (one that lost the gate needs no
    retraining either; one a failed or killed registration left behind does not count). None when there is no such
    version, or no registered model yet.
    """
    ours = ours or lineage(params)
    name = params.registry.model_name or read_manifest(params.data.raw).name
    with tracking.connected(params.registry) as client:
        candidates = [(CHAMPION, _champion(client, name)), ("latest", _latest_registered(client, name))]
    for role, version in candidates:
        if version is not None and ours.matches(version.tags or {}):
            return Skipped(
                f"{name} version {version.version} ({role}) was trained from the same {ours.summary()}: "
                "nothing to retrain"
            )
    return None


def model_signature(spec: ModelSpec, state: FeaturizerState | None = None) -> Any:
    """Inputs: the raw columns of the model's modalities (text required); outputs: score and class. A modality
    `state` (the featurizer's) says was extracted from clips takes clip files instead of frames."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema

    columns = []
    if spec.text is not None:
        columns.append(ColSpec(DataType.string, "text"))
    if spec.image is not None:
        columns += [
            ColSpec(DataType.string, "image", required=False),
            ColSpec(DataType.string, "image_base64", required=False),
        ]
    # Frames are typed as optional strings, not Array(Array(double)): MLflow's enforcement of that builds a Series
    # per frame (~130 us each, twice), so an oversized request would cost a minute before the model could refuse it.
    # MLflow passes an object column of a string type through unchecked and unconverted, so JSON lists of frames
    # reach the model as sent, and CSV (which MLflow reads with the signature's pandas types: `Any` has none) carries
    # them as JSON text. `Predictor` checks the frames' count and shape itself, before converting a number.
    clips = set(state.clip_modalities) if state is not None else set()
    for m in SEQUENCE_MODALITIES:
        if getattr(spec, m) is not None and m not in clips:
            columns.append(ColSpec(DataType.string, m, required=False))
    # Clips: vision from a video; audio from an audio clip, or from a video's soundtrack.
    for column in (["audio"] if "audio" in clips else []) + (["video"] if clips else []):
        columns += [
            ColSpec(DataType.string, column, required=False),
            ColSpec(DataType.string, f"{column}_base64", required=False),
        ]
    outputs = Schema([ColSpec(DataType.double, "score"), ColSpec(DataType.string, "class")])
    return ModelSignature(inputs=Schema(columns), outputs=outputs)


def model_card(
    tags: Mapping[str, str],
    synthetic: bool,
    card: Any,
    metrics: dict,
    compression: dict,
    served: str = "baseline",
    robust: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
) -> str:
    """Markdown for the run's `model_card.md`; `tags` are the run's (`run_tags`): dataset, data hash, commit."""
    head, dataset, version = card.monitor.head, tags["dataset"], tags["dataset_version"]
    lines = [
        f"# Multimodal sentiment model: {dataset} v{version}",
        "",
        f"- **Data**: dataset `{dataset}` version `{version}` (content hash `{tags['data_hash']}`, "
        f"data.dvc md5 `{tags['data_dvc_md5']}`)" + (" - SYNTHETIC demo data, not real sentiment" if synthetic else ""),
        f"- **Code**: git `{tags['git_commit']}`, components hash `{tags['code_hash']}`; "
        f"params hash `{tags['params_hash']}`",
        f"- **Architecture**: heads {', '.join(card.spec.heads)}; predictions come from `{head}`",
        f"- **Selected by**: valid {card.monitor.metric} {card.monitor.value:.4f} at epoch {card.monitor.epoch}",
        *_seeds_lines(seeds or {}, head),
        "",
        "## Metrics (test split)",
        "",
    ]
    keys = [k for k, v in metrics["test"][head].items() if isinstance(v, int | float)]
    lines += ["| head | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for h, values in metrics["test"].items():
        lines.append(f"| {h} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    if compression:
        lines += ["", f"## Compression (test split, {compression.get('metric')} of `{head}`)", ""]
        serving = "the uncompressed model" if served == "baseline" else f"`{served}`"
        lines += [f"This version serves {serving} (register.variant).", ""]
        # variant - uncompressed, signed (negative: it scores lower), in the report's change_unit
        unit = compression.get("change_unit", "points")
        change_head = f"change ({unit}, vs uncompressed)"
        lines += [
            f"| variant | size MB | non-zero params | p50 ms (batch 1) | per s (batch 64) | {change_head} | kept |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = {"uncompressed": compression["baseline"], **compression.get("variants", {})}
        for variant, f in rows.items():
            lines.append(
                f"| {variant} | {f['size_bytes'] / 1e6:.1f} | {f['nonzero_params']:,} | {f['latency_ms_p50']:.1f} | "
                f"{f['throughput_per_s']:.0f} | {_signed(f.get('change'), unit, variant)} | {f.get('kept', True)} |"
            )
    if robust:
        lines += ["", *_robustness_section(robust, head)]
    lines += [
        "",
        "## Intended use",
        "",
        "Scoring the sentiment of short opinion utterances or posts (text, with an image and/or audio/visual "
        "feature sequences where the training data had them), for research and for comparing models in this "
        "pipeline. Input: the raw columns in the model's signature; output: `score` and `class`.",
        "",
        "## Limits",
        "",
        "- Trained on one dataset: scores outside its domain, language and label range are not calibrated.",
        "- Audio/visual sequences must be extracted exactly as in training (same feature extractor and dimension).",
        "- The text encoder is frozen or fine-tuned from a general-purpose sentence model; sarcasm and long texts "
        "(beyond the tokenizer's max_tokens) are truncated or missed.",
        "- Not for decisions about individuals.",
    ]
    if synthetic:
        lines.append("- This model was trained on SYNTHETIC demo data: its metrics say nothing about real sentiment.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------


def _seeds_tag(seeds: Mapping[str, Any]) -> str:
    """`3 seeds (0, 1, 2), chosen 1` for a multi-seed training, `1` otherwise."""
    if not seeds.get("seeds"):
        return "1"
    return f"{len(seeds['seeds'])} seeds ({', '.join(map(str, seeds['seeds']))}), chosen {seeds['chosen']}"


def _seeds_lines(seeds: Mapping[str, Any], head: str) -> list[str]:
    """The model card's seeds line: which seed this is, and the test metrics as mean ± std over every seed."""
    if not seeds.get("seeds"):
        return []
    test = {k: (v, seeds["std"]["test"][head][k]) for k, v in seeds["mean"].get("test", {}).get(head, {}).items()}
    spread = ", ".join(
        f"{k} {m:.4f} ± {sd:.4f}"
        for k, (m, sd) in test.items()
        if k in ("acc2", "f1", "mae", "corr", "accuracy", "f1_weighted")
    )
    return [
        f"- **Seeds**: trained with seeds {', '.join(map(str, seeds['seeds']))}; this is seed {seeds['chosen']}, the "
        f"best by {seeds['selected_by']} (never by test). Test `{head}` over the seeds: {spread}"
    ]


def _robustness_section(report: Mapping[str, Any], head: str) -> list[str]:
    """The monitored head's robustness metric under each perturbation, in points, and its change at the middle
    severity (perturbed - clean, signed: negative is what the model loses when its inputs are noisy or missing)."""
    metric = report["metric"]
    clean = report["clean"][head][metric]
    lines = [
        f"## Robustness ({report['split']} split, {metric} of `{head}` in points, clean {100 * clean:.1f})",
        "",
        "Inputs perturbed at each severity (components/evaluation/perturbations.py, seed "
        f"{report['seed']}); the change is perturbed - clean at the middle severity (negative: a loss).",
        "",
        "| perturbation | severities: score | change (points) |",
        "|---|---|---|",
    ]
    for name, entry in report["perturbations"].items():
        severities = entry["severities"]
        scores = {s: v.get(head, {}).get(metric) for s, v in severities.items()}
        middle = scores[list(scores)[len(scores) // 2]]
        cells = ", ".join(f"{s}: {'n/a' if v is None else f'{100 * v:.1f}'}" for s, v in scores.items())
        change = "n/a" if middle is None else f"{100 * (middle - clean):+.1f}"
        lines.append(f"| {name} | {cells} | {change} |")
    lines += [f"- skipped: {why}" for why in report.get("skipped", [])]
    return lines


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no such registered model, or no champion yet


def _champion_score(
    champion: Any, name: str, dataset: Dataset, test_split: str, metric: str, rescore: bool
) -> tuple[float | None, Evidence | None]:
    """The champion's primary test metric on this test split: the score registration signed into its package when
    that was measured on the same split, else measured now through its package (a different dataset version has a
    different test split). Tags are never read: anyone with registry access can edit them. A champion whose
    signature fails is re-scored (its package is read as data only: no code of it runs); None for a model this
    project did not package, whose code is never run, or one that predicts other classes: the challenger wins.
    Also the champion's evidence, when its package is verified."""
    from components.core.errors import UntrustedModelError
    from components.serving.pyfunc import dataset_bounds, load_model, raw_frame

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
    labels = frame["label"].to_numpy()
    if dataset.manifest.label.kind == "regression":
        return float(metrics_for("regression", predicted["score"].to_numpy(), labels)[metric]), evidence
    classes = list(dataset.manifest.label.classes)
    if not set(predicted["class"]) <= set(classes):
        return None, evidence
    indices = [classes.index(c) for c in predicted["class"]]
    truth = [classes.index(c) for c in labels]
    return float(metrics_for("classification", indices, truth, classes)[metric]), evidence


def _check_compatible(client: Any, name: str, signature: Any) -> None:
    """Refuse to add a version whose inputs differ from the registered model's latest version."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:  # any version, ours or not: a foreign one with other inputs is just as incompatible
        versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
    except MlflowException:
        return
    if not versions:
        return
    latest = versions[0]
    try:
        theirs = get_model_info(f"models:/{name}/{latest.version}").signature
    except Exception as e:  # noqa: BLE001 - an unreadable old version: say so rather than guess
        raise TrackingError(
            f"registered model '{name}' version {latest.version} cannot be read to compare signatures: "
            f"{tracking.first_line(e)}"
        ) from None
    ours = signature.inputs.to_dict()
    if theirs is None or _contract(theirs.inputs.to_dict()) != _contract(ours):
        found = "no signature" if theirs is None else _columns(theirs.inputs.to_dict())
        raise TrackingError(
            f"registered model '{name}' takes {found} (version {latest.version}), but this model takes "
            f"{_columns(ours)}: a different input contract needs its own name (set register.model_name)"
        )


def _create_version(client: Any, name: str, info: Any, run_id: str, tags: dict[str, str], promote: bool) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Multimodal sentiment model registered by `msa register`")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise TrackingError(f"cannot create registered model '{name}': {tracking.first_line(e)}") from None
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, model_id=info.model_id, tags={"msa.status": "registering"}
    ).version
    try:
        _link(client, info.model_id, name, version)
        for key, value in {**tags, "msa.status": "registered"}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version)  # last: nothing can fail after it
    except Exception as e:  # noqa: BLE001 - whatever broke, the half-made version must not stay usable
        raise TrackingError(
            f"registering '{name}' version {version} failed ({type(e).__name__}: {tracking.first_line(e)}); "
            f"{_discard(client, name, version, info.model_id)}; the champion is unchanged"
        ) from None
    return version


def _latest_registered(client: Any, name: str) -> Any | None:
    """The newest version of `name` whose registration completed (`msa.status=registered`), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=20)
    except MlflowException:
        return None  # no such registered model
    return next((v for v in versions if (v.tags or {}).get("msa.status") == "registered"), None)


def _link(client: Any, model_id: str, name: str, version: str) -> None:
    """What mlflow.register_model adds to a version: the logged model lists it, so the UI shows it registered. A
    tracking server records it itself when the version names the model id; a database store does not."""
    links = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
    if not any(link.get("name") == name and str(link.get("version")) == str(version) for link in links):
        links.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(links)})


def _discard(client: Any, name: str, version: str, model_id: str) -> str:
    with contextlib.suppress(Exception):  # a stale link only mislabels the Logged Models page
        client.delete_logged_model_tag(model_id, MODEL_VERSIONS_TAG)
    try:
        client.delete_model_version(name, version)
        return f"version {version} was deleted"
    except Exception:  # noqa: BLE001
        pass
    try:
        client.set_model_version_tag(name, version, "msa.status", "failed")
        return f"version {version} could not be deleted and is tagged msa.status=failed"
    except Exception:  # noqa: BLE001
        return f"version {version} could not be deleted or tagged: delete it by hand"


def _finite(numbers: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in numbers.items() if isinstance(v, int | float) and math.isfinite(v)}


def _longest(column: pd.Series) -> int:
    return max((len(value) for value in column if isinstance(value, str)), default=0)


def _pip_requirements(*, clips: bool = False) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in PIP_REQUIREMENTS + (CLIP_REQUIREMENTS if clips else ()):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise TrackingError(f"{path}: missing or unreadable ({type(e).__name__}); {fix}") from None


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def _data_dvc_md5(path: Path = Path("data.dvc")) -> str:
    try:
        return str(yaml.safe_load(path.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


_FRAME_TYPES = ("array", "any", "string")  # a sequence column's type: older versions, then `Any`, now string


def _contract(schema: list[dict]) -> list[dict]:
    """What a caller must send: frames typed Array(Array(double)) by older versions, `Any` by later ones and an
    optional string now are one contract (the same JSON is accepted; only where it is checked moved into the
    model), compared by name and whether required, not by the array's item types."""
    return [
        {"name": c["name"], "type": "frames", "required": c.get("required", True)}
        if c.get("name") in SEQUENCE_MODALITIES and c.get("type") in _FRAME_TYPES
        else c
        for c in schema
    ]


def _columns(schema: list[dict]) -> str:
    return "[" + ", ".join(f"{c.get('name')}{'' if c.get('required', True) else '?'}" for c in schema) + "]"


def _signed(value: Any, unit: str, variant: str = "") -> str:
    """A change (new - reference) with its sign: +0.00 points, -0.0123 mae; the reference row itself shows none."""
    if variant == "uncompressed":
        return "(reference)"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.2f}" if unit == "points" else f"{value:+.4f}"


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
