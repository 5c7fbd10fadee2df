"""The gate's view of a champion: the score signed into its package, or a re-score; never an editable tag."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.data.dataset import read_dataset
from components.registry import gate
from components.serving import pyfunc as serving
from components.serving import signing
from components.serving.package import Evidence, read_evidence, write_evidence

SPLIT = "fingerprint-of-this-test-split"


@pytest.fixture
def champion(served_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the served model whose package carries signed evidence (a score of 0.5 on SPLIT), standing in for
    `models:/gate/1` in the registry."""
    copy = Path(shutil.copytree(served_model, tmp_path / "champion"))
    package = copy / "data" / "package"
    evidence = Evidence(
        run_id="r1",
        metric="test fusion mae",
        score=0.5,
        test_split=SPLIT,
        variant="baseline",
        dataset="raw",
        dataset_version="1",
        data_hash="d",
        params_hash="p",
        code_hash="c",
    )
    write_evidence(package, evidence)
    signing.sign(package)
    load = serving.load_model
    monkeypatch.setattr(serving, "load_model", lambda uri, scratch, **kw: load(str(copy), scratch, **kw))
    return copy


def score(served_model: Path, split: str, *, tags: dict[str, str] | None = None, rescore: bool = False):
    version = SimpleNamespace(version="1", run_id="r1", tags=tags or {})
    dataset = read_dataset(served_model.parent / "raw")
    return gate.champion_score(version, "gate", dataset, split, "mae", rescore)


def test_the_signed_score_is_used_on_its_own_split_and_tags_are_never_read(champion, served_model):
    value, evidence = score(served_model, SPLIT, tags={"msa.score": "0.0", "msa.test_split": SPLIT})
    assert value == 0.5 and evidence is not None and evidence.run_id == "r1"


def test_another_split_or_rescore_measures_the_champion_again(champion, served_model):
    measured, evidence = score(served_model, "fingerprint-of-a-new-version")
    assert measured != 0.5 and 0 < measured < 6 and evidence is not None
    assert score(served_model, SPLIT, rescore=True)[0] == pytest.approx(measured)


def test_evidence_of_another_run_is_not_this_champion_s(champion, served_model):
    version = SimpleNamespace(version="1", run_id="r2", tags={})  # r1's package, registered again as r2's
    value, evidence = gate.champion_score(
        version, "gate", read_dataset(served_model.parent / "raw"), SPLIT, "mae", False
    )
    assert evidence is None and value != 0.5


def test_evidence_edited_in_the_store_fails_verification_and_the_champion_is_re_scored(champion, served_model, caplog):
    package = champion / "data" / "package"
    edited = read_evidence(package).model_copy(update={"score": 0.0})
    write_evidence(package, edited)  # what someone with write access to the artifact store could do
    value, evidence = score(served_model, SPLIT)
    assert evidence is None and value != 0.0 and 0 < value < 6
    assert "fails verification, re-scored" in caplog.text and "evidence.json was changed after signing" in caplog.text
