"""`msa predict` bounded before it works: an input that is not a regular file, a row that is not valid Unicode, a
CSV header naming a column twice, an output it cannot or must not write, a local model that is not one. Each is
one line, exit 1, before the model loads or any row is scored, with nothing written and no temporary directory
left. Good input streams: read and scored a chunk at a time into a temporary file renamed into place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from components.core.atomic import FILE_MODE
from components.core.errors import DataError
from components.serving import input_files
from components.serving.input_files import check_inputs, input_chunks
from components.serving.predictor import Predictor
from tests.hardening import Case, fingerprint, guarded, msa

ROWS = "in/rows.jsonl"


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def good(**changes) -> dict:
    return {"id": "r1", "text": "sample number 3 was good"} | changes


def case(id: str, message: str, *extra: str, rows: str | bytes | None = None, name: str = ROWS, **kw) -> Case:
    files = ({name: rows} if rows is not None else {}) | kw.pop("files", {})
    args = ("predict", "--model", kw.pop("model", "MODEL"), "--input", name, *extra)
    return Case(id, args, 1, message, files=files, **kw)


CASES = [
    # inputs that are not files of rows: refused before a byte is read
    case("input-dev-zero", "is a character device, not a regular file", links={ROWS: "/dev/zero"}),
    case("input-directory", "is a directory, not a regular file", files={f"{ROWS}/x": "x"}),
    case("input-missing", "no such file"),
    case("input-empty", "has no rows: nothing to score", rows=""),
    # rows that break a rule of their format
    case("jsonl-lone-surrogate", "row 1: text is not valid Unicode", rows='{"id": "r1", "text": "good \\ud800"}\n'),
    case("jsonl-surrogate-id", "row 2: id is not valid Unicode", rows=jsonl(good()) + '{"id": "\\udfff"}\n'),
    case("jsonl-huge-number", "row 1: not valid JSON: a number with too many", rows='{"n": %s}\n' % ("9" * 5000)),
    case("jsonl-deep", "row 1: not valid JSON: nested too deeply", rows="[" * 100_000 + "\n"),
    case(
        "csv-duplicate-column",
        "the header names column 'text' more than once",
        rows="id,text,text\nr1,a,b\n",
        name="in/rows.csv",
    ),
    # where the predictions go: checked before the model loads
    case(
        "output-under-a-file",
        "cannot be created under",
        "--output",
        "somefile/out.jsonl",
        rows=jsonl(good()),
        files={"somefile": "mine"},
    ),
    case("output-proc", "is under /proc", "--output", "/proc/out.jsonl", rows=jsonl(good())),
    case("output-sys", "is under /sys", "--output", "/sys/out.jsonl", rows=jsonl(good())),
    case("output-dev", "is under /dev", "--output", "/dev/shm/out.jsonl", rows=jsonl(good())),
    case(
        "output-links-to-input",
        "is the input file",
        "--output",
        "out.jsonl",
        rows=jsonl(good()),
        links={"out.jsonl": ROWS},
    ),
    case("output-is-input", "is the input file", "--output", ROWS, rows=jsonl(good())),
    # a local model is read in place, and must be an MLflow model directory
    case("model-file-uri-etc", "no MLmodel file here", rows=jsonl(good()), model="file:///etc"),
    case("model-no-such-dir", "no such model directory", rows=jsonl(good()), model="no-such-model"),
    case("model-file-uri-elsewhere", "names another machine", rows=jsonl(good()), model="file://elsewhere/m"),
]


@pytest.fixture
def project(guarded_project: Path, served_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project as cwd, with a temporary directory of its own (tempfile.gettempdir()) to find leftovers in."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{guarded_project / 'other.db'}")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return guarded_project


def leftovers() -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob("msa-model-*"))


def outputs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.predictions.*")) + sorted(root.rglob(".*.tmp"))


def refused(outcome, message: str) -> None:
    assert outcome.code == 1, outcome
    assert message in outcome.error, outcome.stderr
    assert outcome.error.startswith("error: ") and len(outcome.error.splitlines()) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr


@pytest.mark.parametrize("bad", CASES, ids=lambda c: c.id)
def test_bad_input_output_or_model_is_one_line_and_changes_nothing(
    bad: Case, project: Path, served_model: Path
) -> None:
    bad.materialize(project)
    before = fingerprint(project)
    usage = resource_usage()
    refused(msa(*(str(served_model) if a == "MODEL" else a for a in bad.args)), bad.message)
    assert fingerprint(project) == before and not outputs(project) and not leftovers()
    assert resource_usage() - usage < 30, "refused with bounded work, not after reading a device"


def resource_usage() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_a_fifo_input_is_refused_without_waiting_for_a_writer(project: Path, served_model: Path) -> None:
    (project / "in").mkdir()
    os.mkfifo(project / ROWS)
    before = guarded(project)
    refused(msa("predict", "--model", served_model, "--input", ROWS), "is a FIFO (named pipe), not a regular file")
    assert guarded(project) == before and not outputs(project)


def test_a_git_tracked_output_is_refused_but_earlier_predictions_are_replaced(project: Path, served_model) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the check is skipped where git is absent")
    (project / "in").mkdir()
    (project / ROWS).write_text(jsonl(good()))
    (project / "notes.jsonl").write_text("the team's own notes\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "notes.jsonl"], check=True)
    before = fingerprint(project / "notes.jsonl")
    outcome = msa("predict", "--model", served_model, "--input", ROWS, "--output", "notes.jsonl")
    refused(outcome, "is a file git tracks: predictions never overwrite it; choose another --output name")
    assert fingerprint(project / "notes.jsonl") == before and not leftovers()
    for _ in range(2):  # the second run replaces the first run's (untracked) predictions
        assert msa("predict", "--model", served_model, "--input", ROWS).code == 0
    assert list(pd.read_json(project / "in" / "rows.predictions.jsonl", lines=True)["id"]) == ["r1"]


def test_a_file_uri_model_is_read_in_place(project: Path, served_model: Path, monkeypatch) -> None:
    import mlflow

    def no_copies(*args, **kwargs):
        raise AssertionError("a local model is read where it is, never copied")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_copies)
    (project / "rows.jsonl").write_text(jsonl(good(), good(id="r2")))
    outcome = msa("predict", "--model", served_model.resolve().as_uri(), "--input", "rows.jsonl")
    assert outcome.code == 0, outcome
    assert len(pd.read_json(project / "rows.predictions.jsonl", lines=True)) == 2 and not leftovers()
    assert (project / "rows.predictions.jsonl").stat().st_mode & 0o777 == FILE_MODE  # the umask's, not 0600


def test_a_bad_row_anywhere_is_refused_before_any_row_is_scored(project: Path, served_model: Path, monkeypatch) -> None:
    calls = []
    scored = Predictor.predict_frame
    monkeypatch.setattr(Predictor, "predict_frame", lambda *a, **k: calls.append(1) or scored(*a, **k))
    line = json.dumps(good()) + "\n"
    with (project / "rows.jsonl").open("w") as f:  # a blank line in the middle: row numbers are the file's lines
        f.write(line * 50_000 + "\n" + line * 49_999 + json.dumps(good(text="  ")) + "\n")
    start = time.perf_counter()
    refused(msa("predict", "--model", served_model, "--input", "rows.jsonl"), "rows.jsonl, row 100001: text is blank")
    assert not calls and not outputs(project)
    assert time.perf_counter() - start < 120  # generous: the first pass takes about a second here, scoring minutes


def test_a_scoring_failure_keeps_the_old_output_and_leaves_no_temporary_file(project, served_model, monkeypatch):
    monkeypatch.setattr(input_files, "CHUNK_ROWS", 2)
    (project / "in").mkdir()
    rows = [good(id=f"r{i}") for i in range(4)] + [good(id="r4", image="none.png")]  # a path only scoring opens
    (project / ROWS).write_text(jsonl(*rows[:2]) + "\n" + jsonl(*rows[2:]))
    old = project / "in" / "rows.predictions.jsonl"
    old.write_text("an earlier run's predictions\n")
    refused(msa("predict", "--model", served_model, "--input", ROWS), "rows.jsonl, row 6: cannot read image none.png")
    assert old.read_text() == "an earlier run's predictions\n"
    assert not list(project.rglob("*.tmp")) and not leftovers()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_rows_are_scored_chunk_by_chunk_into_one_file(project, served_model, monkeypatch, suffix: str) -> None:
    rows = [good(id=f"r{i}", text=f"sample number {i} was {'good' if i % 2 else 'bad'}") for i in range(5)]
    (project / "rows.jsonl").write_text(jsonl(*rows))
    whole = project / f"whole{suffix}"
    assert msa("predict", "--model", served_model, "--input", "rows.jsonl", "--output", whole).code == 0
    monkeypatch.setattr(input_files, "CHUNK_ROWS", 2)
    chunked = project / f"chunked{suffix}"
    outcome = msa("predict", "--model", served_model, "--input", "rows.jsonl", "--output", chunked)
    assert outcome.code == 0 and "5 rows" in outcome.stdout, outcome
    read = pd.read_csv if suffix == ".csv" else lambda p: pd.read_json(p, lines=True)
    assert list(read(chunked)["id"]) == [f"r{i}" for i in range(5)]
    pd.testing.assert_frame_equal(read(chunked), read(whole), check_exact=False, atol=1e-5)


def big_jsonl(path: Path, rows: int) -> Path:
    line = json.dumps(good()) + "\n"
    with path.open("w") as f:
        for _ in range(rows // 1000):
            f.write(line * 1000)
    return path


def test_reading_a_large_file_keeps_memory_bounded(tmp_path: Path) -> None:
    path = big_jsonl(tmp_path / "big.jsonl", 100_000)  # 5 MB of text; as one frame of dicts, far more
    tracemalloc.start()
    try:
        assert check_inputs(path, text=True, max_text_chars=300).rows == 100_000
        checking = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert sum(len(chunk.frame) for chunk in input_chunks(path)) == 100_000
        reading = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert checking < 1_000_000, f"the first pass holds one row, not {checking} bytes"
    assert reading < path.stat().st_size / 2, f"reading holds one chunk, not {reading} bytes"


def test_chunks_carry_the_files_row_numbers(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(jsonl(good(id="a")) + "\n\n" + jsonl(good(id="b"), good(id="c")))
    chunks = list(input_chunks(tmp_path / "rows.jsonl", rows=2))
    assert [c.rows for c in chunks] == [[1, 4], [5]]
    (tmp_path / "rows.csv").write_text('id,text,audio\na,"two\nlines",[[1.0]]\n\nb,x,\n')
    (chunk,) = input_chunks(tmp_path / "rows.csv")
    assert chunk.rows == [1, 2] and chunk.frame["audio"].tolist() == [[[1.0]], None]
    assert chunk.frame["text"].tolist() == ["two\nlines", "x"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("long.jsonl", jsonl(good()) + json.dumps(good(text="x" * 300)) + "\n", "line 2: a row longer than 200 bytes"),
        ("long.csv", 'id,text\nr1,"' + "x\n" * 150 + '"\n', "a row longer than 200 bytes"),
        ("bad.csv", "id,text\nr1,a\nr2,b,c\n", "row 2: expected 2 fields (id, text), found 3"),
        ("bad.jsonl", jsonl(good()) + "\n\n{oops\n", "row 4: not valid JSON"),
    ],
    ids=["jsonl-row-too-long", "csv-record-too-long", "csv-field-count", "jsonl-line-number"],
)
def test_rows_are_refused_where_they_are(tmp_path: Path, monkeypatch, name: str, content: str, message: str) -> None:
    monkeypatch.setattr(input_files, "MAX_ROW_BYTES", 200)
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_inputs(tmp_path / name, text=True)
