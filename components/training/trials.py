"""A trial of the study: the values it tries (`suggest`), where it trains (`trial_dir`), running it (`run_trial`)
with its MLflow child run of the tune run, and what it did (`as_result`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from components import tracking
from components.core.config import Params, SearchDimension, with_overrides
from components.core.errors import TrainingError
from components.training.reports import TrialResult
from components.training.run_log import epoch_metrics
from components.training.study import UID, current, monitor, open_study, trial_sampler

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["as_result", "run_trial", "suggest", "trial_dir"]


def suggest(trial: optuna.Trial, space: dict[str, SearchDimension], params: Params) -> dict[str, Any]:
    """One value per setting of `space`: a choice, an integer for an integer setting, else a float."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            values[key] = trial.suggest_categorical(key, list(dim.choices))
            continue
        assert dim.low is not None and dim.high is not None  # no choices: a range (SearchDimension checks it)
        if isinstance(current(params, key), int) and not isinstance(current(params, key), bool):
            step = 1 if dim.step is None else int(dim.step)
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=step, log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return values


def trial_dir(params: Params, study: optuna.Study, number: int, retry_of: int | None) -> Path:
    """Where trial `number` trains: its own directory, or for a retry the one of the trial it retries, whose
    checkpoint it continues. No other trial writes there (nor a trial of a same-named study in another storage: the
    study's uid tells them apart)."""
    origin = number if retry_of is None else retry_of
    return params.tune.out / study.study_name / study.user_attrs[UID][:8] / f"trial-{origin}"


def run_trial(params: Params, parent_run: str | None = None) -> TrialResult:
    """One trial of the study: the next waiting (enqueued or retried) trial, else new values from the sampler,
    seeded by (tune.seed, the trial's number); logged as a child run of MLflow run `parent_run` (None: not logged).
    Its training runs at train.threads, as any training does: a trial's score does not depend on the machine."""
    from components.training.train import train

    study = open_study(params)
    ran: list[int] = []  # the number of the trial this process ran

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial.number)
        study.sampler = trial_sampler(params.tune.seed, trial.number)  # what `suggest` draws with
        values = suggest(trial, params.tune.space, params)
        tried = with_overrides(params, values)
        retry_of = study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        out = trial_dir(params, study, trial.number, retry_of)
        settings = tried.train.model_copy(update={"seeds": 1, "out": out})
        with _trial_run(params, parent_run, trial.number, values, retry_of) as log:

            def on_epoch(record: dict, improved: bool) -> None:
                value = log.epoch(record)
                trial.set_user_attr("epochs", record["epoch"])
                trial.report(value, record["epoch"])
                if trial.should_prune():
                    log.finish("PRUNED", epochs=record["epoch"])
                    raise optuna.TrialPruned(f"valid {log.metric} {value:.4f} at epoch {record['epoch']}")

            result = train(params.featurize.out, tried.model, settings, progress=False, on_epoch=on_epoch)
            trial.set_user_attr("epochs", result.epochs_run)  # a retry that found its training done reported none
            log.finish("COMPLETE", epochs=result.epochs_run, best=result.best_value)
            return result.best_value

    # Training that diverges (TrainingError: a non-finite loss) is what these values do: a FAIL trial, the study goes
    # on. Anything else is recorded as FAIL and raised: it would fail every trial.
    study.optimize(objective, n_trials=1, catch=(TrainingError,))
    result = as_result(study.get_trials(deepcopy=False)[ran[0]], study)
    if result.state in ("COMPLETE", "PRUNED"):  # nothing will continue it: its checkpoint and model are of no use
        shutil.rmtree(trial_dir(params, study, result.number, result.retry_of), ignore_errors=True)
    return result


def as_result(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> TrialResult:
    """What `trial` did: a pruned trial's value is the best it reported."""
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else 0.0
    )
    value = {"COMPLETE": trial.value, "PRUNED": _best_reported(trial, study)}.get(trial.state.name)
    return TrialResult(
        number=trial.number,
        state=trial.state.name,
        values=dict(trial.params),
        value=value,
        epochs=trial.user_attrs.get("epochs", 0),
        seconds=seconds,
        retry_of=trial.system_attrs.get("failed_trial"),
    )


def _best_reported(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> float | None:
    values = list(trial.intermediate_values.values())
    if not values:
        return None
    return min(values) if study.direction == optuna.study.StudyDirection.MINIMIZE else max(values)


class _TrialLog:
    """A trial's child run of the tune run (none when `client` is None): its values as params, its valid curve live,
    then its state and score, ended before Optuna records the trial's end (a kill in between leaves the run RUNNING
    for `log_tune` to end KILLED, never a finished trial without its score)."""

    def __init__(self, client: MlflowClient | None, run_id: str | None, head: str, metric: str, mode: str) -> None:
        self.client, self.run_id, self.head, self.metric, self.mode = client, run_id, head, metric, mode
        self.best: float | None = None
        self.started = time.perf_counter()

    def epoch(self, record: dict) -> float:
        value = record["valid"][self.head][self.metric]
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
        if self.client is not None and self.run_id is not None:  # tracked
            tracking.log_numbers(self.client, self.run_id, epoch_metrics(record, self.head), step=record["epoch"])
        return value

    def finish(self, state: str, epochs: int, best: float | None = None) -> None:
        if self.client is None or self.run_id is None:
            return
        best = self.best if best is None else best
        metrics = {"trial_seconds": time.perf_counter() - self.started, "epochs_run": epochs}
        tracking.log_numbers(
            self.client, self.run_id, metrics | ({} if best is None else {f"best_valid_{self.metric}": best})
        )
        tracking.log_tags(self.client, self.run_id, {"msa.trial_state": state})


@contextmanager
def _trial_run(
    params: Params, parent_run: str | None, number: int, values: dict[str, Any], retry_of: int | None
) -> Iterator[_TrialLog]:
    """The trial's MLflow child run (none when `parent_run` is None), ended FINISHED (completed or pruned) or
    FAILED."""
    head, metric, mode = monitor(params)
    if parent_run is None:
        yield _TrialLog(None, None, head, metric, mode)
        return
    with tracking.connected(params.registry) as client:
        tags = {"msa.trial": str(number)} | ({} if retry_of is None else {"msa.retry_of": str(retry_of)})
        run_id = tracking.child_run(client, parent_run, "trial", f"trial {number}", tags)
        tracking.log_params(client, run_id, values)
        log = _TrialLog(client, run_id, head, metric, mode)
        status = "FAILED"
        try:
            yield log
            status = "FINISHED"
        except optuna.TrialPruned:
            status = "FINISHED"
            raise
        except Exception:
            log.finish("FAIL", epochs=0)
            raise
        finally:
            client.set_terminated(run_id, status)
