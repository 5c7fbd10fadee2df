"""`msa score`'s component: a dataset directory or a file of raw rows scored in chunks into one parquet file that
says which model scored which input; the same input and model again is a skip; a failure leaves no file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.core.config import DriftParams
from components.core.errors import DataError
from components.data.dataset import read_dataset
from components.serving.predict import predict_file
from components.serving.score import SCORED_BY, pin_model, score_input, scored_by
from components.serving.values import raw_frame
from tests.conftest import tiny_dataset

TEXTS = ["a warm and lovely film", "dull and far too long", "fine", "the best I have seen", "never again"]


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "rows.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def test_rows_are_scored_in_chunks_as_predict_scores_them(served_model, rows, tmp_path):
    result = score_input(str(served_model), rows, tmp_path / "out" / "scores.parquet", chunk_rows=2)
    scores = pd.read_parquet(result.output)
    assert list(scores.columns) == ["id", "score", "class", "model_version", "run_id"]
    assert list(scores["id"]) == [f"r{i}" for i in range(len(TEXTS))]
    expected = pd.read_json(predict_file(str(served_model), rows, tmp_path / "p.jsonl").output, lines=True)
    assert scores["score"].to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-6)
    assert list(scores["class"]) == list(expected["class"])
    assert pq.ParquetFile(result.output).metadata.num_row_groups == 3  # 2 + 2 + 1: one chunk at a time
    by = scored_by(result.output)
    assert by is not None and by.rows == len(TEXTS) and by.input == str(rows)
    assert by.input_sha256 == result.scored_by.input_sha256 and len(by.input_sha256) == 64
    assert by.model == str(served_model) and by.model_version is None
    assert "rows/s" in result.summary()


def test_the_same_input_and_model_again_is_a_skip_and_new_rows_are_scored(served_model, rows, tmp_path):
    output = tmp_path / "scores.parquet"
    first = score_input(str(served_model), rows, output)
    written = output.stat().st_mtime_ns
    again = score_input(str(served_model), rows, output)
    assert again.skipped and not first.skipped and output.stat().st_mtime_ns == written
    assert "skipped" in again.summary() and again.scored_by.rows == len(TEXTS)
    with rows.open("a") as f:
        f.write(json.dumps({"id": "new", "text": "one more"}) + "\n")
    grown = score_input(str(served_model), rows, output)
    assert not grown.skipped and len(pd.read_parquet(output)) == len(TEXTS) + 1


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_rows_score_as_jsonl_does(served_model, rows, tmp_path, kind):
    frame = pd.read_json(rows, lines=True)
    other = tmp_path / f"rows.{kind}"
    frame.to_csv(other, index=False) if kind == "csv" else frame.to_parquet(other)
    reference = pd.read_parquet(score_input(str(served_model), rows, tmp_path / "a.parquet").output)
    scored = pd.read_parquet(score_input(str(served_model), other, tmp_path / "b.parquet", chunk_rows=3).output)
    pd.testing.assert_frame_equal(scored, reference)


def test_parquet_rows_with_every_modality_score_as_their_jsonl(served_model, tmp_path):
    """Frames are lists of lists in parquet too, images base64: each row scores as the same row in JSONL."""
    rows = raw_frame(read_dataset(tiny_dataset(tmp_path)), "test", inline_images=True).drop(columns=["label"])
    assert {"image_base64", "audio", "vision"} <= set(rows.columns)
    rows.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    rows.to_parquet(tmp_path / "rows.parquet")
    a = pd.read_parquet(score_input(str(served_model), tmp_path / "rows.jsonl", tmp_path / "a.parquet").output)
    b = pd.read_parquet(score_input(str(served_model), tmp_path / "rows.parquet", tmp_path / "b.parquet").output)
    pd.testing.assert_frame_equal(a, b)


def test_a_dataset_directory_scores_every_split(served_model, tmp_path):
    dataset = tiny_dataset(tmp_path, name="day2")
    result = score_input(str(served_model), dataset, tmp_path / "day2.parquet", chunk_rows=5)
    scores = pd.read_parquet(result.output)
    samples = read_dataset(dataset).samples
    assert len(scores) == len(samples) == result.scored_by.rows
    assert sorted(scores["id"]) == sorted(samples["id"])
    # each row scored as predict scores that split's raw rows
    test_rows = raw_frame(read_dataset(dataset), "test").drop(columns=["label"])
    path = tmp_path / "test.jsonl"
    test_rows.to_json(path, orient="records", lines=True)
    expected = pd.read_json(predict_file(str(served_model), path, tmp_path / "t.jsonl").output, lines=True)
    got = scores.set_index("id").loc[list(test_rows["id"]), "score"]
    assert got.to_numpy() == pytest.approx(expected["score"].to_numpy(), abs=1e-6)


def test_a_bad_row_scores_nothing_and_an_older_output_stays(served_model, rows, tmp_path):
    output = tmp_path / "scores.parquet"
    score_input(str(served_model), rows, output)
    before = output.read_bytes()
    with rows.open("a") as f:
        f.write(json.dumps({"id": "bad", "text": "x" * 10_000}) + "\n")  # beyond the packaged max_text_chars
    with pytest.raises(DataError, match=r"rows.jsonl.*row 6"):
        score_input(str(served_model), rows, output)
    assert output.read_bytes() == before
    assert [p.name for p in output.parent.iterdir() if p.name.startswith(".")] == []  # no staged file left


@pytest.mark.parametrize(
    ("name", "message"),
    [("scores.csv", "written as parquet"), ("in/rows.jsonl", "is the input file")],
)
def test_the_output_is_checked_before_the_model_loads(served_model, rows, tmp_path, name, message):
    with pytest.raises(DataError, match=message):
        score_input(str(served_model), rows, tmp_path / name)


@pytest.mark.parametrize(
    ("name", "message"),
    [("", r"without manifest\.yaml"), ("rows.txt", "a .jsonl, .csv or .parquet file"), ("gone.jsonl", "no such file")],
)
def test_an_input_this_does_not_read_is_refused(served_model, tmp_path, name, message):
    (tmp_path / "rows.txt").write_text("text\nfine\n")
    with pytest.raises(DataError, match=message):
        score_input(str(served_model), tmp_path / name, tmp_path / "out" / "scores.parquet")
    assert not (tmp_path / "out").exists()


def test_scores_never_go_inside_the_dataset_they_score(served_model, tmp_path):
    dataset = tiny_dataset(tmp_path)
    with pytest.raises(DataError, match="inside the dataset it scores"):
        score_input(str(served_model), dataset, dataset / "scores.parquet")
    assert not (dataset / "scores.parquet").exists()


def test_a_file_someone_else_wrote_is_not_taken_for_a_scoring(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"score": [1.0]}).to_parquet(path)
    assert scored_by(path) is None
    assert SCORED_BY not in (pq.read_schema(path).metadata or {})


def test_an_alias_is_pinned_to_the_version_it_names_now(demo_registry):
    assert pin_model("models:/demo@champion") == ("models:/demo/2", "2")
    demo_registry.set_registered_model_alias("demo", "champion", "1")
    assert pin_model("models:/demo@champion") == ("models:/demo/1", "1")
    assert pin_model("models:/demo/2") == ("models:/demo/2", "2")
    assert pin_model("runs:/abc/model") == ("runs:/abc/model", None)


def test_the_batch_is_compared_with_the_packaged_reference_beside_the_scores(served_model, tmp_path):
    dataset = tiny_dataset(tmp_path, name="day2")  # the training data's rows: like the reference, of every modality
    settings = DriftParams(min_rows=5)
    result = score_input(str(served_model), dataset, tmp_path / "day2.parquet", chunk_rows=5, drift=settings)
    report = result.drift
    assert report is not None and report.rows == 12 and report.compared == 12
    assert set(report.modalities) == {"text", "image", "audio", "vision", "prediction"}
    assert not report.drifted and report.verdict == "no drift"
    written = json.loads((tmp_path / "day2.parquet.drift.json").read_text())
    assert written == report.model_dump(mode="json")
    assert result.drift_files == (tmp_path / "day2.parquet.drift.json", tmp_path / "day2.parquet.drift.png")
    again = score_input(str(served_model), dataset, tmp_path / "day2.parquet", drift=settings)
    assert again.skipped and again.drift == report  # a skip reads the report that stands beside the scores

    few = score_input(str(served_model), dataset, tmp_path / "few.parquet", drift=DriftParams(min_rows=50))
    assert few.drift is not None and not few.drift.drifted and few.drift.verdict.startswith("no verdict: 12 rows")
