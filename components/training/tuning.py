"""Hyperparameter search with Optuna: trainings on the train split scored on valid; the test split is never read.

Each trial draws values for the settings in `tune.space` (TPE sampler), trains with them (one seed, in its own
directory under `tune.out`), reports the monitored head's valid metric after every epoch, and is stopped by the
median pruner when that curve falls behind the median of earlier trials at the same epoch. Its score is the best
valid value its training reached: what early stopping keeps. Training itself drops the test rows before it builds a
tensor (components.training.batches), so no trial can see them.

The study lives in an Optuna RDB storage (`tune.storage`, or `MSA_TUNE_STORAGE` for a URL that holds a password):
an SQLite file on one machine, the team's PostgreSQL when trials run on several. Every process that runs trials
works on the same study, so several `msa tune` (or runs of the tune deployment) share the work, and a study that
was killed resumes: finished trials count, a running trial whose heartbeat went silent (`tune.heartbeat`) is failed
and retried with the same values, and the retry continues the checkpoint its training left (a trial's directory is
named by the trial it retries, so the retry finds it and no other trial shares it). A trial's sampler is seeded by
(tune.seed, its trial number): the storage numbers trials uniquely, so no two trials draw alike, whichever run or
machine draws them, and a fresh study draws the same values again.

The study and what is left of it live in `study`, a trial in `trials`; this module concludes the study
(`conclude`): its report (`TuneReport`), its figure and the params file of the best trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from components.core.atomic import write_bytes
from components.core.config import Params
from components.training.reports import TrialResult, TuneReport
from components.training.study import (
    STORAGE_ENV,
    Plan,
    current,
    fingerprint,
    monitor,
    open_study,
    plan,
    redacted,
    storage_url,
    study_name,
)
from components.training.trials import as_result, run_trial, suggest, trial_dir

# The study's and a trial's names live beside this module; callers import them from here too.
__all__ = [
    "STORAGE_ENV",
    "Plan",
    "TrialResult",
    "TuneResult",
    "conclude",
    "fingerprint",
    "open_study",
    "plan",
    "run_trial",
    "storage_url",
    "study_name",
    "suggest",
    "trial_dir",
]


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


def conclude(params: Params, params_file: Path) -> TuneResult:
    """The study as it stands: every trial in `tune.report`, and the best completed trial's values applied to
    `params_file` written as `tune.best` (a params file `msa run --params` and `dvc exp run` take)."""
    study = open_study(params)
    head, metric, mode = monitor(params)
    monitored = f"valid {head} {metric}"
    trials = [as_result(t, study) for t in study.get_trials(deepcopy=False)]
    completed = [t for t in trials if t.state == "COMPLETE"]
    best = (min if mode == "min" else max)(completed, key=_completed_value) if completed else None
    result = TuneResult(
        study=study.study_name,
        monitor=monitored,
        direction=study.direction.name.lower(),
        best=best,
        trials=trials,
        changes=_changes(params, best),
    )
    TuneReport(
        study=study.study_name,
        storage=redacted(storage_url(params.tune)),
        monitor=monitored,
        direction=result.direction,
        space={k: v.model_dump(exclude_none=True) for k, v in params.tune.space.items()},
        best=best,
        best_is_current=result.best_is_current,
        changes=result.changes,
        trials=trials,
    ).write(params.tune.report)
    result.report, result.figure = params.tune.report, params.tune.report.with_suffix(".png")
    write_bytes(result.figure, _figure_png(study, monitored))
    if best is not None:
        write_bytes(params.tune.best, _tuned_params_file(params_file, best, study.study_name, result.changes).encode())
        result.best_params = params.tune.best
    return result


def _completed_value(trial: TrialResult) -> float:
    assert trial.value is not None  # a completed trial has its value (`as_result`)
    return trial.value


def _figure_png(study: optuna.Study, monitored: str) -> bytes:
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
            assert value is not None  # Optuna records a completed trial's value
            best = value if best is None else (min if minimize else max)(best, value)
            scores.append((trial.number, value))
            running.append((trial.number, best))
    curves.set(xlabel="epoch", ylabel=monitored, title="each trial's curve (pruned: dashed, x)")
    if scores:
        progress.plot(*zip(*scores, strict=True), "o", ms=4, label="completed trial")
        progress.step(*zip(*running, strict=True), where="post", color="black", label="best so far")
        progress.legend(fontsize=8)
    progress.set(xlabel="trial", ylabel=monitored, title=f"study {study.study_name}")
    return png(figure)


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
            setting = current(params, key)
        except (AttributeError, KeyError):
            setting = None  # a key no longer in the settings: a change
        if not same(value, setting):
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
