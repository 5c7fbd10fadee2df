"""Multi-seed training (train.seeds): N trainings, the best on valid is the model, evaluate reports mean and std."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.core.config import EvaluateParams, ModelParams, TrainParams
from components.evaluation.evaluate import evaluate
from components.models.store import HISTORY, SEEDS, WEIGHTS, read_card, seed_dirs
from components.training.train import train

MODEL = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})


def test_the_best_seed_on_valid_is_the_model_and_evaluate_reports_every_seed(trained, tmp_path) -> None:
    out = tmp_path / "seeds"
    epochs = []
    settings = TrainParams(out=out, epochs=2, batch_size=4, patience=10, seed=3, seeds=3)
    result = train(trained.features, MODEL, settings, progress=False, on_epoch=lambda r, _: epochs.append(r["seed"]))

    assert epochs == [3, 3, 4, 4, 5, 5]  # every seed's epochs reach the callback, each record says whose
    record = json.loads((out / SEEDS).read_text())
    assert record["seeds"] == [3, 4, 5] and set(result.seeds) == {3, 4, 5}
    valid = {int(s): v for s, v in record["valid"].items()}
    assert record["chosen"] == result.seed == min(valid, key=valid.get)  # MAE: lower is better; never test
    chosen = seed_dirs(out)[result.seed]
    assert all((out / name).read_bytes() == (chosen / name).read_bytes() for name in (WEIGHTS, HISTORY))
    # The card is the chosen seed's, with what training was given (all seeds) recorded once it ended.
    assert read_card(out).model_copy(update={"trained_with": None}) == read_card(chosen)
    assert read_card(out).trained_with is not None
    assert read_card(out).monitor.value == pytest.approx(min(valid.values()))
    assert "best of 3 seeds: seed" in result.summary()
    # Each seed is its own training: a seed trained alone gives the same weights.
    one = settings.model_copy(update={"out": tmp_path / "alone", "seed": 4, "seeds": 1})
    alone = train(trained.features, MODEL, one, progress=False)
    assert (alone.out / "model.safetensors").read_bytes() == (seed_dirs(out)[4] / "model.safetensors").read_bytes()

    params = EvaluateParams(
        report=tmp_path / "eval.json",
        headline=tmp_path / "headline.json",
        seeds=tmp_path / "seeds.json",
        plots=tmp_path / "plots",
        figures=tmp_path / "figures",
        device="cpu",
    )
    report = evaluate(trained.features, out, params, progress=False).seeds
    assert report == json.loads(params.seeds.read_text())
    assert report["seeds"] == [3, 4, 5] and report["chosen"] == result.seed and set(report["runs"]) == {"3", "4", "5"}
    maes = [report["runs"][s]["test"]["fusion"]["mae"] for s in ("3", "4", "5")]
    assert report["mean"]["test"]["fusion"]["mae"] == pytest.approx(np.mean(maes))
    assert report["std"]["test"]["fusion"]["mae"] == pytest.approx(np.std(maes)) and np.std(maes) > 0
    evaluation = json.loads(params.report.read_text())  # the chosen model's, as with one seed
    assert evaluation["test"]["fusion"]["mae"] == pytest.approx(
        report["runs"][str(result.seed)]["test"]["fusion"]["mae"]
    )

    # Back to one seed: the multi-seed record goes (it would describe another model), the report has one run.
    single = train(trained.features, MODEL, settings.model_copy(update={"seeds": 1}), progress=False)
    assert not (out / SEEDS).exists() and not (out / "seeds").exists() and single.seeds == {}
    one = evaluate(trained.features, out, params, progress=False).seeds
    assert one["seeds"] is None and list(one["runs"]) == ["single"] and one["std"]["test"]["fusion"]["mae"] == 0.0


def test_several_seeds_travel_with_the_model_and_a_single_seed_clears_them(trained, tmp_path) -> None:
    """Across machines: the seeds record and every seed's model go up with the chosen one, under one digest; a
    single-seed model arriving where an older multi-seed training lies leaves no record of it."""
    from mlflow import MlflowClient

    from components.models import store as model_store
    from components.models import transfer

    out = tmp_path / "seeds"
    train(trained.features, MODEL, TrainParams(out=out, epochs=1, batch_size=4, seeds=2), progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("store", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    recorded = transfer.publish(out, client, run)
    assert recorded == model_store.digest(out) != model_store.digest(trained.model)
    worker = transfer.fetch(client, run, tmp_path / "pipeline", recorded)
    assert set(seed_dirs(worker)) == {0, 1} and model_store.digest(worker) == recorded

    single = client.create_run(experiment).info.run_id
    transfer.fetch(client, single, worker, transfer.publish(trained.model, client, single))
    assert seed_dirs(worker) == {} and not (worker / SEEDS).exists() and not (worker / "seeds").exists()
    assert model_store.digest(worker) == model_store.digest(trained.model)


def test_means_and_stds_cover_every_head_any_seed_has() -> None:
    from components.evaluation.evaluate import _over_seeds

    runs = {
        "0": {"test": {"fusion": {"mae": 1.0, "corr": 0.5}, "image": {"mae": 2.0}}},
        "1": {"test": {"fusion": {"mae": 3.0}}},
    }
    assert _over_seeds(runs, np.mean) == {"test": {"fusion": {"mae": 2.0, "corr": 0.5}, "image": {"mae": 2.0}}}
    assert _over_seeds(runs, np.std)["test"]["fusion"]["mae"] == 1.0
