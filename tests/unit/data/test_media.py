"""Clips to frame features: what the extraction measures, the bounds checked before and while decoding, the formats
accepted, soundtracks, the media demo's determinism, and featurize over clips (cache, errors, the pool)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.core.config import AudioClipParams, FeaturizeParams, VideoClipParams
from components.core.errors import DataError
from components.data import media
from components.data.dataset import ClipBounds, read_dataset
from components.data.demo import _audio_clip, _video_clip, generate_demo, wav_bytes
from components.data.media import ClipJob, ClipProblem, NoAudioStream, extract, extract_many
from components.features.contract import load_features
from components.features.featurize import featurize

AUDIO, VIDEO, BOUNDS = AudioClipParams(), VideoClipParams(), ClipBounds()


def wav(seconds: float, rate: int = 16000, hz: float = 200.0) -> bytes:
    return wav_bytes(0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate), rate)


def mp4_with_sound(seconds: float = 1.0, size: int = 32) -> bytes:
    """An MP4 with an H.264 picture and an AAC soundtrack (a 220 Hz tone)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=10, options={"threads": "1"})
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size), 20 * i % 255, np.uint8), format="gray")
            container.mux(video.encode(frame.reformat(format="yuv420p")))
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate = 16000
            container.mux(audio.encode(chunk))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return buffer.getvalue()


def encoded(container_format: str, codec: str) -> bytes:
    """A short clip whose one stream is in `codec`: a sound for an audio codec, a picture for a video one."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        if av.codec.Codec(codec, "w").type == "audio":
            stream = container.add_stream(codec, rate=16000, layout="mono")
            samples = (np.zeros((1, 4096)) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        else:
            stream = container.add_stream(codec, rate=10)
            stream.width = stream.height = 16
            stream.pix_fmt = "rgb24"
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def slope(values: np.ndarray) -> float:
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


@pytest.mark.parametrize("polarity", [1, -1])
def test_audio_features_follow_the_pitch_contour_and_energy_the_demo_encodes(polarity):
    rng = np.random.default_rng(0)
    frames = extract(ClipJob(_audio_clip(rng, polarity, 3.0, 1.5), "audio", AUDIO, BOUNDS))
    hop = AUDIO.sample_rate / AUDIO.frame_rate
    assert frames.shape == (1 + int(1.5 * AUDIO.sample_rate // hop), AUDIO.n_mfcc + 2)
    assert frames.dtype == np.float32 and np.isfinite(frames).all()
    log_pitch = frames[2:-2, AUDIO.n_mfcc]  # the edges' windows are half padding
    assert np.sign(slope(log_pitch)) == polarity  # the pitch glides up for a positive speaker, down for a negative


def test_a_pure_tone_has_its_pitch():
    frames = extract(ClipJob(wav(0.5, hz=200.0), "audio", AUDIO, BOUNDS))
    assert np.median(2 ** frames[:, AUDIO.n_mfcc]) == pytest.approx(200.0, rel=0.02)


def test_video_features_are_thumbnails_sampled_at_the_frame_rate():
    rng = np.random.default_rng(0)
    frames = extract(ClipJob(_video_clip(rng, 1, 2.0, 2.0), "vision", VIDEO, BOUNDS, "video"))
    assert frames.shape == (int(2.0 * VIDEO.frame_rate), VIDEO.grid**2)
    assert frames.min() >= 0.0 and frames.max() <= 1.0


def test_the_face_shows_its_expression_in_the_thumbnails():
    """Smiling and frowning faces differ where the mouth is: what a vision encoder can learn from."""
    smile, frown = (
        extract(ClipJob(_video_clip(np.random.default_rng(1), p, 3.0, 1.0), "vision", VIDEO, BOUNDS, "video"))
        for p in (1, -1)
    )
    assert np.abs(smile - frown).max() > 0.2


def test_a_videos_soundtrack_gives_audio_and_a_silent_video_has_none():
    frames = extract(ClipJob(mp4_with_sound(), "audio", AUDIO, BOUNDS, "video"))
    assert np.median(2 ** frames[2:-2, AUDIO.n_mfcc]) == pytest.approx(220.0, rel=0.03)
    silent = _video_clip(np.random.default_rng(0), 1, 1.0, 1.0)
    with pytest.raises(NoAudioStream):
        extract(ClipJob(silent, "audio", AUDIO, BOUNDS, "video"))


CLIP_PROBLEMS = [  # (id, data, kind, column, bounds, message)
    ("text", b"hello, not a clip at all", "audio", "audio", BOUNDS, "not in WAV or FLAC format"),
    # FFmpeg would follow a playlist's references to other files (or URLs): never probed, refused by its bytes.
    ("playlist", b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", "audio", "audio", BOUNDS, "not in WAV or FLAC"),
    ("video-as-audio-clip", mp4_with_sound(), "audio", "audio", BOUNDS, "not in WAV or FLAC format"),
    ("wav-as-video", wav(0.2), "vision", "video", BOUNDS, "not in MP4 or WebM format"),
    ("too-many-bytes", wav(1.0), "audio", "audio", ClipBounds(max_bytes=1000), "more than the 1000 bytes allowed"),
    ("too-long", wav(2.0), "audio", "audio", ClipBounds(max_seconds=1.5), "clip lasts 2.0 s, more than the 1.5 s"),
    ("rate-too-low", wav(0.2, rate=4000), "audio", "audio", BOUNDS, r"sample rate 4000 Hz is outside \[8000"),
    ("truncated-wav-header", wav(0.2)[:20], "audio", "audio", BOUNDS, "clip"),
    ("too-many-pixels", mp4_with_sound(size=64), "vision", "video", ClipBounds(max_pixels=1000), "64x64 pixels"),
    ("truncated-mp4", mp4_with_sound()[:400], "vision", "video", BOUNDS, "clip does not open"),
    # Only the codecs recorders write are decoded: the wheel's other decoders never see a stranger's bytes.
    (
        "audio-codec",
        encoded("wav", "adpcm_yamaha"),
        "audio",
        "audio",
        BOUNDS,
        "audio codec 'adpcm_yamaha' is not accepted; transcode the clip to one of flac",
    ),
    ("video-codec", encoded("mov", "png"), "vision", "video", BOUNDS, "video codec 'png' is not accepted; transcode"),
    (
        "no-decoder",
        wav(0.2)[:20] + b"\x34\x12" + wav(0.2)[22:],
        "audio",
        "audio",
        BOUNDS,
        "audio codec 'unknown' is not accepted",
    ),  # a WAV format tag no decoder here reads
]


@pytest.mark.parametrize(
    ("data", "kind", "column", "bounds", "message"), [c[1:] for c in CLIP_PROBLEMS], ids=[c[0] for c in CLIP_PROBLEMS]
)
def test_a_bad_clip_is_a_clip_problem_naming_the_rule(data, kind, column, bounds, message):
    settings = AUDIO if kind == "audio" else VIDEO
    with pytest.raises(ClipProblem, match=message):
        extract(ClipJob(data, kind, settings, bounds, column))


@pytest.mark.parametrize("kind", ["audio", "vision"])
def test_a_clip_whose_header_states_no_duration_is_bounded_while_decoding(kind, monkeypatch):
    """Streamed WebM, for one, states no duration: decoding stops once past the bound."""
    monkeypatch.setattr(media, "_header_seconds", lambda container, stream: None)
    settings, column = (AUDIO, "audio") if kind == "audio" else (VIDEO, "video")
    data = wav(3.0) if kind == "audio" else mp4_with_sound(seconds=3.0)
    with pytest.raises(ClipProblem, match="decodes to more than the 1 s allowed"):
        extract(ClipJob(data, kind, settings, ClipBounds(max_seconds=1.0), column))


def test_the_media_demo_is_byte_identical_for_the_same_seed(tmp_path):
    def digest(root: Path) -> str:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(str(p.relative_to(root)).encode() + p.read_bytes() for p in files)).hexdigest()

    first = generate_demo(tmp_path / "a", size=30, seed=4, media=True)
    assert digest(first) == digest(generate_demo(tmp_path / "b", size=30, seed=4, media=True))
    # Another process, with other threads and allocations behind it: the encoder decides nothing by itself.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from components.data.demo import generate_demo; "
            "generate_demo(sys.argv[1], size=30, seed=4, media=True)",
            str(tmp_path / "d"),
        ],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert digest(first) == digest(tmp_path / "d")
    assert digest(first) != digest(generate_demo(tmp_path / "c", size=30, seed=5, media=True))
    dataset = read_dataset(first)
    assert set(dataset.manifest.modalities.clips) == {"audio", "vision"} and not dataset.sequences
    assert all(p is not None and p.suffix == ".wav" for p in dataset.clip_files("audio"))
    assert all(p is not None and p.suffix == ".mp4" for p in dataset.clip_files("vision"))


@pytest.fixture(scope="module")
def media_demo(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("media") / "raw", size=30, seed=2, media=True)


def test_featurize_extracts_clips_records_how_and_keeps_unchanged_features(media_demo, tmp_path, tiny_text_model):
    params = FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), workers=1)
    result = featurize(media_demo, params, progress=False)
    tensors, state = load_features(result.out)
    assert state.audio.clips == AUDIO and state.vision.clips == VIDEO
    assert tensors["audio.features"].shape == (30, state.audio.max_len, AUDIO.n_mfcc + 2)
    assert tensors["vision.features"].shape == (30, state.vision.max_len, VIDEO.grid**2)
    assert tensors["audio.present"].all() and tensors["vision.mask"].any(1).all()
    assert featurize(media_demo, params, progress=False).cached
    # Extraction settings are part of the key where clips are extracted.
    coarser = params.model_copy(update={"video_clips": VideoClipParams(grid=8)})
    again = featurize(media_demo, coarser, progress=False)
    assert not again.cached and again.state.vision.dim == 64


def test_a_broken_clip_stops_featurize_naming_the_file_and_sample(media_demo, tmp_path, tiny_text_model):
    import shutil

    raw = Path(shutil.copytree(media_demo, tmp_path / "raw"))
    (raw / "video" / "demo-00007.mp4").write_bytes(b"not a video")
    params = FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), workers=1)
    with pytest.raises(DataError, match=r"demo-00007\.mp4 \(id demo-00007\): not in MP4 or WebM format"):
        featurize(raw, params, progress=False)
    assert not (tmp_path / "features").exists()


def test_the_process_pool_extracts_what_one_process_does(media_demo, monkeypatch):
    dataset = read_dataset(media_demo)
    jobs = [ClipJob(p, "audio", AUDIO, BOUNDS) for p in dataset.clip_files("audio")[:6]]
    jobs += [ClipJob(p, "vision", VIDEO, BOUNDS, "video") for p in dataset.clip_files("vision")[:6]]
    jobs.append(ClipJob(b"broken", "audio", AUDIO, BOUNDS))
    alone = extract_many(jobs, workers=1)
    monkeypatch.setattr(media, "POOL_MIN_CLIPS", 0)
    pooled = extract_many(jobs, workers=2)
    for a, b in zip(alone[:-1], pooled[:-1], strict=True):
        np.testing.assert_array_equal(a, b)  # one BLAS thread either way: `featurize.workers` is speed only
    assert isinstance(pooled[-1], ClipProblem) and str(pooled[-1]) == str(alone[-1])


def test_a_video_is_bounded_by_its_frame_count_whatever_its_timestamps(monkeypatch):
    """Timestamps can stand still or run backwards: at most max_seconds x MAX_FPS frames are decoded."""
    monkeypatch.setattr(media, "MAX_FPS", 2)  # 1 s allows 3 frames; the clip has 10
    clip = _video_clip(np.random.default_rng(0), 1, 2.0, 1.0)
    with pytest.raises(ClipProblem, match="decodes to more than the 1 s allowed"):
        extract(ClipJob(clip, "vision", VIDEO, ClipBounds(max_seconds=1.0), "video"))


def test_a_clip_file_is_read_only_when_regular(tmp_path):
    import os

    fifo = tmp_path / "clip.wav"
    os.mkfifo(fifo)  # would state size 0 and block forever
    with pytest.raises(ClipProblem, match="not a regular file"):
        extract(ClipJob(fifo, "audio", AUDIO, BOUNDS))


def decaying_wav(seconds: float, rate: int = 16000) -> bytes:
    """A tone that only fades: its loudest frame is among the first, so the MFCCs' 80 dB floor is the same whether
    the clip is decoded whole or cut."""
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes(0.5 * np.exp(-t / 2) * np.sin(2 * np.pi * (180 + 40 * t) * t), rate)


@pytest.mark.parametrize(
    ("kind", "column", "clip", "kept"),
    [
        ("audio", "audio", lambda: decaying_wav(8.0), 40),  # 201 frames; 40 kept, 1.6 s
        ("audio", "audio", lambda: decaying_wav(8.0), 1),
        ("vision", "video", lambda: _video_clip(np.random.default_rng(3), 1, 1.0, 4.0), 7),  # 20 frames; 7 kept
        ("audio", "video", lambda: mp4_with_sound(seconds=4.0), 30),  # a soundtrack, cut as a sound file is
    ],
    ids=["audio", "audio-one-frame", "video", "soundtrack"],
)
def test_a_clip_longer_than_the_frames_kept_is_extracted_only_that_far(kind, column, clip, kept):
    """featurize keeps max_len frames of a clip: extraction stops there, and those frames are the whole clip's."""
    data, settings = clip(), (AUDIO if kind == "audio" else VIDEO)
    whole = extract(ClipJob(data, kind, settings, BOUNDS, column))
    cut = extract(ClipJob(data, kind, settings, BOUNDS, column, max_frames=kept))
    assert len(whole) > kept and cut.shape == (kept, whole.shape[1])
    np.testing.assert_array_equal(cut, whole[:kept])


@pytest.mark.parametrize("kind", ["audio", "vision"])
def test_a_clip_within_the_frames_kept_gives_the_same_bytes(kind):
    settings, column = (AUDIO, "audio") if kind == "audio" else (VIDEO, "video")
    data = wav(2.0) if kind == "audio" else _video_clip(np.random.default_rng(0), 1, 2.0, 1.0)
    whole = extract(ClipJob(data, kind, settings, BOUNDS, column))
    for kept in (len(whole), len(whole) + 1, 500):
        assert extract(ClipJob(data, kind, settings, BOUNDS, column, max_frames=kept)).tobytes() == whole.tobytes()


def test_decoding_stops_once_the_frames_kept_are_out(monkeypatch):
    """Past the cut nothing is decoded: a clip that decodes to more than its bounds allow (here: more frames than
    1 s at MAX_FPS, as a video with standing timestamps would) is not decoded that far."""
    assert media.decode_audio(wav(6.0), 16000, BOUNDS, max_samples=12_345).shape == (12_345,)
    monkeypatch.setattr(media, "MAX_FPS", 2)  # 1 s allows 3 decoded frames; the clip has 10, 2 sampled in 3
    clip = _video_clip(np.random.default_rng(0), 1, 2.0, 1.0)
    short = ClipBounds(max_seconds=1.0)
    with pytest.raises(ClipProblem, match="decodes to more than the 1 s allowed"):
        extract(ClipJob(clip, "vision", VIDEO, short, "video"))
    assert extract(ClipJob(clip, "vision", VIDEO, short, "video", max_frames=2)).shape == (2, VIDEO.grid**2)


def test_featurize_asks_for_no_more_frames_than_it_keeps(media_demo, tmp_path, tiny_text_model, monkeypatch):
    asked = []

    def stop(jobs, **kwargs):
        asked.extend({(job.kind, job.max_frames) for job in jobs})
        raise KeyboardInterrupt  # enough seen: no need to extract

    monkeypatch.setattr(media, "extract_many", stop)
    manifest = read_dataset(media_demo).manifest
    params = FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), workers=1)
    with pytest.raises(KeyboardInterrupt):
        featurize(media_demo, params, progress=False)
    assert sorted(asked) == [
        ("audio", manifest.modalities.audio.max_len),
        ("vision", manifest.modalities.vision.max_len),
    ]
    asked.clear()
    with pytest.raises(KeyboardInterrupt):
        featurize(media_demo, params.model_copy(update={"sequence_max_len": 9}), progress=False)
    assert sorted(asked) == [("audio", 9), ("vision", 9)]
    assert not (tmp_path / "features").exists()
