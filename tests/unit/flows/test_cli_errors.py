"""What `msa` says when a command cannot finish for a reason outside the input files: Ctrl-C (one line, exit 130,
nothing half-written kept) and a tracking URI MLflow cannot use (one line, exit 1, no database or folder created)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.core.atomic import replace_directory
from components.core.config import RegisterParams
from components.core.errors import TrackingError
from components.tracking.connection import connected
from tests.hardening import fingerprint, msa

WHOLE = "; each file it writes is replaced whole or not at all, so nothing half-written was kept"


def interrupted_writing(out: str, marker: str):
    """A stage that Ctrl-C stops halfway through writing `out`, through the project's atomic directory writer."""

    def stage(*args, **kwargs):
        with replace_directory(Path(out), marker=marker) as staging:
            (staging / "half.bin").write_bytes(b"half")
            raise KeyboardInterrupt  # what Ctrl-C raises

    return stage


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("args", "target", "stage", "line"),
    [
        (
            ("featurize",),
            "flows.cli.featurize_dataset",
            interrupted_writing("data/features", "featurizer.json"),
            f"interrupted: msa featurize stopped{WHOLE}",
        ),
        (
            ("compress",),
            "components.compression.compress.compress",
            interrupted_writing("models/compressed", "*/card.json"),
            f"interrupted: msa compress stopped{WHOLE}",
        ),
        (
            ("data", "import", "tsv", "t.tsv", "--out", "out"),
            "flows.commands.data.import_text_tsv",
            interrupted_writing("out", "manifest.yaml"),
            f"interrupted: msa data import tsv stopped{WHOLE}",
        ),
        (
            ("train",),
            "components.training.train.train",
            interrupted,
            "interrupted: msa train stopped before it finished",
        ),
    ],
    ids=["featurize", "compress", "import-tsv", "train"],
)
def test_ctrl_c_is_one_line_and_exit_130(guarded_project: Path, monkeypatch, args, target, stage, line) -> None:
    project = guarded_project
    monkeypatch.setattr(target, stage)
    (project / "t.tsv").write_text("text\tlabel\nhi\t1\n")
    before = fingerprint(project)
    outcome = msa(*args)
    assert outcome.code == 130, outcome
    assert outcome.error == line, outcome.stderr
    assert fingerprint(project) == before  # no staging directory left, nothing replaced


@pytest.fixture
def bad_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Set MLFLOW_TRACKING_URI in an empty working directory; `connected`'s HTTP settings are restored after."""
    for name in ("MAX_RETRIES", "TIMEOUT", "BACKOFF_FACTOR"):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", "1")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return lambda uri: monkeypatch.setenv("MLFLOW_TRACKING_URI", uri) or cwd


def connect() -> None:
    with connected(RegisterParams()):
        pytest.fail("connected to a URI that should have been refused")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:///somewhere/wrong.db", "directory 'somewhere' does not exist (MLflow would create it)"),
        ("sqlite:////nonexistent-msa-dir/wrong.db", "directory '/nonexistent-msa-dir' does not exist"),
        ("sqllite:///mlflow.db", "unknown scheme 'sqllite'; use http(s)://host:port for a tracking server or sqlite:"),
        ("htp://127.0.0.1:5000", "unknown scheme 'htp'"),
        ("sqlite:/mlflow.db", "a SQLite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db"),
        ("sqlite://", "a SQLite URI is sqlite:///relative/path.db"),
        ("sqlite:///:memory:", "an in-memory SQLite database keeps nothing"),
        ("file:///nonexistent-msa-dir/mlruns", "directory '/nonexistent-msa-dir' does not exist"),
        ("runs/mlruns", "directory 'runs' does not exist"),
    ],
)
def test_a_bad_tracking_uri_is_refused_before_mlflow_creates_anything(bad_uri, uri: str, message: str) -> None:
    cwd = bad_uri(uri)
    with pytest.raises(TrackingError, match=r"Nothing was logged or registered\.$") as refused:
        connect()
    assert str(refused.value).startswith(f"MLFLOW_TRACKING_URI {uri}: ") and message in str(refused.value)
    assert list(cwd.iterdir()) == [] and not Path("/nonexistent-msa-dir").exists()


def test_a_good_sqlite_uri_still_creates_its_database(bad_uri) -> None:
    cwd = bad_uri("sqlite:///sub/track.db")
    (cwd / "sub").mkdir()
    with connected(RegisterParams()) as client:
        assert client.search_experiments(max_results=1) is not None
    assert (cwd / "sub" / "track.db").is_file() and not (cwd / "mlflow.db").exists()


def test_the_cli_says_it_in_one_line(guarded_project: Path, monkeypatch) -> None:
    project = guarded_project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere/wrong.db")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (project / "in.jsonl").write_text('{"text": "hi"}\n')
    before = fingerprint(project)
    outcome = msa("predict", "--model", "models:/msa@champion", "--input", "in.jsonl")
    assert outcome.code == 1, outcome
    assert outcome.error == (
        "error: MLFLOW_TRACKING_URI sqlite:///somewhere/wrong.db: directory 'somewhere' does not exist (MLflow would "
        "create it); create it or correct the URI. Nothing was logged or registered."
    ), outcome.stderr
    assert fingerprint(project) == before and not (project / "somewhere").exists()
