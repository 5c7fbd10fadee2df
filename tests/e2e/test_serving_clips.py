"""Raw clips through `mlflow models serve`: a WAV and an MP4 in (base64), a score out, the same score `msa predict`
gives for the same files by path; and a stranger's clip is bounded and never names a server path."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.dataset import is_null, read_dataset
from components.data.demo import wav_bytes
from components.serving.values import raw_frame
from tests.conftest import CLIP_SERVE_LIMITS
from tests.e2e.servers import free_port, serving
from tests.e2e.test_serving_hardening import LEAKS, model_error, post, split
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.e2e


def wav(seconds: float, rate: int = 16000) -> bytes:
    return wav_bytes(np.zeros(int(seconds * rate)), rate)


def mp4() -> bytes:
    from components.data.demo import _video_clip

    return _video_clip(np.random.default_rng(0), 1, 2.0, 0.5)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(served_clip_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pyfunc, _ = served_clip_model
    root = tmp_path_factory.mktemp("serve-clips")
    port = free_port()
    args = [str(BIN / "mlflow"), "models", "serve", "-m", str(pyfunc), "--env-manager", "local"]
    args += ["-h", "127.0.0.1", "-p", str(port)]
    with serving(args, f"http://127.0.0.1:{port}/ping", root / "serve.log", cwd=root):
        yield f"http://127.0.0.1:{port}"


def test_a_served_clip_scores_as_msa_predict_scores_its_file(server, served_clip_model, tmp_path) -> None:
    pyfunc, raw = served_clip_model
    dataset = read_dataset(raw)
    inline = raw_frame(dataset, "test", limit=4, inline_images=True).drop(columns=["label"])
    assert {"text", "image_base64", "audio_base64", "video_base64"} <= set(inline.columns)
    inline.loc[1, "audio_base64"] = None  # audio from the video's soundtrack: this demo's videos are silent
    inline.loc[2, "video_base64"] = None  # no video: no vision for this row

    status, text = post(f"{server}/invocations", split(inline.drop(columns=["id"]).to_dict("records")))
    assert status == 200, text
    served = pd.DataFrame(json.loads(text)["predictions"])

    # The same rows as files, by path, in a JSONL that `msa predict` reads inside its root.
    by_path = raw_frame(dataset, "test", limit=4).drop(columns=["label"])
    by_path.loc[1, "audio"] = None
    by_path.loc[2, "video"] = None
    for column in ("image", "audio", "video"):
        by_path[column] = [None if is_null(p) else str(Path(p).relative_to(raw)) for p in by_path[column]]
    rows = tmp_path / "clips.jsonl"
    rows.write_text(by_path.to_json(orient="records", lines=True))
    run(
        [str(BIN / "msa"), "predict", "--model", str(pyfunc), "--input", str(rows), "--image-root", str(raw)],
        cwd=tmp_path,
    )
    predicted = pd.read_json(tmp_path / "clips.predictions.jsonl", lines=True)

    assert list(predicted["id"]) == list(inline["id"])
    np.testing.assert_allclose(served["score"], predicted["score"], rtol=1e-5, atol=1e-6)
    assert list(served["class"]) == list(predicted["class"])


def good(served_clip_model, **changes) -> dict:
    _, raw = served_clip_model
    return {"text": "the movie was good", "audio_base64": b64((raw / "audio" / "demo-00000.wav").read_bytes())} | (
        changes
    )


CASES = [  # (id, changes, what the 400 says)
    ("audio-path", {"audio_base64": None, "audio": "/etc/hostname"}, "row 1: the served model opens no file paths"),
    ("video-path", {"video": "video/demo-00000.mp4"}, "the served model opens no file paths: send the video"),
    (
        "not-a-clip",
        {"audio_base64": b64(b"just text, not a sound")},
        "audio from the audio clip: not in WAV or FLAC format",
    ),
    (
        "too-long",
        {"audio_base64": b64(wav(CLIP_SERVE_LIMITS["max_clip_seconds"] + 0.5, rate=8000))},
        "clip lasts 3.5 s, more than the 3 s allowed",
    ),
    ("too-big", {"audio_base64": "A" * 90_000}, "audio_base64 has 90000 characters; at most 80000"),
    ("low-rate", {"audio_base64": b64(wav(0.5, rate=4000))}, "audio sample rate 4000 Hz is outside"),
    (
        "audio-as-video",
        {"audio_base64": None, "video_base64": b64(wav(0.5))},
        "vision from the video clip: not in MP4 or WebM format",
    ),  # the video's own problem, not its soundtrack's
    ("video-as-audio", {"audio_base64": b64(mp4())}, "audio from the audio clip: not in WAV or FLAC format"),
    ("truncated", {"video_base64": None, "audio_base64": b64(wav(0.5)[:30])}, "audio from the audio clip: "),
]


@pytest.mark.parametrize(("changes", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_clip_is_a_400_that_names_the_rule(server, served_clip_model, changes: dict, message: str) -> None:
    status, text = post(f"{server}/invocations", split([good(served_clip_model, **changes)]))
    assert status == 400, text
    assert message in model_error(text), text
    assert not any(leak in model_error(text) for leak in LEAKS), text


def test_the_gate_reads_a_validated_test_split_by_the_dataset_s_bounds_not_the_served_ones(
    served_clip_model, tmp_path, monkeypatch
) -> None:
    """Registration re-scores the champion on a new test split through its pyfunc. Those rows passed validation under
    the dataset's clip bounds; the served model's tighter bounds are for strangers and must not refuse them."""
    from components.core.config import ServeParams
    from components.core.errors import DataError
    from components.serving.package import dataset_bounds, package_model
    from components.serving.predictor import Predictor

    pyfunc, raw = served_clip_model
    strict = ServeParams(**CLIP_SERVE_LIMITS | {"max_clip_seconds": 0.9})  # the demo's clips last 1-2 s
    built = pyfunc.parent
    predictor = Predictor(package_model(built / "models", built / "features", tmp_path / "package", strict))
    dataset = read_dataset(raw)
    frame = raw_frame(dataset, "test").drop(columns=["id", "label"])
    with pytest.raises(DataError, match=r"more than the 0.9 s allowed"):
        predictor.predict_frame(frame, image_root=raw)

    bounds = dataset_bounds(dataset, frame, predictor.limits)
    assert bounds.clips == dataset.manifest.clips and bounds.limits.max_rows == strict.max_rows
    scored = predictor.predict_frame(frame, image_root=raw, bounds=bounds)
    loose = Predictor(package_model(built / "models", built / "features", tmp_path / "loose", ServeParams()))
    pd.testing.assert_frame_equal(scored, loose.predict_frame(frame, image_root=raw))  # the same model, every row

    # The gate itself: a champion packaged with those tight bounds, re-scored on this test split, gets its score.
    from types import SimpleNamespace

    from components.registry import register as registry
    from components.serving import pyfunc as serving

    loaded = serving.LoadedModel(predictor, None, [], served_clip_model[0])
    monkeypatch.setattr(serving, "load_model", lambda uri, scratch, **_: loaded)
    champion = SimpleNamespace(version="1", tags={})
    score, _ = registry._champion_score(champion, "clips", dataset, "test-split-of-v2", "mae", rescore=False)
    expected = np.abs(scored["score"].to_numpy() - raw_frame(dataset, "test")["label"].to_numpy()).mean()
    assert score == pytest.approx(expected)
