"""The Optuna study of hyperparameter search: where it is stored (`storage_url`), opening it (`open_study`), the
sampler of each trial (`trial_sampler`), what is left of it (`plan`), and what its trials must share to compare
(`fingerprint`)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna

from components.core.config import ConfigError, Params, TuneParams, result_settings
from components.core.errors import first_line
from components.evaluation.metrics import primary_metric
from components.features.contract import read_state

__all__ = [
    "FINGERPRINT",
    "FINISHED",
    "STORAGE_ENV",
    "UID",
    "Plan",
    "current",
    "fingerprint",
    "monitor",
    "open_study",
    "plan",
    "redacted",
    "storage_url",
    "study_name",
    "trial_sampler",
]

STORAGE_ENV = "MSA_TUNE_STORAGE"
UID, FINGERPRINT = "msa.uid", "msa.fingerprint"
optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's outcome is logged by the flow, once
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


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
    direction: Literal["minimize", "maximize"] = "minimize" if mode == "min" else "maximize"
    try:
        study = optuna.create_study(
            study_name=study_name(params),
            storage=storage,
            pruner=pruner,
            direction=direction,
            load_if_exists=True,
            sampler=trial_sampler(settings.seed, 0),  # a placeholder: each trial draws with its own (`run_trial`)
        )
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for an unreachable database
        raise ConfigError(
            f"tune.storage {redacted(url)}: cannot open the study ({type(e).__name__}: {first_line(e)})"
        ) from None
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {study.study_name} in {redacted(url)} was made to {study.direction.name.lower()} another "
            "metric: name another tune.study"
        )
    if (database := _sqlite_file(url)) is not None:
        _ask_one_at_a_time(study, database)
    return study


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (sqlite:///relative or sqlite:////absolute); None for other databases."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(url[len(prefix) :])


def _ask_one_at_a_time(study: optuna.Study, database: Path) -> None:
    """Make the study's `ask` take a lock beside the SQLite file. Optuna takes a waiting (enqueued or retried) trial
    by reading it WAITING and writing it RUNNING under `SELECT ... FOR UPDATE`, which SQLite ignores: two trial
    processes asking at once could both take the same trial and train into the same directory (seen when a resumed
    study's retries were taken by both of tune.concurrency's processes). A database that locks rows needs none."""
    from filelock import FileLock

    lock, ask = FileLock(f"{database}.ask.lock"), study.ask

    def ask_alone(*args: Any, **kwargs: Any) -> optuna.Trial:
        with lock:
            return ask(*args, **kwargs)

    study.ask = ask_alone  # type: ignore[method-assign]  # what study.optimize calls for each trial


def trial_sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
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
        if (values := _current_values(params)) is not None:
            study.enqueue_trial(values)  # the first trial: what the settings say now, the score to beat
    elif study.user_attrs.get(FINGERPRINT) != ours:
        raise ConfigError(
            f"study {study.study_name} in {redacted(storage_url(params.tune))} was started with other data, settings "
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


def _current_values(params: Params) -> dict[str, Any] | None:
    """The settings' own values of every key of tune.space, when each lies in its range or choices."""
    values = {key: current(params, key) for key in params.tune.space}
    for key, dim in params.tune.space.items():
        value = values[key]
        if dim.choices is not None:
            inside = value in dim.choices
        else:
            inside = dim.low <= value <= dim.high and (dim.step is None or ((value - dim.low) / dim.step).is_integer())
        if not inside:
            return None
    return values


def current(params: Params, key: str) -> Any:
    """The value of the setting at dotted `key` in `params`."""
    node: Any = params
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def monitor(params: Params) -> tuple[str, str, str]:
    """(head, metric, "min" | "max"): what a trial is scored on, the number training's early stopping watches."""
    from components.models.store import monitored_head
    from components.training.architecture import build_spec  # torch: only where trials run or are summed up

    spec = build_spec(read_state(params.featurize.out), params.model, params.train)
    metric, mode = primary_metric(spec.label.kind)
    return monitored_head(spec), metric, mode


def redacted(url: str) -> str:
    """A storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show its scheme only
        return url.split("://", 1)[0] + "://..."
