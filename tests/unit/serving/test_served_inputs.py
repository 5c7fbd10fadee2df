"""The served model's `Predictor` facing a stranger's values, without a server: text with no printable character,
base64 as the `base64` tool and data: URIs write it, frames holding strings, booleans, lists or numbers beyond any
float, a broken video, a JPEG that repeats a scan, and CSV. A refusal is one line naming the row and the rule, costs
little CPU and memory, and changes nothing stored; an accepted variant scores as the plain request does."""

from __future__ import annotations

import base64
import io
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from components.core.config import ServeParams
from components.core.errors import DataError
from components.data.dataset import ClipBounds
from components.data.images import MAX_JPEG_MARKERS, MAX_JPEG_SCANS, ImageProblem, open_image
from components.serving.package import Bounds
from components.serving.predictor import Predictor
from tests.conftest import SERVE_LIMITS
from tests.hardening import fingerprint, png

B64 = base64.b64encode(png()).decode()
FRAMES = [[0.1, -0.2, 0.3]] * 3
MAX_B64 = ServeParams(**SERVE_LIMITS).max_base64_chars  # 5464
CPU_BOUND_S = 0.5  # per refusal; each takes milliseconds here
MEMORY_BOUND = 32 * 2**20  # Python-level allocations per refusal (tracemalloc's peak)


def good(**changes) -> dict:
    return {"text": "sample number 3 was good", "image_base64": B64, "audio": FRAMES} | changes


def nested(depth: int) -> list:
    value: list | float = 0.0
    for _ in range(depth):
        value = [value]
    return value  # type: ignore[return-value]


def wrapped(text: str, width: int = 76, newline: str = "\n") -> str:
    """As the `base64` tool prints it: lines of `width` characters, each ended by `newline`."""
    return "".join(text[i : i + width] + newline for i in range(0, len(text), width))


def jpeg(*, progressive: bool = True, size: int = 2048, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 40, 200)).save(buffer, format="JPEG", progressive=progressive, **options)
    return buffer.getvalue()


def repeating_last_scan(repeats: int) -> bytes:
    """A valid progressive 2048x2048 JPEG whose last (refinement) scan is repeated: each repeat is a few bytes, and
    a full pass over the image's coefficients for the decoder."""
    data = jpeg()
    scan = data[data.rindex(b"\xff\xda") : -2]  # the last SOS segment and its entropy-coded data, up to EOI
    return data[:-2] + scan * repeats + b"\xff\xd9"


@pytest.fixture(scope="module")
def predictor(served_model: Path) -> Predictor:
    return Predictor(served_model.parent / "package")  # the package the pyfunc carries, as MLflow loads it


REFUSED = [  # (id, rows, what the one line says)
    # text with nothing to read
    ("text-nul", [good(text="good\x00movie")], "row 1: text contains a NUL character"),
    ("text-only-nul", [good(), good(text="\x00" * 5)], "row 2: text contains a NUL character"),
    ("text-control", [good(text="\x01\x02\x1b\x7f")], "row 1: text has no printable character"),
    ("text-control-blank", [good(text="\x07 \t\x08\u200b")], "row 1: text has no printable character"),
    # base64 that is not an inline file, and bounds that hold for the text as sent
    (
        "base64-data-uri-text",
        [good(image_base64="data:text/plain;base64," + B64)],
        "row 1: image_base64 is a data: URI but not data:<image|audio|video type>;base64,",
    ),
    ("base64-non-ascii", [good(image_base64="ÄÖÜ" + B64)], "row 1: image_base64 is not base64 text"),
    (
        "base64-wrapped-too-long",
        [good(image_base64=wrapped("A" * 6080))],
        f"row 1: image_base64 has 6160 characters; at most {MAX_B64}",
    ),
    (
        "base64-wrapped-just-over",
        [good(image_base64=wrapped("A" * (MAX_B64 + 8)))],
        f"row 1: image_base64 has {MAX_B64 + 8} characters; at most {MAX_B64}",
    ),
    ("base64-all-whitespace", [good(image_base64=" " * 5_000_000)], "row 1: image_base64 has 5000000 characters"),
    # frames whose values are not numbers: refused before numpy reads "1" as 1.0 and true as 1.0
    (
        "frames-string",
        [good(audio=[["1", 0.2, 0.3]] * 3)],
        "row 1: audio must be a list of frames of 3 numbers each; found a string where a number belongs",
    ),
    (
        "frames-bool",
        [good(), good(audio=[[True, 0.2, 0.3]] * 3)],
        "row 2: audio must be a list of frames of 3 numbers each; found true/false where a number belongs",
    ),
    (
        "frames-null",
        [good(audio=[[None, 0.2, 0.3]])],
        "row 1: audio must be a list of frames of 3 numbers each; found null where a number belongs",
    ),
    (
        "frames-list-in-frame",
        [good(vision=[[[0.1, 0.2], 0.2, 0.3]])],
        "row 1: vision must be a list of frames of 3 numbers each; found a list where a number belongs",
    ),
    ("frames-deep", [good(audio=[[nested(100_000), 0.2, 0.3]])], "found a list where a number belongs"),
    # numbers beyond any float, or beyond the model's float32
    (
        "frames-huge-int",
        [good(audio=[[10**400, 0.2, 0.3]])],
        "row 1: audio has a number out of range: frame values are at most 3.403e+38 in magnitude",
    ),
    ("frames-huge-float", [good(audio=[[1e300, 0.2, 0.3]])], "row 1: audio has a number out of range"),
    ("frames-nan", [good(audio=[[float("nan"), 0.2, 0.3]])], "row 1: audio has NaN or infinite values"),
]


@pytest.mark.parametrize(("rows", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_bad_value_is_one_line_that_names_the_row_and_the_rule(predictor, served_model, rows, message) -> None:
    package = fingerprint(served_model.parent)
    frame = pd.DataFrame(rows)
    tracemalloc.start()
    start = time.process_time()
    try:
        with pytest.raises(MlflowException) as refused:
            predictor.predict(frame)
        cpu = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = refused.value.message
    assert message in text and "\n" not in text, text
    assert text.startswith("<model input>, row ") and "Traceback" not in text
    assert cpu < CPU_BOUND_S, f"{cpu:.2f} s of CPU to refuse"
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MB to refuse"
    assert fingerprint(served_model.parent) == package  # nothing stored changed: the package, the pyfunc, the data


ACCEPTED = [  # (id, image_base64 as sent): the same image every time
    ("plain", B64),
    ("wrapped-76-lf", wrapped(B64)),
    ("wrapped-76-crlf", wrapped(B64, newline="\r\n")),
    ("wrapped-64-crlf", wrapped(B64, 64, "\r\n")),
    ("data-uri", "data:image/png;base64," + B64),
    ("data-uri-wrapped", "DATA:image/png;name=face.png;base64," + wrapped(B64)),
    ("bytes", B64.encode()),
]


def test_wrapped_base64_and_data_uris_score_as_plain_base64(predictor) -> None:
    frame = pd.DataFrame([good(image_base64=sent) for _, sent in ACCEPTED])
    scores = predictor.predict(frame)["score"].to_numpy()
    assert scores == pytest.approx([scores[0]] * len(ACCEPTED), abs=1e-6), list(zip(ACCEPTED, scores, strict=True))
    assert scores[0] != pytest.approx(predictor.predict(pd.DataFrame([good(image_base64=None)]))["score"][0])


def test_an_image_at_its_bound_is_accepted_wrapped() -> None:
    """The bound is on the image: base64 of `max_image_bytes` fits however it is wrapped; one byte more does not."""
    from components.serving.values import decode_base64 as _decode_base64

    limits = ServeParams(max_image_bytes=3000)
    exact = base64.b64encode(bytes(3000)).decode()
    for sent in (exact, wrapped(exact, newline="\r\n"), "data:image/jpeg;base64," + wrapped(exact, 64, "\r\n")):
        assert _decode_base64(sent, "image_base64", limits.max_base64_chars, ImageProblem, "b") == bytes(3000)
    over = wrapped(base64.b64encode(bytes(3003)).decode(), newline="\r\n")
    with pytest.raises(ImageProblem, match=f"has 4004 characters; at most {limits.max_base64_chars}"):
        _decode_base64(over, "image_base64", limits.max_base64_chars, ImageProblem, "b")


def test_frames_of_ints_floats_and_numpy_numbers_still_score(predictor) -> None:
    as_floats = predictor.predict(pd.DataFrame([good(audio=[[1.0, 0.0, -2.0]] * 3)]))
    for frames in ([[1, 0, -2]] * 3, np.array([[1.0, 0.0, -2.0]] * 3), [np.array([1, 0, -2], np.int64)] * 3):
        got = predictor.predict(pd.DataFrame([good(audio=frames)]))
        assert got["score"][0] == pytest.approx(as_floats["score"][0], abs=1e-6)


def test_a_broken_video_alone_is_named_as_the_video(served_clip_model) -> None:
    """Audio falls back to the video's soundtrack; a video that is not one is the video's problem (vision), which
    the caller fixes by sending a video, not an audio clip."""
    pyfunc, _ = served_clip_model
    clips = Predictor(pyfunc.parent / "package")
    junk = base64.b64encode(b"a text file, not a video").decode()
    rows = pd.DataFrame([{"text": "the movie was good", "video_base64": junk}])
    with pytest.raises(DataError, match=r"^<model input>, row 1: vision from the video clip: not in MP4 or WebM "):
        clips.predict_frame(rows)
    rows = pd.DataFrame([{"text": "the movie was good", "audio_base64": junk}])  # an audio clip alone: audio's
    with pytest.raises(DataError, match=r"row 1: audio from the audio clip: not in WAV or FLAC format$"):
        clips.predict_frame(rows)


def test_a_jpeg_repeating_a_scan_is_refused_before_any_scan_is_decoded(predictor) -> None:
    """~210,000 repeats of a refinement scan fit in 4 MB and would cost libjpeg ~3-5 s of CPU per 1,000."""
    hostile = repeating_last_scan(200_000)
    assert len(hostile) < ServeParams().max_image_bytes
    start = time.process_time()
    with pytest.raises(ImageProblem, match=f"^JPEG has more than {MAX_JPEG_SCANS} scans"):
        open_image(hostile, max_bytes=ServeParams().max_image_bytes, max_pixels=ServeParams().max_image_pixels)
    assert time.process_time() - start < CPU_BOUND_S

    # Through the served model, under the default bounds (2048x2048 is within max_image_pixels).
    bounds = Bounds(ServeParams(), ClipBounds())
    rows = pd.DataFrame([good(), good(image_base64=base64.b64encode(repeating_last_scan(MAX_JPEG_SCANS)).decode())])
    start = time.process_time()
    with pytest.raises(DataError, match=f"row 2: JPEG has more than {MAX_JPEG_SCANS} scans"):
        predictor.predict_frame(rows, bounds=bounds)
    assert time.process_time() - start < CPU_BOUND_S


def test_a_jpeg_of_many_markers_is_refused_cheaply() -> None:
    flood = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 1_000_000 + b"\xff\xd9"  # a million empty comments: 4 MB
    start = time.process_time()
    with pytest.raises(ImageProblem, match=f"^JPEG has more than {MAX_JPEG_MARKERS} markers"):
        open_image(flood)
    assert time.process_time() - start < CPU_BOUND_S


@pytest.mark.parametrize(
    "options",
    [
        {"progressive": False},
        {"progressive": True},
        {"progressive": True, "quality": 95, "subsampling": 0},
        {"progressive": False, "restart_marker_blocks": 1},  # 16,384 restart markers: inside the scan, not counted
        {"progressive": True, "restart_marker_rows": 1, "exif": b"Exif\x00\x00" + b"\x00" * 64, "comment": "hi"},
    ],
    ids=["baseline", "progressive", "progressive-q95", "restarts", "progressive-restarts-exif"],
)
def test_ordinary_jpegs_still_open(options: dict) -> None:
    assert open_image(jpeg(**options)).size == (2048, 2048)


def test_a_csv_request_scores_as_json(predictor) -> None:
    """What MLflow's scoring server makes of `text/csv` with a string-typed signature: `pd.read_csv(dtype=object)`,
    so an empty cell is NaN and every value is text; the Predictor scores it as the same rows sent as JSON."""
    rows = pd.DataFrame([good(audio=None), good(text="sample number 4 was bad", image_base64=None, audio=None)])
    rows = rows.drop(columns=["audio"])
    from_csv = pd.read_csv(io.StringIO(rows.to_csv(index=False)), dtype=object)
    assert from_csv["image_base64"].isna().tolist() == [False, True]
    pd.testing.assert_frame_equal(predictor.predict(from_csv), predictor.predict(rows))


def test_the_scoring_server_answers_csv_as_json(served_model, monkeypatch) -> None:
    """MLflow reads `text/csv` with the signature's pandas types and passes a string column through unconverted:
    frames sent as JSON lists (split or records) and as JSON text in a CSV cell score alike."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    monkeypatch.setenv("MSA_TRUST_MODEL", "1")  # the test fixture's package is not signed
    client = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(served_model))))
    records = [good(), good(text="sample number 4 was bad", image_base64=None, audio=None)]
    rows = pd.DataFrame(records)
    split = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    as_json = client.post("/invocations", json=split)
    assert as_json.status_code == 200, as_json.text
    as_records = client.post("/invocations", json={"dataframe_records": records})
    assert as_records.status_code == 200, as_records.text
    csv_rows = rows.assign(audio=[json.dumps(FRAMES), None])
    as_csv = client.post("/invocations", content=csv_rows.to_csv(index=False), headers={"Content-Type": "text/csv"})
    assert as_csv.status_code == 200, as_csv.text[-300:]
    assert as_csv.json() == as_records.json() == as_json.json()
    no_frames = client.post("/invocations", json={"dataframe_records": [good(audio=None)]})
    assert no_frames.json()["predictions"][0] != as_json.json()["predictions"][0]  # the frames were read

    # A frames cell over its length bound is refused before it is parsed; text that is not JSON is not frames.
    long = "[" + ", ".join(["[0.1, 0.2, 0.3]"] * 5000) + "]"
    for cell, message in [
        (long, "row 1: audio has 85000 characters of JSON frames; at most 1602 for 16 frames"),
        ("[[0.1, 0.2", "row 1: column 'audio' must hold JSON frames such as"),
        ("loud", "row 1: audio must be a list of frames of 3 numbers each"),
    ]:
        body = pd.DataFrame([good(audio=cell)]).to_csv(index=False)
        refused = client.post("/invocations", content=body, headers={"Content-Type": "text/csv"})
        assert refused.status_code == 400 and message in refused.json()["message"], refused.text[-300:]


def test_a_frames_cell_is_bounded_before_json_parses_it() -> None:
    from components.serving.values import max_frames_chars as _max_frames_chars
    from components.serving.values import sequence_frames as _frames

    read = _frames(json.dumps(FRAMES), 3, "audio", 16, Path("<in>"), 1)
    np.testing.assert_allclose(read, np.asarray(FRAMES, np.float32))
    deep = "[" * (_max_frames_chars(16, 3) + 1)
    with pytest.raises(DataError, match=r"row 2: audio has 1603 characters of JSON frames; at most 1602"):
        _frames(deep, 3, "audio", 16, Path("<in>"), 2)
    with pytest.raises(DataError, match="must hold JSON frames"):
        _frames(deep[:-1], 3, "audio", 16, Path("<in>"), 2)  # within the bound: json's RecursionError, one line
