"""The model store: its layout round-trips, its digest sees every byte, and a model moved through a tracking store
(a real MLflow store on SQLite, as a tracking server's proxied artifacts would be) arrives checked or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from components.core.errors import TrainingError
from components.models import store as model_store
from components.models import transfer


@pytest.fixture
def client(client: MlflowClient, tmp_path: Path) -> MlflowClient:
    """The shared store (tests/conftest.py), with an experiment whose artifacts go to tmp_path/artifacts."""
    client.create_experiment("store", artifact_location=(tmp_path / "artifacts").as_uri())
    return client


def run_id(client: MlflowClient) -> str:
    return client.create_run(client.get_experiment_by_name("store").experiment_id).info.run_id


def test_layout_round_trips_through_load_trained(trained):
    card = model_store.read_card(trained.model)
    model = model_store.load_trained(trained.model)
    assert model.spec == card.spec and card.monitor.head == model_store.monitored_head(card.spec) == "fusion"
    history = model_store.read_history(trained.model)
    assert [e["epoch"] for e in history] and card.monitor.epoch in [e["epoch"] for e in history]

    copy = Path(shutil.copytree(trained.model, trained.model.parent / "copy"))
    model_store.write_model(copy, model.state_dict(), card)
    model_store.write_history(copy, history)
    assert model_store.read_card(copy) == card
    reloaded = model_store.load_trained(copy)
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_weights_that_differ_from_their_card_are_refused(trained, tmp_path):
    card = model_store.read_card(trained.model)
    assert len(card.weights_sha256) == 64 and card.trained_with is not None
    copy = Path(shutil.copytree(trained.model, tmp_path / "copy"))
    weights = bytearray((copy / model_store.WEIGHTS).read_bytes())
    weights[-1] ^= 0x01  # one bit of one weight: a file safetensors still reads
    (copy / model_store.WEIGHTS).write_bytes(bytes(weights))
    with pytest.raises(TrainingError, match=r"model.safetensors: its bytes differ from what training recorded"):
        model_store.load_trained(copy)


def test_the_text_model_is_recorded_by_name_not_by_where_it_lies(trained):
    card = (trained.model / model_store.CARD).read_text()
    encoder = model_store.read_card(trained.model).spec.text.encoder
    assert "site-packages" not in card and ".venv" not in card
    assert Path(encoder).name.startswith("tiny-bert"), "the name as configured (here a path the test chose)"


def test_digest_is_independent_of_location_and_sees_every_file(trained, tmp_path):
    copy = shutil.copytree(trained.model, tmp_path / "elsewhere")
    assert model_store.digest(copy) == model_store.digest(trained.model)
    history = copy / model_store.HISTORY
    history.write_text(history.read_text() + " ")
    assert model_store.digest(copy) != model_store.digest(trained.model)
    (copy / model_store.WEIGHTS).unlink()
    with pytest.raises(TrainingError, match=r"model\.safetensors: missing"):
        model_store.digest(copy)


def test_a_model_published_to_a_run_is_fetched_and_checked(trained, client, tmp_path):
    run = run_id(client)
    recorded = transfer.publish(trained.model, client, run)
    assert recorded == model_store.digest(trained.model)
    fetched = transfer.fetch(client, run, tmp_path / "worker" / "models", recorded)
    assert model_store.digest(fetched) == recorded
    assert sorted(p.name for p in fetched.iterdir()) == sorted(model_store.MODEL_FILES), "no staging left behind"


def test_each_upload_has_its_own_path_and_an_older_one_goes_once_a_newer_is_recorded(trained, client, tmp_path):
    """A worker killed while uploading a better model leaves the upload its recorded digest names whole."""
    run = run_id(client)
    first = transfer.publish(trained.model, client, run)
    better = Path(shutil.copytree(trained.model, tmp_path / "better"))
    (better / model_store.HISTORY).write_text((better / model_store.HISTORY).read_text() + " ")
    second = transfer.publish(better, client, run)  # as if the worker died before recording it
    assert model_store.digest(transfer.fetch(client, run, tmp_path / "a", first)) == first
    transfer.discard(client, run, first)  # the newer one recorded: the older goes
    assert [a.path for a in client.list_artifacts(run, "model")] == [f"model/{second[:16]}"]
    assert model_store.digest(transfer.fetch(client, run, tmp_path / "b", second)) == second


def test_a_corrupted_download_is_refused_and_nothing_is_replaced(trained, client, tmp_path):
    run = run_id(client)
    recorded = transfer.publish(trained.model, client, run)
    artifacts = Path(client.get_run(run).info.artifact_uri.removeprefix("file://"))
    stored = artifacts / "model" / recorded[:16] / model_store.WEIGHTS
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")  # the artifact store holds other bytes now

    out = shutil.copytree(trained.model, tmp_path / "pipeline-models")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(TrainingError, match=r"digest .* was recorded when it was uploaded.*Nothing was evaluated"):
        transfer.fetch(client, run, out, recorded)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".msa-fetch")]


def test_a_checkpoint_is_stored_and_restored_on_an_empty_disk(trained, client, tmp_path):
    run = run_id(client)
    assert not transfer.fetch_checkpoint(client, run, tmp_path / "empty", 3), "none stored yet"
    transfer.publish_checkpoint(trained.model, client, run, 3)
    empty = tmp_path / "replacement" / "models"
    assert not transfer.fetch_checkpoint(client, run, empty, 2), "each epoch's checkpoint has a path of its own"
    assert transfer.fetch_checkpoint(client, run, empty, 3)
    assert (empty / model_store.CHECKPOINT).read_bytes() == (trained.model / model_store.CHECKPOINT).read_bytes()
    transfer.discard_checkpoint(client, run, 3)
    assert not transfer.fetch_checkpoint(client, run, tmp_path / "later", 3), "a newer one recorded, it goes"
