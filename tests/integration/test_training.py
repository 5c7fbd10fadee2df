"""Training on tiny real features: determinism, resume, fault handling, settings the data cannot satisfy, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file

import components.training.step as step
import components.training.train as training
from components.core.config import ConfigError, FeaturizeParams, ModelParams, TrainParams
from components.core.errors import TrainingError, TrainingInterrupted
from components.evaluation.heads import evaluate_heads, evaluate_split
from components.features.contract import load_features
from components.features.featurize import featurize
from components.models import MultiTaskModel
from components.models.spec import ModelSpec
from components.models.store import (
    CARD,
    CHECKPOINT,
    HISTORY,
    WEIGHTS,
    model_inputs,
    split_rows,
)
from components.training.train import train
from devtools.servers import free_ports
from tests.conftest import TWO_CLASS_MANIFEST, tiny_dataset, two_classes
from tests.integration.conftest import REPO
from tests.integration.shell import BIN, environment, run

QUIET = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})  # draws no random numbers
DROPOUT = ModelParams()  # the repository's defaults, as in params.yaml's model section: dropout 0.2, textcnn 0.5
REAL_STREAM_SEED = training.stream_seed
ROUNDING = 2e-4  # what float rounding of the all-reduce moves a weight by in these runs, at most (see the DDP test)


@pytest.fixture
def features(make_dataset, tiny_text_model, tmp_path):
    out = tmp_path / "features"
    featurize(make_dataset(), FeaturizeParams(out=out, text_model=str(tiny_text_model), image_size=8), progress=False)
    return out


def settings(tmp_path, name="models", **changes) -> TrainParams:
    return TrainParams(**{"out": tmp_path / name, "epochs": 3, "batch_size": 2, "patience": 10, **changes})


def weights(out) -> dict[str, np.ndarray]:
    return load_file(out / WEIGHTS)


def last_weights(out) -> dict[str, np.ndarray]:
    """The weights after the last epoch (the checkpoint's); WEIGHTS holds the best epoch's."""
    return {k: v.numpy() for k, v in torch.load(out / CHECKPOINT, weights_only=True)["model"].items()}


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def rms_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a) / sum(a[k].size for k in a)))


def dropout_rates(params: ModelParams) -> dict[str, float]:
    """Every dropout setting in these model params by dotted name: model.dropout, model.textcnn.dropout, ..."""

    def walk(value, name):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from walk(inner, f"{name}.{key}")
        elif name.endswith("dropout"):
            yield name, value

    return dict(walk(params.model_dump(), "model"))


def other_stream(seed: int, epoch: int, rank: int) -> int:
    """A stand-in for `stream_seed` that draws other dropout masks for the same (seed, epoch, rank)."""
    return REAL_STREAM_SEED(seed + 1000, epoch, rank)


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


def test_resume_continues_exactly_where_it_stopped(features, tmp_path, monkeypatch):
    """With dropout on: each epoch's stream restarts from (seed, epoch, rank), so the resumed epochs draw the masks
    that the uninterrupted run drew (no generator state is carried in the checkpoint)."""
    assert all(rate > 0 for rate in dropout_rates(DROPOUT).values())
    straight = train(features, DROPOUT, settings(tmp_path, "straight", epochs=4), progress=False)
    train(features, DROPOUT, settings(tmp_path, "resumed", epochs=2), progress=False)
    shutil.copytree(tmp_path / "resumed", tmp_path / "other-masks")
    resumed = train(features, DROPOUT, settings(tmp_path, "resumed", epochs=4), resume=True, progress=False)
    assert resumed.epochs_run == 4 and resumed.resumed_from == 2
    assert_same_weights(weights(straight.out), weights(resumed.out))  # the best epoch's, which may be 1 or 2
    assert_same_weights(last_weights(straight.out), last_weights(resumed.out))
    assert json.loads((straight.out / HISTORY).read_text()) == json.loads((resumed.out / HISTORY).read_text())
    # The masks matter: resuming the same checkpoint with other ones for epochs 3 and 4 ends elsewhere.
    monkeypatch.setattr(training, "stream_seed", other_stream)
    other = train(features, DROPOUT, settings(tmp_path, "other-masks", epochs=4), resume=True, progress=False)
    assert other.resumed_from == 2
    assert max_difference(last_weights(other.out), last_weights(straight.out)) > 10 * ROUNDING


def test_stream_seed_is_deterministic_and_distinct_per_seed_epoch_and_rank():
    keys = [(seed, epoch, rank) for seed in range(4) for epoch in range(1, 51) for rank in range(8)]
    seeds = [training.stream_seed(*key) for key in keys]
    assert seeds == [training.stream_seed(*key) for key in keys]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)  # what torch.manual_seed takes
    # Distinct for every key: unlike e.g. seed + epoch + rank, where (0, 2, 0) and (0, 1, 1) would share a stream.
    assert len(set(seeds)) == len(keys)
    # The same key gives the same masks in any process: the DDP tests (rank 0 in torchrun against this process) and
    # the resume test (a later train call) check that it holds across processes and calls, not only here.
    masks = []
    for _ in range(2):
        torch.manual_seed(training.stream_seed(0, 1, 1))
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.5))
    assert torch.equal(*masks)


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
    real, calls = step.head_losses, {"n": 0}

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2, step 2 (3 steps per epoch, resumed after epoch 1)
            losses["fusion"] = losses["fusion"] * float("nan")
        return losses

    monkeypatch.setattr(step, "head_losses", poisoned)  # what every training step calls
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


def test_ddp_without_randomness_matches_one_process(features, tmp_path):
    """torchrun with 2 CPU processes (gloo) takes the same steps as one process with the same global batch when the
    model draws no random numbers: every dropout of QUIET is 0, so the per-rank streams are never drawn from."""
    rates = dropout_rates(QUIET)
    assert "model.textcnn.dropout" in rates and set(rates.values()) == {0.0}
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
    assert_same_weights(weights(single.out), weights(tmp_path / "ddp"), atol=ROUNDING)
    assert_same_weights(last_weights(single.out), last_weights(tmp_path / "ddp"), atol=ROUNDING)


# --- DDP with dropout: each rank its own random stream ----------------------------------------------------------------

SEEDS = (0, 1, 2)
EPOCHS = 4  # after 2, some one-process runs (of 8 seeds x 2 draws of masks) had not yet lowered their loss
DROPOUT_FORWARD = torch.nn.Dropout.forward


def record_streams(seeds: list[int]):
    """A torch.nn.Dropout.forward that appends the seed of the generator it draws its mask from to `seeds` whenever
    that seed changes: one entry per epoch, as training reseeds every epoch."""

    def recording(self, input):
        if self.training and self.p > 0 and (not seeds or seeds[-1] != torch.initial_seed()):
            seeds.append(torch.initial_seed())
        return DROPOUT_FORWARD(self, input)

    return recording


def same_stream_on_every_rank(seed: int, epoch: int, rank: int) -> int:
    """As before per-rank streams, when every rank seeded its generator alike: all ranks on rank 0's stream."""
    return REAL_STREAM_SEED(seed, epoch, 0)


def ddp_worker(job: str) -> None:
    """One rank under torchrun: train each run of the JSON file `job` in turn (one launch for them all: each process
    spends seconds importing torch), and write the dropout streams it drew to `job`.<rank>.json."""
    runs, drawn = json.loads(Path(job).read_text()), {}
    # torchrun's store serves one process group: a second init_process_group on it races on its keys when the ranks
    # end a run at different times (hangs or fails), so each run gets a fresh store that rank 0 hosts on its port.
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    for name, spec in runs.items():
        os.environ["MASTER_PORT"] = str(spec["port"])
        drawn[name] = []
        torch.nn.Dropout.forward = record_streams(drawn[name])
        training.stream_seed = same_stream_on_every_rank if spec["same_stream"] else REAL_STREAM_SEED
        train(spec["features"], DROPOUT, TrainParams(**spec["train"]), progress=False)
    Path(f"{job}.{os.environ['RANK']}.json").write_text(json.dumps(drawn))


@dataclass
class Run:
    history: list[dict]
    streams: list[list[int]]  # per rank, per epoch: the seed of the generator dropout drew from
    loss: tuple[float, float]  # the training loss on the whole train split, no dropout: initial weights, last epoch's
    weights: dict[str, np.ndarray]  # the last epoch's

    @property
    def mae(self) -> float:
        """The final valid fusion MAE."""
        return self.history[-1]["valid"]["fusion"]["mae"]


def train_split_loss(features, out, seed: int) -> tuple[float, float]:
    """The loss training minimizes (L1 of every head, each weight 1), on all train samples without dropout: of the
    initial weights (drawn from `seed` as training draws them) and of the last epoch's (the checkpoint's)."""
    arrays, _ = load_features(features)
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    spec = ModelSpec.model_validate_json(saved["spec"])
    tensors = model_inputs(arrays, spec)
    rows = split_rows(tensors.pop("split"), "train")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        initial = MultiTaskModel(spec)
    last = MultiTaskModel(spec)
    last.load_state_dict(saved["model"])
    cpu = torch.device("cpu")
    return tuple(sum(m["mae"] for m in evaluate_heads(model, tensors, rows, cpu).values()) for model in (initial, last))


def report(runs: dict[str, Run]) -> str:
    """The figures, for an assertion's message."""

    def line(name: str, r: Run) -> str:
        single = runs[f"single-{name.split('-')[1]}"]
        return (
            f"{name}: valid fusion MAE {r.mae:.4f}, train loss {r.loss[0]:.3f} -> {r.loss[1]:.3f}, "
            f"weights RMS from single {rms_difference(r.weights, single.weights):.5f}"
        )

    return "\n".join(line(name, r) for name, r in runs.items())


@pytest.fixture(scope="module")
def dropout_runs(tiny_text_model, tmp_path_factory) -> dict[str, Run]:
    """With DROPOUT, EPOCHS epochs, for each seed: `single-<seed>` (1 process), `other-<seed>` (1 process drawing
    other dropout masks: same initial weights, same batches), `ddp-<seed>` (2 processes); and `same-0`: 2 processes
    with both ranks on one stream."""
    root = tmp_path_factory.mktemp("dropout")
    features = root / "features"
    featurize(
        tiny_dataset(root), FeaturizeParams(out=features, text_model=str(tiny_text_model), image_size=8), progress=False
    )
    ddp = {f"ddp-{seed}": (seed, False) for seed in SEEDS} | {"same-0": (0, True)}
    job = root / "job.json"
    job.write_text(
        json.dumps(
            {
                name: {
                    "features": str(features),
                    "train": settings(root, name, epochs=EPOCHS, seed=seed).model_dump(mode="json"),
                    "same_stream": same,
                    "port": port,
                }
                for (name, (seed, same)), port in zip(ddp.items(), free_ports(len(ddp)), strict=True)
            }
        )
    )
    code = f"from tests.integration.test_training import ddp_worker; ddp_worker({str(job)!r})"
    command = [str(BIN / "torchrun"), "--nproc_per_node=2", "--no-python", str(BIN / "python"), "-c", code]
    log = root / "torchrun.log"
    runs: dict[str, Run] = {}

    def collect(name: str, seed: int, streams: list[list[int]]) -> None:
        history = json.loads((root / name / HISTORY).read_text())
        runs[name] = Run(history, streams, train_split_loss(features, root / name, seed), last_weights(root / name))

    # The 1-process runs train here while the 2 processes start (seconds of importing torch): ~5 s of 35 saved.
    with (
        log.open("w") as output,
        subprocess.Popen(
            command, cwd=root, env=environment(PYTHONPATH=str(REPO)), stdout=output, stderr=subprocess.STDOUT
        ) as launch,
    ):
        try:
            with pytest.MonkeyPatch.context() as patch:
                for seed in SEEDS:
                    for name, stream_seed in [(f"single-{seed}", REAL_STREAM_SEED), (f"other-{seed}", other_stream)]:
                        drawn: list[int] = []
                        patch.setattr(torch.nn.Dropout, "forward", record_streams(drawn))
                        patch.setattr(training, "stream_seed", stream_seed)
                        train(features, DROPOUT, settings(root, name, epochs=EPOCHS, seed=seed), progress=False)
                        collect(name, seed, [drawn])
            launch.wait(timeout=600)
        finally:
            if launch.poll() is None:
                launch.terminate()  # torchrun stops its workers
    assert launch.returncode == 0, f"{' '.join(command)} exited {launch.returncode}\n{log.read_text()}"
    drawn_by_rank = [json.loads(Path(f"{job}.{rank}.json").read_text()) for rank in (0, 1)]
    for name, (seed, _) in ddp.items():
        collect(name, seed, [drawn[name] for drawn in drawn_by_rank])
    return runs


def test_ddp_with_dropout_each_rank_draws_its_own_stream(dropout_runs):
    runs = dropout_runs
    assert all(rate > 0 for rate in dropout_rates(DROPOUT).values())
    epochs = range(1, EPOCHS + 1)
    for seed in SEEDS:
        rank0, rank1 = runs[f"ddp-{seed}"].streams
        # Rank 0 draws the single process's stream, rank 1 one of its own, every epoch (the masks of the two ranks
        # were alike before per-rank streams: both seeded one generator with train.seed).
        assert rank0 == runs[f"single-{seed}"].streams[0] == [training.stream_seed(seed, e, 0) for e in epochs]
        assert rank1 == [training.stream_seed(seed, e, 1) for e in epochs]
        assert not set(rank0) & set(rank1)
    # And rank 1's own stream changes what the run learns: the same 2-process run with both ranks on rank 0's stream
    # ends elsewhere, by far more than the all-reduce's rounding.
    same, ddp = runs["same-0"], runs["ddp-0"]
    assert same.streams[0] == same.streams[1] == ddp.streams[0]
    assert max_difference(same.weights, ddp.weights) > 10 * ROUNDING, report(runs)
    assert same.mae != ddp.mae


# Dropout alone moves the final valid fusion MAE of these runs by |other - single| <= 0.023, measured over 13 draws
# of the tiny BERT (each session draws one) x 3 seeds x 2 other draws and over 8 seeds of one BERT; MAE is ~1.0 here.
MAE_TOLERANCE = 0.05


def test_ddp_with_dropout_is_another_draw_of_the_single_process_distribution(dropout_runs):
    runs = dropout_runs
    for seed in SEEDS:
        single, other, ddp = (runs[f"{kind}-{seed}"] for kind in ("single", "other", "ddp"))
        # Both train: the loss on the train split falls from the initial weights to the last epoch's (by >= 0.06 of
        # ~7.1 in every one of 117 one-process runs measured, 13 BERTs x 3 seeds x 3 draws).
        assert single.loss[1] < single.loss[0] and ddp.loss[1] < ddp.loss[0], report(runs)
        assert all(np.isfinite(v) for epoch in ddp.history for head in epoch["valid"].values() for v in head.values())
        # 2 processes are a different draw, not the single process's run ...
        assert max_difference(ddp.weights, single.weights) > 10 * ROUNDING, report(runs)
        # ... of the same distribution. `other` is the single process drawing other masks (same initial weights, same
        # batches): the spread that dropout alone makes. Under the claim, 2 processes are one more such draw and land
        # as far from the single process's weights as `other` does. An RMS over all 463k weights varies little
        # between draws: 0.91-1.05 of each other for three 1-process draws (13 BERTs x 3 seeds); half the step size
        # (lr / 2, same masks) gives 0.5, no dropout at all 0.9.
        ratio = rms_difference(ddp.weights, single.weights) / rms_difference(other.weights, single.weights)
        assert 2 / 3 < ratio < 3 / 2, report(runs)
        # The final valid fusion MAE, within dropout's own spread (MAE_TOLERANCE). A weak check at this size: training
        # moves it by ~0.01, so it catches a run that breaks or diverges; the weights catch the subtler failures.
        assert abs(ddp.mae - single.mae) <= MAE_TOLERANCE, report(runs)
        assert 0 < abs(other.mae - single.mae) <= MAE_TOLERANCE, report(runs)


def test_ctrl_c_says_where_training_stopped_and_the_next_run_continues(features, tmp_path):
    def interrupt_after_epoch_2(record, improved):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises, here between two epochs

    params = settings(tmp_path, epochs=5)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(features, QUIET, params, progress=False, on_epoch=interrupt_after_epoch_2)
    assert str(stopped.value) == (
        f"training interrupted during epoch 3 of 5; the checkpoint after epoch 2 ({params.out / CHECKPOINT}) is kept: "
        "`msa train` with the same inputs continues from epoch 3, `msa train --restart` starts over"
    )
    assert stopped.value.exit_code == 130
    assert train(features, QUIET, params, progress=False).resumed_from == 2
