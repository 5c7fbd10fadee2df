"""`msa tune` as a user runs it, on Prefect's ephemeral API: two trials at once, the study killed mid-trial and
resumed, every trial a nested MLflow run, the best values written as a params file."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from components.core.config import load_params
from tests.e2e.test_flow_faults import copy_project, edit_params, kill_group, sqlite_store

pytestmark = pytest.mark.e2e

MSA = str(Path(sys.executable).parent / "msa")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
HEARTBEAT = 1  # seconds: a killed trial counts as killed 2 s after its last beat


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="raw-tune", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def test_tune_runs_trials_concurrently_and_a_killed_study_resumes(tiny_project: Path, tmp_path: Path) -> None:
    project = copy_project(tiny_project, tmp_path / "project")
    storage = f"sqlite:///{project / 'tune.db'}"
    edit_params(
        project,
        train={"epochs": 12, "patience": 12},
        tune={
            "trials": 4,
            "concurrency": 2,
            "heartbeat": HEARTBEAT,
            "storage": storage,
            "pruner": {"startup_trials": 2, "warmup_epochs": 2},
            "space": {
                "train.lr": {"low": 0.001, "high": 0.01, "log": True},
                "model.dropout": {"low": 0.0, "high": 0.3},
            },
        },
    )
    env = os.environ | {"MLFLOW_TRACKING_URI": sqlite_store(project)}
    log = (tmp_path / "first.log").open("w")

    # The first `msa tune` is killed (the whole process group, as a lost machine would be) while a trial trains,
    # after at least one trial has finished.
    first = subprocess.Popen(
        [MSA, "tune"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and first.poll() is None:
            trials = _trials(storage)
            states = [t.state for t in trials]
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values]
            if running and any(s in FINISHED for s in states):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no trial finished while another trained: {(tmp_path / 'first.log').read_text()[-3000:]}")
    finally:
        kill_group(first)
    killed = {t.number: t.params for t in _trials(storage) if t.state == optuna.trial.TrialState.RUNNING}
    assert killed
    time.sleep(2 * HEARTBEAT + 1)  # their heartbeats are stale now

    second = subprocess.run([MSA, "tune"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    trials = _trials(storage)
    finished = [t for t in trials if t.state in FINISHED]
    states = "\n".join(f"{t.number} {t.state.name} {t.system_attrs} {t.params}" for t in trials)
    assert len(finished) == 4, f"{states}\n{second.stdout[-6000:]}"  # tune.trials finished over both runs
    # Each trial's sampler is seeded by its number: no trial of the resumed run redraws the killed run's values.
    drawn = [tuple(sorted(t.params.items())) for t in trials if "failed_trial" not in t.system_attrs]
    assert len(set(drawn)) == len(drawn), states
    for number, params in killed.items():  # each killed trial failed, and a retry ran its values again
        assert trials[number].state == optuna.trial.TrialState.FAIL
        assert any(t.system_attrs.get("failed_trial") == number and t.params == params for t in finished)
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials if t.datetime_complete)
    assert any(a[1] > b[0] for a, b in itertools.pairwise(spans)), "no two trials ran at once"

    # The best completed trial's values: printed as `dvc exp run -S` overrides, written as a params file.
    best = min((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    settings = load_params(project / "params.yaml")
    current = {"train.lr": settings.train.lr, "model.dropout": settings.model.dropout}
    if best.params == current:  # the settings as they are (the first trial) won: never offered as an experiment
        assert "the current settings scored best" in second.stdout and "dvc exp run" not in second.stdout
    else:
        assert f"-S 'train.lr={best.params['train.lr']}'" in second.stdout
    tuned = yaml.safe_load((project / "params.tuned.yaml").read_text())
    assert tuned["train"]["lr"] == best.params["train.lr"] and tuned["model"]["dropout"] == best.params["model.dropout"]
    assert tuned["train"]["epochs"] == 12  # the rest of params.yaml as it was

    # MLflow: one tune run for the study, a child run per trial with its values and its valid curve.
    client = MlflowClient(sqlite_store(project))
    experiment = client.get_experiment_by_name("raw")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`msa.kind` = 'tune'")
    assert run.info.status == "FINISHED" and run.data.tags["msa.best_trial"] == str(best.number)
    assert run.data.metrics["trials_complete"] + run.data.metrics["trials_pruned"] == 4
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    by_trial = {int(c.data.tags["msa.trial"]): c for c in children}
    assert set(by_trial) == {t.number for t in trials}
    for t in trials:
        child = by_trial[t.number]
        if t.number in killed:
            assert child.info.status == "KILLED"
            continue
        assert child.info.status == "FINISHED" and child.data.tags["msa.trial_state"] == t.state.name
        assert float(child.data.params["train.lr"]) == t.params["train.lr"]
        curve = [m.step for m in client.get_metric_history(child.info.run_id, "epoch_valid_mae")]
        assert curve == sorted(curve) and (curve or "failed_trial" in t.system_attrs)  # a retry logs its new epochs
