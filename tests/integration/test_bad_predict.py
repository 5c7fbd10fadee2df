"""`msa predict` on bad input files and untrusted models: one line naming the file, row and rule, exit 1, no
predictions written, and the project's data, models and tracking database unchanged."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import SERVE_LIMITS
from tests.hardening import Case, gif, guarded, msa, png, png_claiming

B64 = base64.b64encode(png()).decode()
FRAMES = [[0.1, 0.2, 0.3]] * 3


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def good(**changes) -> dict:
    return {"id": "r1", "text": "sample number 3 was good", "image_base64": B64, "audio": FRAMES} | changes


def predict_case(id: str, rows: str | bytes, message: str, *extra: str, name: str = "in/rows.jsonl", **kw) -> Case:
    files = {name: rows, **kw.pop("files", {})}
    return Case(id, ("predict", "--model", "MODEL", "--input", name, *extra), 1, message, files=files, **kw)


CASES = [
    # files that are not rows
    predict_case(
        "csv-unquoted-comma",
        "id,text\nr1,good, really good\n",
        "row 1: expected 2 fields (id, text), found 3",
        name="in/rows.csv",
    ),
    predict_case(
        "csv-bad-frames", "id,text,audio\nr1,good,[[1 2]]\n", "column 'audio' must hold JSON frames", name="in/rows.csv"
    ),
    predict_case("jsonl-not-json", '{"text": "a"}\n{"text": \n', "row 2: not valid JSON"),
    predict_case("jsonl-not-object", '["a", 1]\n', "row 1: expected a JSON object per line, got list"),
    predict_case("jsonl-bad-utf8", b'{"text": "caf\xe9"}\n', "byte 0xe9 is not valid UTF-8"),
    predict_case("wrong-suffix", "text\nhello\n", "input must be .jsonl or .csv", name="in/rows.txt"),
    predict_case("no-text-column", jsonl({"id": "r1", "image_base64": B64}), "missing required column(s) ['text']"),
    # text
    predict_case("text-null", jsonl(good(), good(text=None)), "row 2: text is missing"),
    predict_case("text-blank", jsonl(good(text="   ")), "row 1: text is blank"),
    predict_case("text-number", jsonl(good(text=42)), "row 1: text must be a string, got int"),
    predict_case("text-too-long", jsonl(good(text="good " * 100)), "row 1: text has 500 characters; at most 300"),
    # images inline
    predict_case("base64-not-base64", jsonl(good(image_base64="%%%not base64%%%")), "image_base64 is not base64 text"),
    predict_case(
        "base64-not-image",
        jsonl(good(image_base64=base64.b64encode(b"hello").decode())),
        "row 1: not a PNG or JPEG image",
    ),
    predict_case("base64-gif", jsonl(good(image_base64=base64.b64encode(gif()).decode())), "not a PNG or JPEG image"),
    predict_case(
        "base64-bomb",
        jsonl(good(image_base64=base64.b64encode(png_claiming(20_000, 20_000)).decode())),
        "row 1: image has more than the 4096 pixels allowed",
    ),
    predict_case("base64-too-long", jsonl(good(image_base64="A" * 8000)), "image_base64 has 8000 characters; at most"),
    predict_case("base64-not-text", jsonl(good(image_base64=123)), "image_base64 must be base64 text"),
    # image paths: read only inside the image root, symlinks resolved
    predict_case(
        "path-dotdot",
        jsonl(good(image_base64=None, image="../secret.png")),
        "leaves the image root",
        files={"secret.png": png()},
    ),
    predict_case("path-absolute", jsonl(good(image_base64=None, image="/etc/hostname")), "leaves the image root"),
    predict_case(
        "path-symlink-out",
        jsonl(good(image_base64=None, image="link.png")),
        "leaves the image root",
        links={"in/link.png": "/etc/hostname"},
    ),
    predict_case(
        "path-directory",
        jsonl(good(image_base64=None, image="sub")),
        "image path sub is not a file",
        files={"in/sub/x": "x"},
    ),
    predict_case("path-missing", jsonl(good(image_base64=None, image="none.png")), "cannot read image none.png"),
    predict_case(
        "path-too-big",
        jsonl(good(image_base64=None, image="big.png")),
        "more than the 4096 allowed",
        files={"in/big.png": png(64) + b"\0" * 5000},
    ),
    predict_case(
        "path-bomb",
        jsonl(good(image_base64=None, image="bomb.png")),
        "image has more than the 4096 pixels allowed",
        files={"in/bomb.png": png_claiming(20_000, 20_000)},
    ),
    # frames
    predict_case("frames-too-many", jsonl(good(audio=[[0.0, 0.0, 0.0]] * 17)), "audio has 17 frames; at most 16"),
    predict_case("frames-wrong-width", jsonl(good(audio=[[0.0, 0.0]])), "the model expects [frames, 3]"),
    predict_case("frames-not-a-list", jsonl(good(audio="loud")), "row 1: audio must be a list of frames of 3 numbers"),
    predict_case("frames-of-text", jsonl(good(vision=[["a", "b", "c"]])), "vision must be a list of frames"),
    predict_case("frames-huge-frame", jsonl(good(audio=[[0.0] * 100_000])), "the model expects [frames, 3]"),
    predict_case("no-modality", jsonl({"text": None}), "text is missing"),
    # where the predictions go
    predict_case(
        "output-directory",
        jsonl(good()),
        "is a directory: --output names the predictions file",
        "--output",
        "in",
        files={"in/x": "x"},
    ),
    predict_case("output-is-input", jsonl(good()), "is the input file", "--output", "in/rows.jsonl"),
    predict_case(
        "output-suffix", jsonl(good()), "predictions are written as .jsonl or .csv", "--output", "out.parquet"
    ),
]


@pytest.fixture
def project(guarded_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Models named by models:/ or runs:/ are looked up in a tracking store of their own, never the guarded one."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{guarded_project / 'other.db'}")
    return guarded_project


def outputs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.predictions.*")) + sorted(root.glob("out.*"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_rows_are_refused_by_row_and_rule(case: Case, project: Path, served_model: Path) -> None:
    case.materialize(project)
    before = guarded(project)
    outcome = msa(*(str(served_model) if a == "MODEL" else a for a in case.args))
    assert outcome.code == 1, outcome
    assert case.message in outcome.stderr, outcome.stderr
    assert len(outcome.error.splitlines()) == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.error.startswith(f"error: {case.args[4]}") or "--output" in case.args or "column" in case.message
    assert guarded(project) == before and not outputs(project)


def test_good_rows_score_and_paths_are_read_inside_a_wider_root(project: Path, served_model: Path) -> None:
    (project / "imgs").mkdir()
    (project / "imgs" / "a.png").write_bytes(png())
    (project / "in").mkdir()
    (project / "in" / "rows.jsonl").write_text(
        jsonl(good(), good(id="r2", image_base64=None, image=str(project / "imgs" / "a.png")))
    )
    refused = msa("predict", "--model", served_model, "--input", "in/rows.jsonl")
    assert refused.code == 1 and "leaves the image root" in refused.stderr
    outcome = msa("predict", "--model", served_model, "--input", "in/rows.jsonl", "--image-root", project)
    assert outcome.code == 0, outcome
    scored = pd.read_json(project / "in" / "rows.predictions.jsonl", lines=True)
    assert list(scored["id"]) == ["r1", "r2"]
    assert scored["score"].iloc[0] == pytest.approx(scored["score"].iloc[1])  # the same image, inline or by path


class Foreign(mlflow.pyfunc.PythonModel):
    """A model someone else packaged: its pickle runs code when loaded (here: it drops a file)."""

    def load_context(self, context) -> None:
        Path(context.artifacts["sentinel"]).parent.joinpath("code-ran").write_text("loaded")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": [0.0] * len(model_input)})


@pytest.fixture
def foreign_model(tmp_path: Path) -> Path:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "sentinel").write_text("")
    path = tmp_path / "foreign"
    mlflow.pyfunc.save_model(str(path), python_model=Foreign(), artifacts={"sentinel": str(tmp_path / "art/sentinel")})
    for ran in path.rglob("code-ran"):  # saving loads the model once to check it
        ran.unlink()
    return path


def test_a_foreign_model_needs_trust_model_before_any_of_its_code_runs(project: Path, foreign_model: Path) -> None:
    (project / "rows.jsonl").write_text(jsonl({"text": "hi"}))
    before = guarded(project)
    outcome = msa("predict", "--model", foreign_model, "--input", "rows.jsonl")
    assert outcome.code == 1 and "not a model this project packaged" in outcome.stderr, outcome
    assert "--trust-model" in outcome.stderr and len(outcome.error.splitlines()) == 1
    assert not list(foreign_model.rglob("code-ran")) and guarded(project) == before and not outputs(project)
    assert msa("predict", "--model", foreign_model, "--input", "rows.jsonl", "--trust-model").code == 0
    assert list(foreign_model.rglob("code-ran")), "trusted: its loader ran"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("models:/nothing@champion", "cannot load the model"),
        ("runs:/0123456789abcdef/model", "cannot load the model"),
        ("DIR", "no MLmodel file here"),
    ],
    ids=["unknown-alias", "unknown-run", "not-a-model-dir"],
)
def test_a_model_that_is_not_there_is_one_line(project: Path, model: str, message: str) -> None:
    (project / "rows.jsonl").write_text(jsonl({"text": "hi"}))
    (project / "empty-dir").mkdir()
    before = guarded(project)
    outcome = msa("predict", "--model", "empty-dir" if model == "DIR" else model, "--input", "rows.jsonl")
    assert outcome.code == 1 and message in outcome.stderr, outcome
    assert (
        outcome.error.splitlines()[-1].startswith("error: ") and "Traceback" not in outcome.stderr
    )  # after MLflow's log
    assert guarded(project) == before


def test_the_served_bounds_are_the_packaged_ones(served_model: Path) -> None:
    from components.core.config import ServeParams

    limits = json.loads(next(served_model.rglob("limits.json")).read_text())
    assert limits == ServeParams(**SERVE_LIMITS).model_dump(mode="json")  # the given bounds, the rest at defaults
