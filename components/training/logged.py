"""What training and its hyperparameter search log into MLflow, beside the live training log (run_log): the dataset
as what the model trains on, the pipeline run's input (validate logs it; train and head runs copy it); and a run
per Optuna study (reopened when the study resumes) whose child runs are its trials, ending with the study's outcome:
counts, the best score and trial, the report and the tuned params file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from components.core.config import Params
from components.tracking import Artifact, InputDataset, Logged, child_runs, keyed_run, log

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.data.dataset import Dataset
    from components.training.tuning import Plan, TuneResult

__all__ = ["end_lost_trials", "log_tune", "training_input", "tune_logged", "tune_run"]


def training_input(dataset: Dataset, digest: str, source: Mapping[str, str]) -> InputDataset:
    """The dataset as a run's input: built from its samples table (MLflow's schema and profile of it, with the
    dataset's version, splits and modalities), named like the dataset, its digest `digest` (DVC's md5 of data/raw,
    or the lineage's data hash) and its source where to get it."""
    samples = dataset.samples
    profile = {
        "version": dataset.manifest.version,
        "splits": {str(k): int(v) for k, v in samples["split"].value_counts().items()},
        "modalities": list(dataset.manifest.modalities.present),
    }
    return InputDataset(samples, dataset.manifest.name, digest, source, profile)


@contextmanager
def tune_run(client: MlflowClient, experiment: str, plan: Plan, params: Params) -> Iterator[str]:
    """The run of the Optuna study of `plan` (reopened when the study resumes) and its id; its trials are its child
    runs. Ended FINISHED, FAILED or KILLED; trial runs are each ended by their own process."""
    key, tags = {"msa.study_uid": plan.uid}, {"msa.study": plan.study}
    with keyed_run(client, experiment, "tune", f"tune {plan.study}", key, params, tags) as run_id:
        yield run_id


def log_tune(client: MlflowClient, run_id: str, result: TuneResult) -> None:
    """The study's outcome on its run; trial runs a killed process left RUNNING are ended KILLED."""
    end_lost_trials(client, run_id, result)
    log(client, run_id, tune_logged(result))


def end_lost_trials(client: MlflowClient, run_id: str, result: TuneResult) -> None:
    """End KILLED the trial runs still RUNNING whose trial failed: their process was killed before it could."""
    states = {t.number: t.state for t in result.trials}
    for run in child_runs(client, run_id, "trial"):
        if run.info.status == "RUNNING" and states.get(int(run.data.tags.get("msa.trial", -1))) == "FAIL":
            client.set_terminated(run.info.run_id, "KILLED")


def tune_logged(result: TuneResult) -> Logged:
    """Counts of trials by state, the best score and trial, the report, its figure and the tuned params file."""
    counts = {f"trials_{s.lower()}": sum(t.state == s for t in result.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = {} if result.best is None else {f"best_{result.monitor.replace(' ', '_')}": result.best.value}
    tags = {} if result.best is None else {"msa.best_trial": str(result.best.number)}
    files = tuple(Artifact(p, "tune") for p in (result.report, result.figure, result.best_params) if p is not None)
    return Logged(metrics=counts | best, tags=tags, artifacts=files)
