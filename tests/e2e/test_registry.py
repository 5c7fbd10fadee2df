"""`msa register` and `msa predict` against a real MLflow server on loopback: runs, registry, aliases, faults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from components.compression.compress import served_variant
from components.core.config import CompressParams, load_params
from components.core.errors import TrackingError, UntrustedModelError
from components.data.dataset import read_dataset
from components.serving.values import raw_frame
from tests.e2e.conftest import working_directory
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.e2e


def params_for(project: Path, name: str, **register: object) -> Path:
    """A params file in `project` that registers under its own model name (tests share one server)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["register"] |= {"model_name": name, "experiment": name, **register}
    path = project / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def msa(project: Path, server: str, *args: str, check: bool = True):
    return run([str(BIN / "msa"), *args], cwd=project, check=check, env={"MLFLOW_TRACKING_URI": server})


@pytest.fixture
def client(mlflow_server: str) -> MlflowClient:
    mlflow.set_tracking_uri(mlflow_server)
    return MlflowClient(mlflow_server)


def test_first_model_is_champion_runs_line_up_and_a_weaker_one_stays_challenger(tiny_project, mlflow_server, client):
    params = params_for(tiny_project, "gate")
    first = msa(tiny_project, mlflow_server, "register", "--params", str(params))
    assert "version 1 is challenger and champion (first model" in first.stdout
    report = json.loads((tiny_project / "reports" / "compression.json").read_text())
    again = msa(tiny_project, mlflow_server, "register", "--params", str(params))
    assert "nothing registered: gate version 1 (champion) was trained from the same data" in again.stdout
    assert "(--force registers anyway)" in again.stdout and len(client.search_model_versions("name = 'gate'")) == 1

    champion = client.get_model_version_by_alias("gate", "champion")
    assert champion.version == "1" and client.get_model_version_by_alias("gate", "challenger").version == "1"
    assert champion.tags["msa.decision"].startswith("first model") and champion.tags["msa.status"] == "registered"
    assert float(champion.tags["msa.score"]) > 0 and champion.tags["msa.champion_score"] == "none"

    # The parent run carries the provenance tags and the artifacts; each head and variant has a child run, with
    # the same metric keys so that the compare view lines them up.
    parent = client.get_run(champion.run_id)
    assert {
        "git_commit",
        "data_hash",
        "data_dvc_md5",
        "params_hash",
        "code_hash",
        "dataset",
        "dataset_version",
    } <= parent.data.tags.keys()
    assert parent.data.params["train.epochs"] == "3" and "lstm" in parent.data.params["model.text_models"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model_card.md", "reports", "plots"} <= artifacts
    card = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/model_card.md")
    assert "## Intended use" in card and "## Limits" in card and "## Compression" in card
    assert "## Robustness (test split, acc2 of `fusion` in points" in card and "| missing_audio | 0.25: " in card
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=50
    )
    names = {r.info.run_name for r in children}
    assert {"lstm", "textcnn", "han", "image", "audio", "vision", "fusion"} <= names
    assert {"int8", "unstructured prune", "structured prune", "train"} <= names
    heads = [r for r in children if r.data.tags.get("msa.kind") == "head"]
    assert all({"test_mae", "test_acc2", "valid_mae", "test_corr"} <= r.data.metrics.keys() for r in heads)
    robust = json.loads((tiny_project / "reports" / "robustness.json").read_text())
    fusion_under = robust["perturbations"]["missing_text"]["severities"]["1"]["fusion"]
    by_name = {r.info.run_name: r.data.metrics for r in heads}
    assert by_name["fusion"]["robust_missing_text_1_acc2"] == pytest.approx(fusion_under["acc2"])
    assert by_name["fusion"]["robust_text_typos_0.3_mae"] > 0 and "robust_missing_text_1_mae" not in by_name["lstm"]
    assert parent.data.metrics["robust_image_blur_0.1_acc2"] == by_name["fusion"]["robust_image_blur_0.1_acc2"]
    images = {a.path for a in client.list_artifacts(parent.info.run_id, "plots/images")}
    assert "plots/images/robustness.png" in images
    variants = [r for r in children if r.data.tags.get("msa.kind") == "variant"]
    assert len(variants) == 5 and all("test_mae" in r.data.metrics for r in variants)
    # The params that tell them apart, for the compare view.
    assert all(r.data.params["head"] == r.info.run_name for r in heads)
    textcnn = next(r for r in heads if r.info.run_name == "textcnn")
    assert textcnn.data.params["filter_sizes"] and "tiny-bert" in textcnn.data.params["text_encoder"]
    assert {r.data.params["variant"] for r in variants} == set(CompressParams().variants)
    # The version serves the fastest kept variant, and the gate scored that variant's own test score.
    served = champion.tags["msa.variant"]
    assert served == served_variant(report, "auto", Path("compression.json"))
    assert float(champion.tags["msa.score"]) == pytest.approx(report["variants"][served]["metrics"]["mae"], rel=1e-5)
    fusion = next(r for r in heads if r.info.run_name == "fusion")
    curve = client.get_metric_history(fusion.info.run_id, "epoch_valid_mae")
    assert [m.step for m in curve] == [1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])

    # The dataset is the run's input; the experiment opens in the model-training view; the logged model carries
    # the registered name and the link to its version.
    (dataset,) = parent.inputs.dataset_inputs
    assert dataset.dataset.name == parent.data.tags["dataset"] and dataset.dataset.source_type == "dvc"
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (logged,) = client.search_logged_models([parent.info.experiment_id])
    links = [(link["name"], str(link["version"])) for link in json.loads(logged.tags["mlflow.modelVersions"])]
    assert logged.name == "gate" and links == [("gate", "1")]

    # The same model again cannot beat the champion by a margin: it becomes challenger, the champion stays.
    stricter = params_for(tiny_project, "gate", margin=0.5)
    second = msa(tiny_project, mlflow_server, "register", "--params", str(stricter))
    assert "version 2 is challenger (" in second.stdout and "does not beat champion v1" in second.stdout
    assert client.get_model_version_by_alias("gate", "champion").version == "1"
    assert client.get_model_version_by_alias("gate", "challenger").version == "2"
    tags = client.get_model_version("gate", "2").tags
    assert tags["msa.champion_before"] == "1" and tags["msa.champion_score"] == champion.tags["msa.score"]

    # With a robustness condition the gate also compares the champion's score under the named perturbation (the
    # same model: 0 points lost), recorded on its run, measured on the same split and seed.
    condition = {"perturbation": "missing_text", "severity": 1.0, "max_drop": 0.0}
    robust_gate = params_for(tiny_project, "gate", robustness=condition)
    third = msa(tiny_project, mlflow_server, "register", "--force", "--params", str(robust_gate))
    assert "version 3 is challenger" in third.stdout
    assert (
        "change +0.0 points against champion v1's" in third.stdout
        and "(register.robustness allows down to -0.0)" in third.stdout
    ), third.stdout
    assert client.get_model_version("gate", "3").tags["msa.robustness"] == champion.tags["msa.robustness"]


def test_champion_loads_as_pyfunc_and_predicts_raw_rows(tiny_project, mlflow_server, client):
    params = params_for(tiny_project, "pyfunc")
    msa(tiny_project, mlflow_server, "register", "--params", str(params))
    model = mlflow.pyfunc.load_model("models:/pyfunc@champion")
    frame = raw_frame(read_dataset(tiny_project / "data" / "raw"), "test")
    inline = raw_frame(read_dataset(tiny_project / "data" / "raw"), "test", inline_images=True)
    predictions = model.predict(inline.drop(columns=["id", "label"]))  # images inline: the pyfunc opens no paths
    assert list(predictions.columns) == ["score", "class"] and len(predictions) == len(frame)
    assert set(predictions["class"]) <= {"positive", "negative"}

    # The same through `msa predict` from a JSONL file with image paths relative to it; ids come through.
    rows = frame.drop(columns=["label"])
    images = tiny_project / "inputs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for path in rows["image"]:
        shutil.copy(path, images / Path(path).name)
    rows["image"] = [f"images/{Path(p).name}" for p in rows["image"]]
    source = tiny_project / "inputs" / "rows.jsonl"
    rows.to_json(source, orient="records", lines=True)
    out = tiny_project / "inputs" / "predictions.csv"
    predicting = ["predict", "--model", "models:/pyfunc@champion", "--input", str(source), "--output", str(out)]
    result = msa(tiny_project, mlflow_server, *predicting)
    assert f"{len(rows)} rows" in result.stdout
    written = pd.read_csv(out)
    assert list(written["id"]) == list(frame["id"])
    assert written["score"].to_numpy() == pytest.approx(predictions["score"].to_numpy(), abs=1e-5)


def test_corrupt_model_artifact_is_a_clear_error(tiny_project, mlflow_server, client, tmp_path):
    params = params_for(tiny_project, "corrupt")
    msa(tiny_project, mlflow_server, "register", "--params", str(params))
    local = Path(mlflow.artifacts.download_artifacts("models:/corrupt@champion", dst_path=str(tmp_path)))
    weights = next(p for p in local.rglob("*") if p.name in ("model.safetensors", "model.onnx", "model.pt"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"text": "it was good"}) + "\n")
    assert not list(local.rglob("*.py")), "no code travels with the model: the installed package loads it"
    result = msa(tiny_project, mlflow_server, "predict", "--model", str(local), "--input", str(source), check=False)
    changed = f"package/{weights.relative_to(local / 'data' / 'package')} was changed after signing"
    assert result.returncode == 1 and changed in result.stderr and len(result.stderr.splitlines()) == 1
    with pytest.raises(UntrustedModelError, match=changed):  # MLflow's own loader (`mlflow models serve`) too
        mlflow.pyfunc.load_model(str(local))
    predicting = ["predict", "--model", str(local), "--input", str(source), "--trust-model"]
    trusted = msa(tiny_project, mlflow_server, *predicting, check=False)
    assert trusted.returncode == 1 and "not a readable model package" in trusted.stderr


def test_unreachable_server_fails_fast_and_registers_nothing(tiny_project, client):
    params = params_for(tiny_project, "unreachable")
    from tests.e2e.servers import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    result = msa(tiny_project, closed, "register", "--params", str(params), check=False)
    assert result.returncode == 1
    assert f"tracking server {closed} does not answer (gave up after 0 retries)" in result.stderr
    assert "Nothing was logged or registered" in result.stderr


def test_failure_after_creating_the_version_removes_it_and_keeps_the_champion(
    tiny_project, mlflow_server, client, monkeypatch
):
    from components.registry.register import record_and_register as register

    params = params_for(tiny_project, "halfway")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with working_directory(tiny_project):
        register(load_params(params))  # version 1: champion

        def broken(self, name, alias, version):
            raise ConnectionError("registry went away")

        # The aliases are the last step: failing there exercises the clean-up of a version that already exists.
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
        with pytest.raises(TrackingError, match=r"version 2 failed .*version 2 was deleted; the champion is unchanged"):
            register(load_params(params), force=True)  # the same lineage: only a forced registration tries
    assert [v.version for v in client.search_model_versions("name = 'halfway'")] == ["1"]
    assert client.get_model_version_by_alias("halfway", "champion").version == "1"


def test_a_name_taken_by_a_model_with_other_inputs_is_refused(
    tiny_project, mlflow_server, client, tmp_path, monkeypatch
):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    # set_experiment makes the experiment this process's active one (a global and MLFLOW_EXPERIMENT_ID): undone
    # after the test, so that a later in-process pipeline run starts its own run in its own experiment.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    mlflow.set_experiment("other-contract")
    package = tmp_path / "package"
    package.mkdir()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            loader_module="components.serving",
            data_path=str(package),
            signature=ModelSignature(inputs=Schema([ColSpec("string", "sentence")])),
            pip_requirements=["numpy"],
        )
    mlflow.register_model(info.model_uri, "taken")
    params = params_for(tiny_project, "taken")
    result = msa(tiny_project, mlflow_server, "register", "--params", str(params), check=False)
    assert result.returncode == 1
    assert "registered model 'taken' takes [sentence] (version 1), but this model takes [text, image?" in result.stderr
    assert len(client.search_model_versions("name = 'taken'")) == 1
