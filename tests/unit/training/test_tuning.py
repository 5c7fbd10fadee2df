"""The search space in params.yaml, the values a trial tries, and the rule that tuning never reads the test split."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from components.core.config import ConfigError, Params, load_params, with_overrides
from components.data.dataset import SPLITS
from components.training.tuning import conclude, plan, run_trial, suggest

REPO_PARAMS = Path(__file__).resolve().parents[3] / "params.yaml"


def write_tune(tmp_path: Path, tune: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tune": tune}))
    return path


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": {"low": 0.001, "high": 0.01}}, "'train.lrr' is not a setting (did you mean 'train.lr'?)"),
        ({"train.seed": {"choices": [0, 1]}}, "'train.seed' cannot be tuned"),
        ({"featurize.max_tokens": {"choices": [32, 64]}}, "'featurize.max_tokens' cannot be tuned"),
        ({"model.dropout": {"low": 0.0, "high": 1.5}}, "model.dropout: Input should be less than 1"),
        ({"train.lr": {"low": 0.01, "high": 0.001}}, "low (0.01) must be below high (0.001)"),
        ({"train.lr": {"low": 0.0, "high": 0.1, "log": True}}, "a log scale needs low > 0"),
        ({"model.hidden": {"choices": [32], "low": 8, "high": 16}}, "either choices or low and high"),
        ({"train.loss": {"choices": ["l1", "huber"]}}, "train.loss: Input should be 'l1' or 'mse'"),
    ],
)
def test_a_bad_search_space_is_one_clear_error(tmp_path: Path, space: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_params(write_tune(tmp_path, {"space": space}))
    assert message in str(error.value)


def test_the_shipped_space_is_valid_and_overrides_reach_nested_settings() -> None:
    params = load_params(REPO_PARAMS)
    assert {"train.lr", "model.hidden"} <= params.tune.space.keys()
    tuned = with_overrides(params, {"model.textcnn.dropout": 0.3, "train.loss_weights.fusion": 2.0, "train.lr": 0.01})
    assert tuned.model.textcnn.dropout == 0.3 and tuned.train.loss_weights["fusion"] == 2.0 and tuned.train.lr == 0.01
    assert tuned.train.loss_weights["lstm"] == 1.0 and params.train.lr == 0.001  # the rest, and the original, stay


def test_a_trial_draws_integers_for_integer_settings_and_floats_or_choices_elsewhere() -> None:
    params = Params.model_validate(
        {
            "tune": {
                "space": {
                    "model.hidden": {"low": 16, "high": 64, "step": 16},
                    "train.patience": {"low": 2, "high": 9},
                    "model.dropout": {"low": 0.0, "high": 0.5},
                    "train.loss": {"choices": ["l1", "mse"]},
                }
            }
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        values = suggest(study.ask(), params.tune.space, params)
        assert isinstance(values["model.hidden"], int) and values["model.hidden"] in (16, 32, 48, 64)
        assert isinstance(values["train.patience"], int) and 2 <= values["train.patience"] <= 9
        assert isinstance(values["model.dropout"], float) and values["train.loss"] in ("l1", "mse")
        with_overrides(params, values)  # every drawn value is one its setting takes


def _tune_params(tmp_path: Path, features: Path, name: str) -> Params:
    return Params.model_validate(
        {
            "featurize": {"out": str(features)},
            "model": {"hidden": 8, "dropout": 0.0, "textcnn": {"feature_maps": 4, "dropout": 0.0}},
            "train": {"epochs": 3, "batch_size": 2, "patience": 10},
            "tune": {
                "trials": 2,
                "concurrency": 1,
                "storage": f"sqlite:///{tmp_path / f'{name}.db'}",
                "out": str(tmp_path / f"{name}-trials"),
                "best": str(tmp_path / f"{name}-tuned.yaml"),
                "report": str(tmp_path / f"{name}-tune.json"),
                "space": {"train.lr": {"low": 0.001, "high": 0.01, "log": True}, "model.hidden": {"choices": [4, 8]}},
            },
        }
    )


def test_tuning_never_reads_the_test_split(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials on features whose test rows are NaN (labels, token states, pixels, frames) score exactly as on the
    real ones, and no test row reaches the tensors training builds: training drops them first."""
    from components.training import batches

    seen: list[np.ndarray] = []

    def model_inputs(arrays: dict, spec, **kwargs):
        seen.append(np.unique(arrays["split"]))
        return build_tensors(arrays, spec, **kwargs)

    build_tensors = batches.model_inputs
    monkeypatch.setattr(batches, "model_inputs", model_inputs)  # where training builds its tensors
    poisoned = tmp_path / "poisoned"
    shutil.copytree(trained.features, poisoned)
    arrays = load_file(poisoned / "features.safetensors")
    test = arrays["split"] == SPLITS.index("test")
    assert test.any()
    for name, values in arrays.items():
        if name != "split" and values.dtype.kind == "f":
            values[test] = np.nan
        elif name == "image.pixels":
            values[test] = 255 - values[test]
    save_file(arrays, poisoned / "features.safetensors")
    state = json.loads((poisoned / "featurizer.json").read_text())  # the poisoned file, recorded as featurize would
    state["features_sha256"] = hashlib.sha256((poisoned / "features.safetensors").read_bytes()).hexdigest()
    (poisoned / "featurizer.json").write_text(json.dumps(state))

    scores = {}
    for name, features in (("clean", trained.features), ("poisoned", poisoned)):
        params = _tune_params(tmp_path, features, name)
        assert plan(params).todo == 2
        results = [run_trial(params) for _ in range(2)]
        assert results[0].values == {"train.lr": 0.001, "model.hidden": 8}  # first, the settings as they are
        assert all(r.state == "COMPLETE" and np.isfinite(r.value) for r in results), results
        scores[name] = [(r.values, r.value, r.epochs) for r in results]
        assert not any((tmp_path / f"{name}-trials").rglob("*.safetensors"))  # finished trials leave no model behind
    assert scores["clean"] == scores["poisoned"]
    assert len(seen) == 4 and all(SPLITS.index("test") not in splits for splits in seen)

    # The study as it stands: its report, and the params file with the best trial's values.
    params = _tune_params(tmp_path, trained.features, "clean")
    assert plan(params).todo == 0
    assert plan(params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 3})})).todo == 1
    longer = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 4})})
    with pytest.raises(ConfigError, match="was started with other data, settings or search space"):
        plan(longer)  # its trials would not compare with the ones already there
    params_file = tmp_path / "params.yaml"
    params_file.write_text("# mine\ntrain:\n  epochs: 3  # short\nmodel:\n  hidden: 8\n")
    result = conclude(params, params_file)
    best = min(scores["clean"], key=lambda s: s[1])
    assert result.best is not None and result.best.value == best[1] and result.best.values == best[0]
    tuned = load_params(params.tune.best)
    assert tuned.train.lr == best[0]["train.lr"] and tuned.model.hidden == best[0]["model.hidden"]
    assert tuned.train.epochs == 3  # the user's other settings stay
    if best[0] == results[0].values:  # the settings as they are won: no experiment is offered
        assert result.best_is_current and "dvc exp run" not in result.summary()
    else:
        assert f"-S 'train.lr={best[0]['train.lr']}'" in result.summary()
    report = json.loads(params.tune.report.read_text())
    assert [t["state"] for t in report["trials"]] == ["COMPLETE", "COMPLETE"]
    assert report["monitor"] == "valid fusion mae"
    assert params.tune.report.with_suffix(".png").read_bytes().startswith(b"\x89PNG")

    # A later run's trial: its sampler is seeded by its trial number (2), so it cannot redraw trial 1's values.
    third = run_trial(params.model_copy(update={"tune": params.tune.model_copy(update={"trials": 3})}))
    assert third.number == 2 and third.values["train.lr"] not in [v["train.lr"] for v, _, _ in scores["clean"]]


@pytest.mark.parametrize("winner", ["current", "other"])
def test_the_current_settings_are_never_offered_as_an_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, winner: str
) -> None:
    """The first trial of a study is the settings as they are: when it scores best, `msa tune` says so and offers no
    `dvc exp run`; otherwise it offers only the values that differ from the settings."""
    from components.training import tuning

    params = Params.model_validate(
        {
            "model": {"hidden": 8},
            "train": {"lr": 0.001},
            "tune": {
                "best": str(tmp_path / "params.tuned.yaml"),
                "report": str(tmp_path / "tune.json"),
                "space": {"train.lr": {"low": 0.0001, "high": 0.01, "log": True}, "model.hidden": {"choices": [8, 16]}},
            },
        }
    )
    space = {
        "train.lr": optuna.distributions.FloatDistribution(0.0001, 0.01, log=True),
        "model.hidden": optuna.distributions.CategoricalDistribution([8, 16]),
    }
    study = optuna.create_study(study_name="s", direction="minimize")
    scores = {"current": (0.5, 0.9), "other": (0.9, 0.5)}[winner]
    study.add_trial(
        optuna.trial.create_trial(params={"train.lr": 0.001, "model.hidden": 8}, distributions=space, value=scores[0])
    )
    study.add_trial(
        optuna.trial.create_trial(params={"train.lr": 0.003, "model.hidden": 8}, distributions=space, value=scores[1])
    )
    monkeypatch.setattr(tuning, "open_study", lambda p: study)
    monkeypatch.setattr(tuning, "monitor", lambda p: ("fusion", "mae", "min"))
    params_file = tmp_path / "params.yaml"
    params_file.write_text("model:\n  hidden: 8\ntrain:\n  lr: 0.001\n")

    result = conclude(params, params_file)
    report = json.loads((tmp_path / "tune.json").read_text())
    header = (tmp_path / "params.tuned.yaml").read_text().split("\n", 3)[:3]
    if winner == "current":
        assert result.best_is_current and result.overrides == []
        assert "the current settings scored best" in result.summary() and "dvc exp run" not in result.summary()
        assert report["best_is_current"] is True and report["changes"] == {}
        assert "no experiment" in " ".join(header) and "dvc exp run" not in " ".join(header)
    else:
        assert not result.best_is_current and result.changes == {"train.lr": 0.003}  # model.hidden is unchanged
        assert result.summary().endswith("as an experiment: dvc exp run -S 'train.lr=0.003'")
        assert report["best_is_current"] is False and report["changes"] == {"train.lr": 0.003}
        assert header[2] == "# dvc exp run -S train.lr=0.003"


def test_trial_processes_on_sqlite_never_take_the_same_waiting_trial(trained, tmp_path: Path) -> None:
    """SQLite ignores the row lock Optuna takes a waiting trial under: without the study's ask lock, processes
    asking at once could both run one retried trial. Eight handles (as eight processes hold) ask at once."""
    from concurrent.futures import ThreadPoolExecutor

    from components.training.study import open_study

    params = _tune_params(tmp_path, trained.features, "shared")
    first = open_study(params)
    for lr in np.linspace(0.001, 0.01, 8):
        first.enqueue_trial({"train.lr": float(lr), "model.hidden": 8})
    studies = [open_study(params) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda study: study.ask().number, studies))
    assert sorted(taken) == list(range(8)), taken
    assert (tmp_path / "shared.db.ask.lock").exists()
