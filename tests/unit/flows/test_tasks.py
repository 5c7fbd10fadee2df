"""What the flows add to the stages: retries, backoff and timeouts (`with_retries`, `with_timeout`), which failures
are retried (`_may_pass`); and training's resume policy: a checkpoint of the same inputs only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from components.core.config import ConfigError, FeaturizeParams, ModelParams, Params, PipelineParams, TrainParams
from components.core.errors import DataError, TrackingError, TrainingError
from components.models.store import CHECKPOINT, HISTORY, WEIGHTS
from components.training.train import resume_point, train
from flows import tasks
from tests.conftest import tiny_dataset

PIPELINE = PipelineParams(
    retries=4,
    retry_delay=0.5,
    timeouts={
        "validate": 11,
        "featurize": 12,
        "train": 13,
        "evaluate": 14,
        "robustness": 17,
        "compress": 15,
        "register": 16,
    },
)
STAGE_TASKS = {
    "validate": tasks.validate,
    "featurize": tasks.featurize,
    "train": tasks.train,
    "evaluate": tasks.evaluate,
    "robustness": tasks.robustness,
    "compress": tasks.compress,
}
IO_TASKS = {"register": tasks.register, "lineage": tasks.already_registered}


@pytest.mark.parametrize("name", IO_TASKS)
def test_tracking_tasks_retry_with_exponential_backoff(name):
    retried = tasks.with_retries(IO_TASKS[name], Params(pipeline=PIPELINE), PIPELINE.timeouts.register_)
    assert retried.name == name
    assert retried.retries == 4
    assert retried.retry_delay_seconds == [0.5, 1.0, 2.0, 4.0]
    assert retried.retry_condition_fn is tasks._may_pass
    assert retried.timeout_seconds == 16


@pytest.mark.parametrize("name", STAGE_TASKS)
def test_stage_tasks_get_a_timeout_and_no_retries(name):
    timed = tasks.with_timeout(STAGE_TASKS[name], 42)
    assert timed.name == name and timed.timeout_seconds == 42
    assert timed.retries == 0 and timed.retry_condition_fn is None, "a stage fails the same way again"


def test_with_retries_copies_and_follows_the_defaults():
    defaults = Params().pipeline
    retried = tasks.with_retries(tasks.register, Params(), defaults.timeouts.register_)
    assert retried.retries == defaults.retries == 3
    assert retried.retry_delay_seconds == [2.0, 4.0, 8.0]
    assert tasks.register.retries == 0 and tasks.register.timeout_seconds is None, "the task itself is unchanged"
    none = tasks.with_retries(tasks.register, Params(pipeline=PipelineParams(retries=0)), 1)
    assert none.retries == 0 and none.retry_delay_seconds == []


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (DataError("data/raw/manifest.yaml", "bad"), False),
        (ConfigError("params.yaml: 1 invalid setting(s)"), False),
        (TrackingError("tracking server does not answer"), True),
        (ConnectionError("refused"), True),
        (TimeoutError(), True),
        (TrainingError("anything else may pass"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_only_failures_that_may_pass_are_retried(error, retried):
    assert tasks._may_pass(tasks.register, None, Failed(data=error)) is retried


def test_a_completed_state_is_not_retried():
    assert tasks._may_pass(tasks.register, None, Completed(data={"registered": True})) is False


# The train task's resume: the tiny dataset and model of the `trained` fixture, trained once per module.

MODEL = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})


def settings(out: Path, **changes) -> TrainParams:
    return TrainParams(out=out, **({"epochs": 3, "batch_size": 2, "patience": 10} | changes))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_text_model) -> tuple[Path, Path]:
    """(features, model directory) of a finished 3-epoch training: its checkpoint is at epoch 3."""
    from components.features.featurize import featurize

    root = tmp_path_factory.mktemp("resume")
    params = FeaturizeParams(out=root / "features", text_model=str(tiny_text_model), image_size=8)
    features = featurize(tiny_dataset(root), params, progress=False).out
    return features, train(features, MODEL, settings(root / "models"), progress=False).out


def test_no_checkpoint_no_resume(run, tmp_path):
    features, _ = run
    assert resume_point(features, MODEL, settings(tmp_path / "never-trained")) is None


def test_a_checkpoint_of_the_same_inputs_resumes_at_its_epoch(run, tmp_path):
    features, model = run
    assert resume_point(features, MODEL, settings(model)) == 3
    moved = shutil.copytree(model, tmp_path / "moved")
    assert resume_point(features, MODEL, settings(moved, device="cpu")) == 3, "where it runs is not an input"


@pytest.mark.parametrize(
    "changes",
    [{"lr": 0.01}, {"epochs": 4}, {"batch_size": 3}, {"seed": 1}, {"patience": 2}, {"loss": "mse"}],
    ids=lambda c: next(iter(c)),
)
def test_a_checkpoint_of_other_settings_is_not_resumed(run, changes):
    features, model = run
    assert resume_point(features, MODEL, settings(model, **changes)) is None


def test_a_checkpoint_of_another_model_is_not_resumed(run):
    features, model = run
    assert resume_point(features, ModelParams(hidden=16, dropout=0.0), settings(model)) is None


def test_a_checkpoint_of_other_features_is_not_resumed(run, tmp_path, tiny_text_model):
    from components.features.featurize import featurize

    features, model = run
    other = featurize(
        tiny_dataset(tmp_path),
        FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), image_size=8, max_tokens=16),
        progress=False,
    ).out
    assert resume_point(other, MODEL, settings(model)) is None
    assert resume_point(features, MODEL, settings(model)) == 3


def test_an_unreadable_checkpoint_is_not_resumed(run, tmp_path):
    features, model = run
    copy = shutil.copytree(model, tmp_path / "corrupt")
    (copy / CHECKPOINT).write_bytes(b"not a checkpoint")
    assert resume_point(features, MODEL, settings(copy)) is None


def test_resuming_a_run_that_stopped_early_trains_no_more_epochs(run, tmp_path, monkeypatch):
    import components.training.train as training

    features, _ = run
    params = settings(tmp_path / "early", epochs=10, patience=1)
    with monkeypatch.context() as patch:  # the first epoch is the best one: epoch 2 stops the run
        patch.setattr(training, "is_better", lambda kind, new, old: old is None)
        stopped = train(features, MODEL, params, progress=False)
    assert stopped.stopped_early and stopped.epochs_run == 2 and stopped.best_epoch == 1
    written = {name: (params.out / name).read_bytes() for name in (CHECKPOINT, HISTORY, WEIGHTS)}

    assert resume_point(features, MODEL, params) == 2
    resumed = train(features, MODEL, params, resume=True, progress=False)
    assert resumed.stopped_early and resumed.epochs_run == 2 and resumed.resumed_from == 2
    assert (resumed.best_epoch, resumed.best_value) == (1, stopped.best_value)
    assert len(resumed.history) == 2
    assert {name: (params.out / name).read_bytes() for name in written} == written, "nothing was trained again"


def test_training_resumes_a_finished_checkpoint_of_the_same_inputs_without_training(run, tmp_path):
    """The policy `msa train`, `dvc repro` and the flows share: resume=None continues a checkpoint of the same
    inputs."""
    features, model = run
    out = shutil.copytree(model, tmp_path / "models")
    checkpoint = (out / CHECKPOINT).read_bytes()
    result = train(features, MODEL, settings(out), progress=False)
    assert result.resumed_from == 3 and result.epochs_run == 3
    assert (out / CHECKPOINT).read_bytes() == checkpoint

    assert train(features, MODEL, settings(out, lr=0.01, epochs=1), progress=False).resumed_from is None, (
        "a checkpoint of other settings starts over"
    )
    restarted = train(features, MODEL, settings(out, lr=0.01, epochs=1), resume=False, progress=False)
    assert restarted.resumed_from is None


def test_a_checkpoint_without_its_best_model_is_not_resumed(run, tmp_path):
    """As after `dvc repro` removed the stage's outputs but kept the persisted checkpoint: starting over is the only
    way to have a best model again."""
    features, model = run
    out = shutil.copytree(model, tmp_path / "models")
    (out / WEIGHTS).unlink()
    (out / "model.json").unlink()
    assert resume_point(features, MODEL, settings(out)) is None
