"""The optimizer and its schedule (components.training.step): layer-wise learning rates of a fine-tuned transformer,
and the warmup and decay that training sets step by step."""

from __future__ import annotations

import itertools

import pytest
import torch

from components.core.config import TrainParams
from components.training.step import _layer_groups, lr_scale


def test_constant_without_warmup_is_one_everywhere():
    assert {lr_scale(step, 100, 0.0, "constant") for step in range(100)} == {1.0}


def test_warmup_rises_from_the_first_step_then_linear_falls_to_the_last():
    total = 100
    scales = [lr_scale(step, total, 0.1, "linear") for step in range(total)]
    assert scales[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert scales[10] == 1.0
    assert all(a > b for a, b in itertools.pairwise(scales[10:]))
    assert 0 < scales[-1] <= 1 / 90
    assert lr_scale(total + 5, total, 0.1, "linear") == 0.0  # past the plan (more epochs than planned): no steps


def test_warmup_then_constant():
    assert [lr_scale(s, 10, 0.2, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_layer_decay_lowers_each_layer_below_the_top_and_the_embeddings_most():
    names = [
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.output.dense.weight",
        "encoder.layer.1.output.dense.bias",
        "encoder.layer.10.output.dense.bias",
    ]
    named = [(n, torch.nn.Parameter(torch.zeros(1))) for n in names]
    groups = _layer_groups(named, lr=1e-4, decay=0.5)
    by_depth = [(len(g["params"]), g["lr"]) for g in groups]
    # depths 0 (embeddings), 1 (layer 0), 2 (layer 1), 11 (layer 10): the top trains at lr
    assert by_depth == [(2, 1e-4 * 0.5**11), (1, 1e-4 * 0.5**10), (2, 1e-4 * 0.5**9), (1, 1e-4)]
    assert sum(len(g["params"]) for g in groups) == len(named)
    flat = _layer_groups(named, lr=1e-4, decay=1.0)
    assert {g["lr"] for g in flat} == {1e-4}


def test_settings_reject_a_decay_above_one_and_a_whole_warmup():
    with pytest.raises(ValueError, match="layer_decay"):
        TrainParams(layer_decay=1.5)
    with pytest.raises(ValueError, match="warmup"):
        TrainParams(warmup=1.0)


class Interrupted(Exception):
    pass


def test_a_scheduled_layer_decayed_finetune_resumes_exactly(make_dataset, tiny_text_model, tmp_path):
    """The rates are a function of the step: a run stopped after epoch 1 and resumed ends on the straight run's
    weights, and the transformer's layers trained at their decayed rates."""
    from components.core.config import FeaturizeParams, ModelParams
    from components.features.featurize import featurize
    from components.models.store import CHECKPOINT
    from components.training.train import train

    features = featurize(
        make_dataset(),
        FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), image_size=8),
        progress=False,
    ).out
    quiet = ModelParams(hidden=8, dropout=0.0, text_models=("textcnn",), textcnn={"feature_maps": 4, "dropout": 0.0})
    settings = {"text_encoder": "finetune", "layer_decay": 0.5, "warmup": 0.3, "schedule": "linear", "epochs": 2}

    def run(name: str, stop_after: int | None = None) -> dict:
        params = TrainParams(out=tmp_path / name, batch_size=2, **settings)

        def stop(record: dict, improved: bool) -> None:
            if record["epoch"] == stop_after:
                raise Interrupted

        try:
            result = train(features, quiet, params, progress=False, on_epoch=stop)
        except Interrupted:
            result = train(features, quiet, params, progress=False)  # resume=None: continues the checkpoint
        assert result.resumed_from == stop_after and result.epochs_run == 2
        return torch.load(tmp_path / name / CHECKPOINT, weights_only=True)

    straight, resumed = run("straight"), run("resumed", stop_after=1)
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    rates = [group["lr"] for group in straight["optimizer"]["param_groups"]]
    bases = [group["base_lr"] for group in straight["optimizer"]["param_groups"]]
    encoder = bases[1:]  # the sub-models' group first, then the transformer's by depth
    assert len(encoder) >= 2 and all(b / a == pytest.approx(2.0) for a, b in itertools.pairwise(encoder))
    assert encoder[-1] == pytest.approx(TrainParams().encoder_lr)
    assert all(0 < r < b for r, b in zip(rates, bases, strict=True)), "the linear fall did not lower the rates"
