"""Training on tiny real features: determinism, resume, fault handling, settings the data cannot satisfy, DDP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import components.training as training
from components.config import ConfigError, FeaturizeParams, ModelParams, TrainParams
from components.errors import TrainingError
from components.featurize import featurize
from components.model_store import CARD, CHECKPOINT, HISTORY, WEIGHTS, evaluate_split
from components.training import train
from tests.conftest import TWO_CLASS_MANIFEST, two_classes
from tests.integration.shell import BIN, run

QUIET = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})


@pytest.fixture
def features(make_dataset, tiny_text_model, tmp_path):
    out = tmp_path / "features"
    featurize(make_dataset(), FeaturizeParams(out=out, text_model=str(tiny_text_model), image_size=8), progress=False)
    return out


def settings(tmp_path, name="models", **changes) -> TrainParams:
    return TrainParams(**{"out": tmp_path / name, "epochs": 3, "batch_size": 2, "patience": 10, **changes})


def weights(out) -> dict[str, np.ndarray]:
    return load_file(out / WEIGHTS)


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def test_writes_model_card_history_and_checkpoint(features, tmp_path):
    result = train(features, QUIET, settings(tmp_path), progress=False)
    out = result.out
    card = json.loads((out / CARD).read_text())
    assert card["spec"]["heads"] == ["lstm", "textcnn", "han", "image", "audio", "vision", "fusion"]
    assert card["monitor"]["head"] == "fusion" and card["monitor"]["metric"] == "mae"
    history = json.loads((out / HISTORY).read_text())
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert set(history[0]["valid"]) == set(card["spec"]["heads"]) and "acc2" in history[0]["valid"]["fusion"]
    assert (out / CHECKPOINT).is_file() and result.epochs_run == 3 and result.train_samples_per_s > 0
    # The saved best weights reload from model.json alone and score as they did when they were saved.
    valid = evaluate_split(features, out, "valid")
    assert valid["fusion"]["mae"] == pytest.approx(card["monitor"]["value"], abs=1e-6)


def test_same_seed_same_weights(features, tmp_path):
    a = train(features, ModelParams(), settings(tmp_path, "a"), progress=False)  # dropout on: the RNG is seeded too
    b = train(features, ModelParams(), settings(tmp_path, "b"), progress=False)
    assert_same_weights(weights(a.out), weights(b.out))
    c = train(features, ModelParams(), settings(tmp_path, "c", seed=1), progress=False)
    assert any(not np.array_equal(weights(a.out)[k], weights(c.out)[k]) for k in weights(a.out))


def test_resume_continues_exactly_where_it_stopped(features, tmp_path):
    straight = train(features, ModelParams(), settings(tmp_path, "straight", epochs=4), progress=False)
    train(features, ModelParams(), settings(tmp_path, "resumed", epochs=2), progress=False)
    resumed = train(features, ModelParams(), settings(tmp_path, "resumed", epochs=4), resume=True, progress=False)
    assert resumed.epochs_run == 4
    assert_same_weights(weights(straight.out), weights(resumed.out))
    assert json.loads((straight.out / HISTORY).read_text()) == json.loads((resumed.out / HISTORY).read_text())


def test_resume_refuses_a_checkpoint_of_another_model(features, tmp_path):
    train(features, QUIET, settings(tmp_path, epochs=1), progress=False)
    other = QUIET.model_copy(update={"hidden": 12})
    with pytest.raises(TrainingError, match=r"different model \(differs in: params\)"):
        train(features, other, settings(tmp_path, epochs=2), resume=True, progress=False)
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(features, QUIET, settings(tmp_path, "empty"), resume=True, progress=False)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_checkpoint(features, tmp_path, monkeypatch):
    params = settings(tmp_path)
    train(features, QUIET, params.model_copy(update={"epochs": 1}), progress=False)
    checkpoint = (params.out / CHECKPOINT).read_bytes()
    real, calls = training.head_losses, {"n": 0}

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2, step 2 (3 steps per epoch, resumed after epoch 1)
            losses["fusion"] = losses["fusion"] * float("nan")
        return losses

    monkeypatch.setattr(training, "head_losses", poisoned)
    with pytest.raises(TrainingError, match=r"not finite \(nan\) at epoch 2, step 2.*epoch 1\) is kept"):
        train(features, QUIET, params, resume=True, progress=False)
    assert (params.out / CHECKPOINT).read_bytes() == checkpoint


def test_single_task_trains_one_head(features, tmp_path):
    result = train(features, QUIET, settings(tmp_path, single_task="textcnn"), progress=False)
    assert result.spec.heads == ("textcnn",) and result.spec.image is None and result.monitor == "textcnn mae"
    assert all(k.startswith(("heads.textcnn", "encoders.textcnn")) for k in weights(result.out))


def test_modality_subset_and_a_modality_the_dataset_lacks(features, tmp_path):
    result = train(features, QUIET, settings(tmp_path, modalities=("text", "audio")), progress=False)
    assert result.spec.heads == ("lstm", "textcnn", "han", "audio", "fusion")
    with pytest.raises(ConfigError, match=r"asks for \['image'\], but dataset 'tiny' has only \['text', 'audio'\]"):
        # the features of a text+audio dataset
        spec_only = settings(tmp_path, modalities=("image",))
        state = training.load_features(features)[1].model_copy(update={"image": None, "vision": None})
        training.build_spec(state, QUIET, spec_only)


def test_classification_labels(make_dataset, tiny_text_model, tmp_path):
    data = make_dataset(two_classes, name="cls", manifest=TWO_CLASS_MANIFEST)
    features = tmp_path / "cls-features"
    featurize(data, FeaturizeParams(out=features, text_model=str(tiny_text_model), image_size=8), progress=False)
    result = train(features, QUIET, settings(tmp_path), progress=False)
    assert result.monitor == "fusion f1_weighted"
    assert weights(result.out)["heads.fusion.4.weight"].shape[0] == 2


def test_ddp_two_processes_match_one(features, tmp_path):
    """torchrun with 2 CPU processes (gloo) takes the same steps as one process with the same global batch."""
    single = train(features, QUIET, settings(tmp_path, "single"), progress=False)
    params = {
        "featurize": {"out": str(features)},
        "model": QUIET.model_dump(mode="json"),
        "train": settings(tmp_path, "ddp").model_dump(mode="json"),
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [str(BIN / "torchrun"), "--nproc_per_node=2", "--no-python", str(BIN / "msa"), "train"]
    result = run(command, cwd=tmp_path)
    assert "train: 3 epochs" in result.stdout
    # Per-sample gradients summed in a different order differ by float rounding (~1e-7); Adam divides by sqrt(v),
    # which turns that into up to ~1e-5 on weights whose gradients are near zero. lr * steps bounds it (1e-3 * 9).
    assert_same_weights(weights(single.out), weights(tmp_path / "ddp"), atol=2e-4)
