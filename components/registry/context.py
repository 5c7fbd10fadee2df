"""What one pipeline run registers from: its context (lineage, experiment, model name, provenance tags), the chain
that shows every stage's output is of one model trained on this data, and the policy that skips a retrain.

`registered_with_same_lineage` is that policy: when a registered version was trained from the same data, settings
and code, there is nothing new to learn. `msa register`, the pipeline flow and its register task all ask it.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pandas as pd
import yaml

from components import tracking
from components.core.config import Params
from components.core.errors import TrackingError
from components.data.dataset import Dataset, read_dataset, read_manifest
from components.registry import reports
from components.registry.versions import CHAMPION, champion_version, latest_registered
from components.training.lineage import Lineage, lineage

if TYPE_CHECKING:
    from components.compression.report import CompressionReport
    from components.evaluation.reports import EvaluationReport, HeadScores, RobustnessReport

__all__ = [
    "RunContext",
    "Skipped",
    "Verified",
    "registered_with_same_lineage",
    "robustness_report",
    "run_context",
    "run_name",
    "split_fingerprint",
    "verified_outputs",
]


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
        candidates = [(CHAMPION, champion_version(client, name)), ("latest", latest_registered(client, name))]
    for role, version in candidates:
        if version is not None and ours.matches(version.tags or {}):
            return Skipped(
                f"{name} version {version.version} ({role}) was trained from the same {ours.summary()}: "
                "nothing to retrain"
            )
    return None


@dataclass(frozen=True)
class Verified:
    """What registration reads of the stages' outputs, once they are shown to be of one model trained on this data
    with these settings and this code."""

    model: str  # the trained model's digest
    lineage: Lineage  # the data, settings and code it was trained on: the version's tags
    scores: EvaluationReport
    compression: CompressionReport | None  # None when compress did not run

    @property
    def evaluation(self) -> dict[str, dict[str, HeadScores]]:
        """The evaluate report's scores: split -> head -> metrics."""
        return self.scores.splits


def verified_outputs(params: Params, ours: Lineage) -> Verified:
    """The chain from `params.data.raw` to every report: the features are of this data and these featurize
    settings, the model was trained on those features with these settings and this code, and each report scores
    that model. A broken link is one line naming the stage to run again; nothing is registered. `ours` is the
    lineage of the data and settings as they are now (`lineage(params)`)."""
    from components.features.contract import read_state
    from components.features.key import input_key
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
    evaluation, compression = reports.evaluation(params.evaluate.report), reports.compression(params.compress.report)
    for report, stage, found in (
        (params.evaluate.report, "evaluate", evaluation),
        (params.compress.report, "compress", compression),
    ):
        if found is not None and found.model_digest != model:
            raise TrackingError(f"{report} scores another model than {out}: run `msa {stage}`. {again}")
    return Verified(model, ours, evaluation, compression)


def robustness_report(params: Params, model: str) -> RobustnessReport | None:
    """The robustness report of the model in train.out, whose digest is `model` (None when there is none and the
    gate does not ask for one); a report of another model is refused: its scores would be logged and gated on as
    this model's."""
    path = params.robustness.report
    if not path.exists() and params.registry.robustness is None:
        return None
    report = reports.robustness(path)
    if report.model_digest != model:
        raise TrackingError(
            f"{path} scores another model than {params.train.out}: run `msa robustness`. Nothing was registered"
        )
    return report


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
