"""Explanations on request: a row's modality shares and top words are what the served model's score does without
that modality or word, only rows that ask get them, and a request may ask for a bounded number."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from components.core.config import TEXT_MODELS
from components.serving.predict import predict_file
from components.serving.predictor import Predictor
from tests.conftest import png_bytes

TEXT = "a warm and lovely film, truly the best of the year"
IMAGE = base64.b64encode(png_bytes((30, 200, 90))).decode()
FRAMES = [[0.3, -1.2, 0.8], [1.1, 0.4, -0.5], [0.0, 0.9, 1.7]]


@pytest.fixture(scope="module")
def predictor(served_model: Path) -> Predictor:
    return Predictor(served_model.parent / "package")  # the package the pyfunc directory was saved from


def row(**columns) -> dict:
    return {"text": TEXT, "image_base64": IMAGE, "audio": FRAMES, "vision": FRAMES, **columns}


def test_only_rows_that_ask_are_explained(predictor: Predictor) -> None:
    out = predictor.predict_frame(pd.DataFrame([row(explain=True), row(explain=False), row()]))
    assert list(out.columns) == ["score", "class", "modality_shares", "top_words"]
    assert out["modality_shares"][1] is None and out["top_words"][2] is None
    plain = predictor.predict_frame(pd.DataFrame([row()]))
    assert list(plain.columns) == ["score", "class"]  # nobody asked: no columns to carry
    assert out["score"][0] == pytest.approx(plain["score"][0], abs=1e-6)  # asking changes no score


def test_a_modality_share_is_how_far_the_score_moves_without_it(predictor: Predictor) -> None:
    explained = predictor.predict_frame(pd.DataFrame([row(explain=True)]))
    shares = explained["modality_shares"][0]
    assert set(shares) == {"text", "image", "audio", "vision"} and sum(shares.values()) == pytest.approx(1, abs=1e-3)
    score = explained["score"][0]
    moves = {
        m: abs(score - predictor.predict_frame(pd.DataFrame([row(**{column: None})]))["score"][0])
        for m, column in (("image", "image_base64"), ("audio", "audio"), ("vision", "vision"))
    }
    # a row sent without the image scores as the explanation's row with the image taken away
    ratios = {m: shares[m] / shares["audio"] for m in ("image", "vision") if shares["audio"] > 0}
    for m, ratio in ratios.items():
        assert ratio == pytest.approx(moves[m] / moves["audio"], rel=1e-3)


def test_a_word_s_effect_is_the_text_heads_move_without_it(predictor: Predictor) -> None:
    words = predictor.predict_frame(pd.DataFrame([row(explain=True)]))["top_words"][0]
    assert 0 < len(words) <= 5 and all(w["word"] in TEXT.split() for w in words)
    assert [abs(w["effect"]) for w in words] == sorted((abs(w["effect"]) for w in words), reverse=True)
    first = words[0]
    without = TEXT.split()
    without.remove(first["word"])

    def text_heads(text: str) -> float:
        outputs = predictor.outputs(predictor.features(pd.DataFrame([row(text=text)])))
        return float(np.mean([outputs[h][0] for h in outputs if h in TEXT_MODELS]))

    assert first["effect"] == pytest.approx(text_heads(TEXT) - text_heads(" ".join(without)), abs=2e-4)


def test_a_request_may_ask_for_a_bounded_number_of_explanations(served_model: Path) -> None:
    bounded = Predictor(served_model.parent / "package")
    bounded.limits = bounded.limits.model_copy(update={"max_explain_rows": 2, "explain_words": 4})
    with pytest.raises(MlflowException, match=r"3 rows ask for an explanation; at most 2 per request"):
        bounded.predict(pd.DataFrame([row(explain=True)] * 3))
    explained = bounded.predict(pd.DataFrame([{"text": "one two three four five six seven", "explain": True}]))
    assert {w["word"] for w in explained["top_words"][0]} <= {"one", "two", "three", "four"}  # the first ones


def test_msa_predict_explain_writes_the_columns_as_json(served_model: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "r1", "text": TEXT}) + "\n" + json.dumps({"id": "r2", "text": "dull"}) + "\n")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'unused.db'}")
    result = predict_file(str(served_model), rows, tmp_path / "out.csv", explain=True)
    table = pd.read_csv(result.output)
    assert list(table.columns) == ["id", "score", "class", "modality_shares", "top_words"]
    assert json.loads(table["modality_shares"][0]) == {"text": 1.0}  # the only modality these rows have
    assert json.loads(table["top_words"][1]) == []  # one word: nothing to leave out
