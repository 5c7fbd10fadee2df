"""The live pipeline run on a real MLflow store (SQLite): how it ends, how a run whose process died is closed, and
what training's epoch callback shows while training goes on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components import tracking
from components.core.config import Params
from components.evaluation.logged import HEAD
from components.models import store as model_store
from components.models import transfer
from components.training.run_log import (
    CHECKPOINT_EPOCH,
    MODEL_DIGEST,
    TrainingLog,
    end_train_attempt,
    trained_model_digest,
    training_silence,
)


def open_run(client: MlflowClient, tags: dict | None = None):
    return tracking.pipeline_run(client, "live", "pipeline test", tags or {"dataset": "tiny"}, Params())


def status(client: MlflowClient, run_id: str) -> str:
    return client.get_run(run_id).info.status


def test_a_run_that_ends_is_finished_with_its_params_and_the_model_training_view(client):
    with open_run(client) as run_id:
        assert status(client, run_id) == "RUNNING"
        child = tracking.child_run(client, run_id, "head", "fusion", {HEAD: "fusion"})
    assert status(client, run_id) == "FINISHED" and status(client, child) == "FINISHED"
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "30" and run.data.tags[tracking.KIND] == "pipeline"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_run(child).data.tags["dataset"] == "tiny", "children inherit the lineage tags"


def test_a_failing_stage_fails_the_run_and_its_open_children(client):
    with pytest.raises(ValueError, match="stage broke"), open_run(client) as run_id:
        child = tracking.child_run(client, run_id, "train", "train")
        raise ValueError("stage broke")
    assert status(client, run_id) == "FAILED" and status(client, child) == "FAILED"


def test_an_interrupted_run_is_killed(client):
    with pytest.raises(KeyboardInterrupt), open_run(client) as run_id:
        raise KeyboardInterrupt
    assert status(client, run_id) == "KILLED"


def test_the_next_run_closes_a_run_whose_process_died(client):
    experiment = tracking.experiment_id(client, "live")
    stale_beat = str(int(time.time()) - tracking.STALE_AFTER_S - 1)
    dead = client.create_run(experiment, tags={tracking.KIND: "pipeline", tracking.HEARTBEAT: stale_beat})
    dead_child = tracking.child_run(client, dead.info.run_id, "train", "train")
    alive = client.create_run(experiment, tags={tracking.KIND: "pipeline", tracking.HEARTBEAT: str(int(time.time()))})
    with open_run(client) as run_id:
        assert status(client, dead.info.run_id) == "KILLED" and status(client, dead_child) == "KILLED"
        assert status(client, alive.info.run_id) == "RUNNING", "a live run elsewhere is left alone"
        assert "stopped answering" in client.get_run(dead.info.run_id).data.tags["msa.closed_by"]
    assert status(client, run_id) == "FINISHED"


def test_training_shows_every_head_s_curve_while_it_runs_and_stores_what_resumes_it(client, trained):
    spec = model_store.read_card(trained.model).spec
    history = model_store.read_history(trained.model)
    with open_run(client) as parent:
        log = TrainingLog(client, parent, spec, trained.model)
        log.on_epoch(history[0], improved=True)
        # Mid-training: the parent is RUNNING and already has the monitored head's curve, each head its own.
        assert status(client, parent) == "RUNNING"
        assert [m.step for m in client.get_metric_history(parent, "epoch_valid_mae")] == [1]
        for head, run in log.heads.items():
            assert client.get_run(run).data.params["head"] == head
            assert client.get_metric_history(run, "epoch_train_loss")[0].value == history[0]["train_loss"][head]
        digest = log.finish()
        log.close("FINISHED")
        assert trained_model_digest(client, parent) == (log.run_id, digest)

        # A replacement worker: the same runs, found again, restore the checkpoint onto an empty disk.
        again = TrainingLog(client, parent, spec, trained.model.parent / "empty")
        assert (again.run_id, again.heads) == (log.run_id, log.heads)
        assert again.restore() and model_store.digest(again.out) == digest


def test_a_worker_killed_between_uploads_leaves_the_recorded_checkpoint_and_model_a_pair(client, trained, monkeypatch):
    spec = model_store.read_card(trained.model).spec
    first, second = model_store.read_history(trained.model)[:2]
    with open_run(client) as parent:
        log = TrainingLog(client, parent, spec, trained.model)
        log.on_epoch(first, improved=True)
        recorded = client.get_run(log.run_id).data.tags
        assert recorded[CHECKPOINT_EPOCH] == str(first["epoch"])

        # Epoch 2 improved: its model is uploaded, then the worker dies before its checkpoint is.
        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed")

        monkeypatch.setattr(transfer, "publish_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            log.on_epoch(second, improved=True)
        tags = client.get_run(log.run_id).data.tags
        assert (tags[MODEL_DIGEST], tags[CHECKPOINT_EPOCH]) == (recorded[MODEL_DIGEST], str(first["epoch"]))
        monkeypatch.undo()

        again = TrainingLog(client, parent, spec, trained.model.parent / "replacement", attempt=2)
        assert again.restore() == log.run_id, "the recorded pair is whole: the replacement resumes from it"
        assert model_store.digest(again.out) == recorded[MODEL_DIGEST]


def test_a_damaged_upload_is_not_resumed_and_a_lost_attempt_writes_only_into_its_own_run(client, trained):
    spec = model_store.read_card(trained.model).spec
    with open_run(client) as parent:
        first = TrainingLog(client, parent, spec, trained.model)
        first.on_epoch(model_store.read_history(trained.model)[0], improved=True)
        stored = Path(client.get_run(first.run_id).info.artifact_uri.removeprefix("file://")) / "model"
        (stored / first.published[:16] / model_store.WEIGHTS).write_bytes(b"damaged in the store")

        second = TrainingLog(client, parent, spec, trained.model.parent / "empty", attempt=2)
        assert second.run_id != first.run_id
        assert client.get_run(second.run_id).info.run_name == "train (attempt 2)"
        assert second.restore() is None, "a model that does not match its digest is not resumed: start over"
        assert not (second.out / model_store.CHECKPOINT).exists()
        end_train_attempt(client, parent, 1, "KILLED")
        assert status(client, first.run_id) == "KILLED" and status(client, second.run_id) == "RUNNING"
        assert training_silence(client, parent, 2, since=time.time() - 5) >= 5
