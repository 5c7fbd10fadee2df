"""Hyperparameter search with Optuna: trainings on the train split scored on valid; the test split is never read.

Each trial draws values for the settings in `tune.space` (TPE sampler), trains with them (one seed, in its own
directory under `tune.out`), reports the monitored head's valid metric after every epoch, and is stopped by the
median pruner when that curve falls behind the median of earlier trials at the same epoch. Its score is the best
valid value its training reached: what early stopping keeps. Training itself drops the test rows before it builds a
tensor (components.training.train), so no trial can see them.

The study lives in an Optuna RDB storage (`tune.storage`, or `MSA_TUNE_STORAGE` for a URL that holds a password):
an SQLite file on one machine, the team's PostgreSQL when trials run on several. Every process that runs trials
works on the same study, so several `msa tune` (or runs of the tune deployment) share the work, and a study that
was killed resumes: finished trials count, a running trial whose heartbeat went silent (`tune.heartbeat`) is failed
and retried with the same values, and the retry continues the checkpoint its training left (a trial's directory is
named by the trial it retries, so the retry finds it and no other trial shares it). A trial's sampler is seeded by
(tune.seed, its trial number): the storage numbers trials uniquely, so no two trials draw alike, whichever run or
machine draws them, and a fresh study draws the same values again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from components.core.atomic import write_bytes
from components.core.config import ConfigError, Params, SearchDimension, TuneParams, result_settings, with_overrides
from components.core.errors import TrainingError, first_line
from components.evaluation.metrics import primary_metric
from components.features.contract import read_state
from components.tracking import runs as tracking

STORAGE_ENV = "MSA_TUNE_STORAGE"
UID, FINGERPRINT = "msa.uid", "msa.fingerprint"
optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's outcome is logged by the flow, once
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class TrialResult:
    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    values: dict[str, Any]  # the settings it tried, by dotted key
    value: float | None  # the best valid value its training reached (None when pruned before any, or failed)
    epochs: int
    seconds: float
    retry_of: int | None = None  # the killed trial it continued

    def summary(self) -> str:
        score = "" if self.value is None else f" {self.value:.4f}"
        retry = "" if self.retry_of is None else f", retry of trial {self.retry_of}"
        return f"trial {self.number}: {self.state}{score} after {self.epochs} epochs ({self.seconds:.1f} s{retry})"


@dataclass
class TuneResult:
    study: str
    monitor: str  # "valid <head> <metric>"
    direction: str
    best: TrialResult | None
    trials: list[TrialResult] = field(default_factory=list)
    best_params: Path | None = None
    report: Path | None = None
    figure: Path | None = None  # every trial's curve and the best so far, beside the report

    # The best trial's values that differ from the settings the study was concluded with: none when the best trial
    # is the settings as they are (the first trial of every study tries them), which no experiment would change.
    changes: dict[str, Any] = field(default_factory=dict)

    @property
    def best_is_current(self) -> bool:
        return self.best is not None and not self.changes

    @property
    def overrides(self) -> list[str]:
        """The best trial's changes to the current settings as `dvc exp run -S` arguments (none when it has none)."""
        return [f"-S '{key}={_yaml_scalar(value)}'" for key, value in self.changes.items()]

    def summary(self) -> str:
        counts = {state: sum(t.state == state for t in self.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
        done = ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        if self.best is None:
            return f"tune: study {self.study}: {done or 'no trials'}; no trial completed"
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best.values.items())
        head = f"tune: study {self.study}: {done}; best trial {self.best.number}, {self.monitor} {self.best.value:.4f}"
        if self.best_is_current:
            return (
                f"{head} ({values}): the current settings scored best; no trial beat them, so there is no experiment "
                "to run (more trials, or another search space, may find one)"
            )
        return f"{head} ({values}) -> {self.best_params}; as an experiment: dvc exp run {' '.join(self.overrides)}"


def storage_url(settings: TuneParams) -> str:
    return os.environ.get(STORAGE_ENV) or settings.storage


def study_name(params: Params) -> str:
    return params.tune.study or f"{read_state(params.featurize.out).dataset}-tune"


def open_study(params: Params) -> optuna.Study:
    """The study of `params` (created the first time): TPE sampler, median pruner, heartbeat and retry of killed
    trials."""
    settings = params.tune
    url = storage_url(settings)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # waits out a concurrent writer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=settings.heartbeat,
            grace_period=2 * settings.heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1, inherit_intermediate_values=True
            ),
        )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=settings.pruner.startup_trials, n_warmup_steps=settings.pruner.warmup_epochs
    )
    _, mode = primary_metric(read_state(params.featurize.out).label_kind)
    direction = "minimize" if mode == "min" else "maximize"
    try:
        study = optuna.create_study(
            study_name=study_name(params), storage=storage, pruner=pruner, direction=direction, load_if_exists=True,
            sampler=_sampler(settings.seed, 0),  # a placeholder: each trial draws with its own (`run_trial`)
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for an unreachable database
        raise ConfigError(
            f"tune.storage {_redacted(url)}: cannot open the study ({type(e).__name__}: {first_line(e)})"
        ) from None
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {study.study_name} in {_redacted(url)} was made to {study.direction.name.lower()} another "
            "metric: name another tune.study"
        )
    return study


def _sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
    """Trial `number`'s sampler: TPE, seeded by (`seed`, `number`). Its first draws are random and depend on the seed
    alone, so a seed per trial (not per process) is what keeps trials apart."""
    state = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state, constant_liar=True)  # liar: concurrent trials spread out


@dataclass(frozen=True)
class Plan:
    study: str
    uid: str  # tells this study from an earlier one of the same name (a deleted storage): keys its MLflow run
    todo: int  # trials still to run for the study to have `tune.trials` finished ones (completed or pruned)


def plan(params: Params) -> Plan:
    """What is left of the study. A study resumes only with the data, settings and search it was started with: its
    trials would not be comparable otherwise."""
    study = open_study(params)
    ours = fingerprint(params)
    if UID not in study.user_attrs:
        study.set_user_attr(UID, uuid.uuid4().hex)
        study.set_user_attr(FINGERPRINT, ours)
        if (current := _current_values(params)) is not None:
            study.enqueue_trial(current)  # the first trial: what the settings say now, the score to beat
    elif study.user_attrs.get(FINGERPRINT) != ours:
        raise ConfigError(
            f"study {study.study_name} in {_redacted(storage_url(params.tune))} was started with other data, settings "
            "or search space: its trials would not compare with new ones. Name another tune.study (or delete that one)"
        )
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    return Plan(study.study_name, study.user_attrs[UID], max(0, params.tune.trials - finished))


def fingerprint(params: Params) -> str:
    """The features and every setting a trial's score depends on: the study's own (space, pruner, seed) included,
    the number of trials and where things go left out."""
    tune = params.tune.model_dump(mode="json", include={"space", "pruner", "seed"})
    settings = {k: v for k, v in result_settings(params).items() if k in ("featurize", "model", "train")}
    settings |= {"features": read_state(params.featurize.out).key, "tune": tune}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def suggest(trial: optuna.Trial, space: dict[str, SearchDimension], params: Params) -> dict[str, Any]:
    """One value per setting of `space`: a choice, an integer for an integer setting, else a float."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            values[key] = trial.suggest_categorical(key, list(dim.choices))
        elif isinstance(_current(params, key), int) and not isinstance(_current(params, key), bool):
            step = 1 if dim.step is None else int(dim.step)
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=step, log=dim.log)
        else:
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return values


def _current_values(params: Params) -> dict[str, Any] | None:
    """The settings' own values of every key of tune.space, when each lies in its range or choices."""
    values = {key: _current(params, key) for key in params.tune.space}
    for key, dim in params.tune.space.items():
        value = values[key]
        if dim.choices is not None:
            inside = value in dim.choices
        else:
            inside = dim.low <= value <= dim.high and (dim.step is None or ((value - dim.low) / dim.step).is_integer())
        if not inside:
            return None
    return values


def _current(params: Params, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


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
        study.sampler = _sampler(params.tune.seed, trial.number)  # what `suggest` draws with
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
    result = _as_result(study.get_trials(deepcopy=False)[ran[0]], study)
    if result.state in ("COMPLETE", "PRUNED"):  # nothing will continue it: its checkpoint and model are of no use
        shutil.rmtree(trial_dir(params, study, result.number, result.retry_of), ignore_errors=True)
    return result


def _best_reported(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> float | None:
    values = list(trial.intermediate_values.values())
    if not values:
        return None
    return min(values) if study.direction == optuna.study.StudyDirection.MINIMIZE else max(values)


class _TrialLog:
    """A trial's child run of the tune run (none when `client` is None): its values as params, its valid curve live,
    then its state and score, ended before Optuna records the trial's end (a kill in between leaves the run RUNNING
    for `tracking.log_tune` to end KILLED, never a finished trial without its score)."""

    def __init__(self, client: Any, run_id: str | None, head: str, metric: str, mode: str) -> None:
        self.client, self.run_id, self.head, self.metric, self.mode = client, run_id, head, metric, mode
        self.best: float | None = None
        self.started = time.perf_counter()

    def epoch(self, record: dict) -> float:
        value = record["valid"][self.head][self.metric]
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
        if self.client is not None:
            metrics = tracking.epoch_metrics(record, self.head)
            tracking.log_numbers(self.client, self.run_id, metrics, step=record["epoch"])
        return value

    def finish(self, state: str, epochs: int, best: float | None = None) -> None:
        if self.client is None:
            return
        best = self.best if best is None else best
        metrics = {"trial_seconds": time.perf_counter() - self.started, "epochs_run": epochs}
        tracking.log_numbers(
            self.client, self.run_id, metrics | ({} if best is None else {f"best_valid_{self.metric}": best})
        )
        tracking.log_tags(self.client, self.run_id, {"msa.trial_state": state})


def _monitor(params: Params) -> tuple[str, str, str]:
    """(head, metric, "min" | "max"): what a trial is scored on, the number training's early stopping watches."""
    from components.models.store import monitored_head
    from components.training.train import build_spec  # torch: only where trials run or are summed up

    spec = build_spec(read_state(params.featurize.out), params.model, params.train)
    metric, mode = primary_metric(spec.label.kind)
    return monitored_head(spec), metric, mode


@contextmanager
def _trial_run(
    params: Params, parent_run: str | None, number: int, values: dict[str, Any], retry_of: int | None
) -> Iterator[_TrialLog]:
    """The trial's MLflow child run (none when `parent_run` is None), ended FINISHED (completed or pruned) or
    FAILED."""
    head, metric, mode = _monitor(params)
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


def conclude(params: Params, params_file: Path) -> TuneResult:
    """The study as it stands: every trial in `tune.report`, and the best completed trial's values applied to
    `params_file` written as `tune.best` (a params file `msa run --params` and `dvc exp run` take)."""
    study = open_study(params)
    head, metric, mode = _monitor(params)
    monitor = f"valid {head} {metric}"
    trials = [_as_result(t, study) for t in study.get_trials(deepcopy=False)]
    completed = [t for t in trials if t.state == "COMPLETE"]
    best = (min if mode == "min" else max)(completed, key=lambda t: t.value) if completed else None
    result = TuneResult(study=study.study_name, monitor=monitor, direction=study.direction.name.lower(), best=best,
                        trials=trials, changes=_changes(params, best))  # fmt: skip
    report = {
        "study": study.study_name,
        "storage": _redacted(storage_url(params.tune)),
        "monitor": monitor,
        "direction": result.direction,
        "space": {k: v.model_dump(exclude_none=True) for k, v in params.tune.space.items()},
        "best": asdict(best) if best else None,
        "best_is_current": result.best_is_current,  # the settings as they are scored best: no experiment to run
        "changes": result.changes,  # the best trial's values that differ from the current settings
        "trials": [asdict(t) for t in trials],
    }
    write_bytes(params.tune.report, (json.dumps(report, indent=2) + "\n").encode())
    result.report, result.figure = params.tune.report, params.tune.report.with_suffix(".png")
    write_bytes(result.figure, _figure_png(study, monitor))
    if best is not None:
        write_bytes(params.tune.best, _tuned_params_file(params_file, best, study.study_name, result.changes).encode())
        result.best_params = params.tune.best
    return result


def _figure_png(study: optuna.Study, monitor: str) -> bytes:
    """Left: every trial's valid curve (pruned ones dashed, where they stopped marked). Right: each finished trial's
    score and the best so far."""
    from components.core.figures import grid, png

    figure, (curves, progress) = grid(2, width=5.0, height=3.6)
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    best, scores, running = None, [], []
    for trial in study.get_trials(deepcopy=False):
        steps = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[s] for s in steps]
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        if steps:
            curves.plot(steps, values, ls="--" if pruned else "-", lw=1, alpha=0.8)
            if pruned:
                curves.plot(steps[-1:], values[-1:], "x", color="black", ms=5)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            value = trial.value
            best = value if best is None else (min if minimize else max)(best, value)
            scores.append((trial.number, value))
            running.append((trial.number, best))
    curves.set(xlabel="epoch", ylabel=monitor, title="each trial's curve (pruned: dashed, x)")
    if scores:
        progress.plot(*zip(*scores, strict=True), "o", ms=4, label="completed trial")
        progress.step(*zip(*running, strict=True), where="post", color="black", label="best so far")
        progress.legend(fontsize=8)
    progress.set(xlabel="trial", ylabel=monitor, title=f"study {study.study_name}")
    return png(figure)


def _as_result(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> TrialResult:
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else 0.0
    )
    value = {"COMPLETE": trial.value, "PRUNED": _best_reported(trial, study)}.get(trial.state.name)
    return TrialResult(
        number=trial.number, state=trial.state.name, values=dict(trial.params), value=value,
        epochs=trial.user_attrs.get("epochs", 0), seconds=seconds, retry_of=trial.system_attrs.get("failed_trial"),
    )  # fmt: skip


def _changes(params: Params, best: TrialResult | None) -> dict[str, Any]:
    """The best trial's values that differ from `params`' own (floats compared to a relative 1e-9: a value that went
    through the study's storage)."""
    if best is None:
        return {}

    def same(a: Any, b: Any) -> bool:
        numbers = all(isinstance(x, float | int) and not isinstance(x, bool) for x in (a, b))
        if numbers:
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
        return a == b

    changes = {}
    for key, value in best.values.items():
        try:
            current = _current(params, key)
        except (AttributeError, KeyError):
            current = None  # a key no longer in the settings: a change
        if not same(value, current):
            changes[key] = value
    return changes


def _tuned_params_file(params_file: Path, best: TrialResult, study: str, changes: dict[str, Any]) -> str:
    """`params_file` with the best trial's values set: the user's other settings (and their order) stay."""
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    for key, value in best.values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if not changes:
        header = (
            f"# {params_file} as it is: trial {best.number} of Optuna study {study}, the current settings, scored best "
            f"(valid score {best.value:.4f}), written by `msa tune`.\n# No trial beat them: there is no experiment "
            "to run.\n"
        )
        return header + yaml.safe_dump(raw, sort_keys=False)
    header = (
        f"# {params_file} with the values of trial {best.number} of Optuna study {study} (valid score "
        f"{best.value:.4f}), written by `msa tune`.\n# Train with them: msa run --params <this file>, or\n"
        f"# dvc exp run {' '.join(f'-S {k}={_yaml_scalar(v)}' for k, v in changes.items())}\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _redacted(url: str) -> str:
    """A storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show its scheme only
        return url.split("://", 1)[0] + "://..."
