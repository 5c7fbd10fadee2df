"""Registration registers only what the stages' outputs show: features of this data and these featurize settings,
a model trained on them with these settings and this code, reports that score that model. Each broken link is one
line naming the stage to run again, before anything is logged or registered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from components.core.config import load_params
from components.core.errors import TrackingError
from components.evaluation.evaluate import evaluate
from components.features.featurize import featurize
from components.registry.register import verified_outputs
from components.training.lineage import lineage
from components.training.train import train
from tests.conftest import tiny_dataset
from tests.hardening import fingerprint, msa


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Path:
    """A project whose featurize, train and evaluate have run on its data/raw."""
    root = tmp_path_factory.mktemp("chain")
    tiny_dataset(root / "data", name="raw")
    params = {
        "featurize": {"text_model": str(tiny_text_model), "image_size": 8},
        "model": {"hidden": 8, "dropout": 0.0, "textcnn": {"feature_maps": 4, "dropout": 0.0}},
        "train": {"epochs": 1, "batch_size": 4},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as m:
        m.chdir(root)
        p = load_params()
        featurize(p.data.raw, p.featurize, progress=False)
        train(p.featurize.out, p.model, p.train, progress=False)
        evaluate(p.featurize.out, p.train.out, p.evaluate, progress=False)
    return root


@pytest.fixture
def project(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = Path(shutil.copytree(built, tmp_path / "project"))
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy / 'mlflow.db'}")
    return copy


def refusal(project: Path) -> str:
    params = load_params()
    with pytest.raises(TrackingError) as refused:
        verified_outputs(params, lineage(params))
    return str(refused.value)


def test_outputs_of_this_data_settings_and_code_are_verified(project):
    params = load_params()
    verified = verified_outputs(params, lineage(params))
    assert verified.lineage == lineage(params) and set(verified.evaluation) == {"valid", "test"}


def test_data_replaced_after_the_stages_ran_is_refused_naming_featurize(project):
    shutil.rmtree(project / "data" / "raw")
    tiny_dataset(project / "data", name="raw", edit=lambda samples, *_: samples.assign(label=-samples["label"]))
    assert "data/features was not made from data/raw as it is now" in refusal(project)
    assert "run `msa featurize`" in refusal(project)


def test_train_settings_changed_since_training_are_refused_naming_train(project):
    text = yaml.safe_load((project / "params.yaml").read_text())
    text["train"]["epochs"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(text))
    assert "models/trained was trained with other model or train settings" in refusal(project)


def test_a_report_of_another_model_is_refused_naming_its_stage(project):
    report = project / "reports" / "evaluation.json"
    report.write_text(json.dumps({**json.loads(report.read_text()), "model_digest": "0" * 64}))
    assert "reports/evaluation.json scores another model than models/trained: run `msa evaluate`" in refusal(project)


def test_msa_register_on_stale_outputs_registers_nothing(project):
    shutil.rmtree(project / "data" / "raw")
    tiny_dataset(project / "data", name="raw", edit=lambda samples, *_: samples.assign(label=-samples["label"]))
    before = fingerprint(project / "models", project / "data" / "features", project / "reports")
    outcome = msa("register")
    assert outcome.code == 1 and len(outcome.error.splitlines()) == 1, outcome
    assert "was not made from data/raw as it is now" in outcome.error and "Nothing was registered" in outcome.error
    assert fingerprint(project / "models", project / "data" / "features", project / "reports") == before
    assert not (project / "mlflow.db").exists(), "refused before the tracking store was opened"
