"""Monitoring as a team runs it, on real servers on loopback: a Prefect server with the repository's `retrain`
deployment and the automations its triggers create, an MLflow tracking server, a DVC remote.

A model trained on the demo data, packaged with its drift reference and signed, scores two batches through the
`score` flow: new demo data drawn like its training data (no drift, no retrain), then rows of another domain's
texts without images or sequences (drift: the event starts one retrain flow run). Then `msa data push` uploads a new
dataset version and its event starts another.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import save_signed
from tests.e2e.conftest import working_directory
from tests.e2e.pools import CLONE_FILES
from tests.e2e.servers import free_port, serving, stop_ephemeral_prefect_server  # noqa: F401 (autouse fixture)
from tests.integration.conftest import copy_project
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.e2e

OTHER_DOMAIN = [
    "Quarterly invoice totals were reconciled against the ledger before the audit deadline.",
    "Replace the hydraulic filter every two thousand operating hours or sooner in dusty sites.",
    "The committee adjourned until Thursday pending review of the zoning variance request.",
    "Set the thermostat schedule, then pair the sensor with the hub using the eight digit code.",
    "Shipment 4471 cleared customs in Rotterdam and awaits rail transfer to the depot.",
]


def trained_model(root: Path, text_model: Path) -> Path:
    """The demo data's model, packaged with its drift reference and signed, as an MLflow pyfunc directory."""
    from components.core.config import DriftParams, FeaturizeParams, ModelParams, TrainParams
    from components.data.dataset import read_dataset
    from components.data.demo import generate_demo
    from components.features.featurize import featurize
    from components.models.store import read_card
    from components.monitoring.reference import write_reference
    from components.serving.monitored import drift_reference
    from components.serving.package import package_model
    from components.serving.predictor import Predictor
    from components.serving.publish import model_signature
    from components.training.train import train

    raw = generate_demo(root / "raw", size=300, seed=0)
    features = featurize(
        raw, FeaturizeParams(out=root / "features", text_model=str(text_model), image_size=8), progress=False
    ).out
    model = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})
    out = train(features, model, TrainParams(out=root / "models", epochs=2, batch_size=16), progress=False).out
    package = package_model(out, features, root / "package", None)
    write_reference(package, drift_reference(Predictor(package), read_dataset(raw), DriftParams()))
    return save_signed(package, root / "demo-model", model_signature(read_card(out).spec))


def retrain_runs(api: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["retrain"])))


def wait_for_retrain_runs(api: str, count: int, timeout: float = 90) -> list:
    deadline = time.monotonic() + timeout
    while len(runs := retrain_runs(api)) < count and time.monotonic() < deadline:
        time.sleep(1)
    return runs


def test_a_drifted_batch_or_a_pushed_dataset_starts_a_retrain_and_a_batch_like_the_training_data_none(
    tmp_path: Path, tiny_text_model: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.data.demo import generate_demo
    from flows.scoring import score

    model = trained_model(tmp_path / "model", tiny_text_model)
    clean = generate_demo(tmp_path / "clean", size=200, seed=1)
    drifted = tmp_path / "drifted.jsonl"
    drifted.write_text("".join(json.dumps({"id": f"d{i}", "text": OTHER_DOMAIN[i % 5]}) + "\n" for i in range(120)))
    repository, logs = tmp_path / "msa", tmp_path / "logs"
    logs.mkdir()
    copy_project(repository, CLONE_FILES)
    params = yaml.safe_load((repository / "params.yaml").read_text())
    params["register"] |= {"retries": 0, "timeout": 20}
    (repository / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api, "PREFECT_CLI_PROMPT": "false"}
    cli = str(BIN / "prefect")
    with ExitStack() as stack:
        server = [cli, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler"]
        stack.enter_context(
            serving([*server, "--analytics-off"], f"{api}/health", logs / "server.log", cwd=tmp_path, env=prefect)
        )
        run([cli, "work-pool", "create", "cpu", "--type", "process"], cwd=repository, env=prefect)
        run([cli, "deploy", "--name", "retrain", "--no-prompt"], cwd=repository, env=prefect)
        automations = run([cli, "automation", "ls"], cwd=repository, env=prefect).stdout
        assert "retrain-on-drift" in automations and "retrain-on-new-data" in automations, automations

        with temporary_settings({PREFECT_API_URL: api}), working_directory(repository):
            like_training = score(str(model), str(clean), str(tmp_path / "clean.parquet"), "params.yaml")
            EventsWorker.drain_all()
            assert like_training.drift is not None and not like_training.drift.drifted, like_training.drift
            time.sleep(10)  # the automation has seen msa.batch.scored by now; it must not have started anything
            assert retrain_runs(api) == []

            moved = score(str(model), str(drifted), str(tmp_path / "drifted.parquet"), "params.yaml")
            EventsWorker.drain_all()
        report = moved.drift
        assert report is not None and report.drifted, report
        assert {"text", "image", "prediction"} <= {m for m, d in report.modalities.items() if d.drifted}, report
        runs = wait_for_retrain_runs(api, 1)
        assert len(runs) == 1, (
            f"the drifted batch started {len(runs)} retrain runs\n{(logs / 'server.log').read_text()[-3000:]}"
        )
        assert runs[0].parameters == {"params": "params.yaml", "force": False}

        written = json.loads((tmp_path / "drifted.parquet.drift.json").read_text())
        assert written["drifted"] is True and written["modalities"]["text"]["drifted"] is True
        assert (tmp_path / "drifted.parquet.drift.png").read_bytes()[:4] == b"\x89PNG"
        scorings = MlflowClient(mlflow_server).search_runs(
            [MlflowClient(mlflow_server).get_experiment_by_name("scoring").experiment_id]
        )
        assert sorted(r.data.tags["msa.drifted"] for r in scorings) == ["false", "true"]
        assert all("drift_text_p_value" in r.data.metrics for r in scorings)

        # A new dataset version pushed to the DVC remote: its event starts the next retrain.
        run(["git", "init", "-q", "-b", "main"], cwd=repository)
        run([str(BIN / "dvc"), "remote", "add", "--default", "storage", str(tmp_path / "remote")], cwd=repository)
        generate_demo(repository / "data" / "raw", size=40, seed=2)
        run([str(BIN / "dvc"), "add", "-q", "data/raw"], cwd=repository)
        pushed = run([str(BIN / "msa"), "data", "push"], cwd=repository, env=prefect).stdout
        assert "files uploaded to the DVC remote" in pushed and "event msa.dataset.pushed sent" in pushed, pushed
        assert len(wait_for_retrain_runs(api, 2)) == 2
