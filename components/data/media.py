"""Audio and video clips to frame features: the one extraction featurize and the served model share.

Decoding is PyAV's (FFmpeg, with its codecs inside the wheel). A clip is bounded before anything is decoded: its
bytes, then the container header's duration, sample rate and frame size; decoding stops as soon as it yields more
than the allowed seconds, since a header can lie. Only the demuxers of the accepted formats are ever used, picked
from the file's leading bytes: FFmpeg left to probe would also open playlists (HLS) that reference other files.

Audio: librosa's MFCCs, pitch (YIN) and RMS energy per frame: the prosody (pitch contour, loudness) and the
spectral envelope that sentiment models use. openSMILE's eGeMAPS would be the field's other standard, but its
licence forbids commercial use without a paid one; librosa is ISC. Video: frames sampled at a fixed rate, each the
grey center square as a small thumbnail (`VideoClipParams`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from components.core.config import AudioClipParams, VideoClipParams
from components.data.dataset import ClipBounds

__all__ = [
    "EXTRACTOR_VERSION",
    "MAX_FPS",
    "POOL_MIN_CLIPS",
    "ClipJob",
    "ClipProblem",
    "Kind",
    "NoAudioStream",
    "check_clip",
    "decode_audio",
    "extract",
    "extract_many",
    "read_clip",
    "warm_up",
]

Kind = Literal["audio", "vision"]
# Leading bytes -> FFmpeg demuxer: the formats a clip may be in, and nothing else.
_AUDIO_FORMATS = {"wav": "WAV", "flac": "FLAC"}
_VIDEO_FORMATS = {"mov": "MP4", "matroska": "WebM"}
# Below this many clips one process is faster: a pool first starts a fork server that imports the libraries (~5 s).
POOL_MIN_CLIPS = 64
# Bump when the features of the same clip and settings change (featurize's content key). 2: a clip longer than the
# frames kept is decoded only that far, which can move the MFCCs' 80 dB floor (set by the loudest kept frame).
EXTRACTOR_VERSION = "2"
# Audio decoded past the last frame kept: its window, and frames enough that the feature code's numerics (BLAS and
# FFT batches) treat the kept frames as they would in the whole clip.
AUDIO_SPARE_FRAMES = 32
MAX_FPS = 120  # decoded video frames allowed per second of max_seconds, whatever the timestamps say
# The codecs a stream may be in, by FFmpeg's codec name: what microphones, recorders, phones and cameras write. Any
# other decoder in the wheel (hundreds, some rarely exercised) never sees a stranger's bytes.
_PCM = ("u8", "s16le", "s16be", "s24le", "s24be", "s32le", "s32be", "f32le", "f32be", "f64le", "f64be", "alaw", "mulaw")
AUDIO_CODECS = (
    *(f"pcm_{kind}" for kind in _PCM),
    *("flac", "alac", "aac", "mp3", "opus", "vorbis", "ac3", "eac3", "amr_nb", "amr_wb"),
    *("adpcm_ima_wav", "adpcm_ms", "gsm_ms"),  # voice recorders' WAVs
)
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "h263", "mjpeg", "prores")


class ClipProblem(ValueError):
    """Why bytes are not a usable clip; the message names the rule and never echoes the bytes."""


class NoAudioStream(ClipProblem):
    """A clip without sound: a video's missing soundtrack may mean "no audio" rather than a broken file."""


@dataclass(frozen=True)
class ClipJob:
    """One clip to extract: a file or its bytes, and what to extract from it."""

    source: Path | bytes
    kind: Kind
    settings: AudioClipParams | VideoClipParams
    bounds: ClipBounds
    column: Literal["audio", "video"] = "audio"  # what the source is: an audio clip, or a video (its soundtrack)
    # Frames kept (the sequence's max_len): decoding stops once they are extracted, the rest would be cut anyway.
    # None: the whole clip.
    max_frames: int | None = None


def extract(job: ClipJob) -> np.ndarray:
    """Frame features [T, D] float32 of one clip (T at most `job.max_frames`), or ClipProblem."""
    data = read_clip(job.source, job.bounds.max_bytes)
    if job.kind == "audio":
        formats = _AUDIO_FORMATS if job.column == "audio" else _VIDEO_FORMATS
        settings, samples = job.settings, None
        assert isinstance(settings, AudioClipParams)  # an audio job carries audio settings
        if job.max_frames is not None:  # up to the last kept frame's window, and spare frames
            samples = (job.max_frames + AUDIO_SPARE_FRAMES) * _hop(settings) + settings.window
        signal = decode_audio(data, settings.sample_rate, job.bounds, formats, max_samples=samples)
        return audio_features(signal, settings)[: job.max_frames]
    assert isinstance(job.settings, VideoClipParams)  # a vision job carries video settings
    return video_features(data, job.settings, job.bounds, max_frames=job.max_frames)


def extract_many(
    jobs: Sequence[ClipJob], *, workers: int | None = None, progress: bool = False, desc: str = "clips"
) -> list[np.ndarray | ClipProblem]:
    """`extract` over `jobs`, in `workers` processes (default: one per core), in order; a clip that cannot be used
    gives its ClipProblem in its place, so the caller names the sample."""
    from tqdm.auto import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if len(jobs) < POOL_MIN_CLIPS:
        workers = 1
    bar = tqdm(total=len(jobs), desc=desc, unit="clip", disable=None if progress else True, leave=False)
    with bar:
        if workers == 1:
            from threadpoolctl import threadpool_limits

            results = []
            with threadpool_limits(1):  # as each pool worker: the same sums, so `workers` changes no feature
                for job in jobs:
                    results.append(_safe_extract(job))
                    bar.update()
            return results
        chunk = max(1, min(32, len(jobs) // (workers * 4)))
        with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_one_blas_thread) as pool:
            results = []
            for result in pool.map(_safe_extract, jobs, chunksize=chunk):
                results.append(result)
                bar.update()
            return results


def _pool_context():
    """Workers forked from a fork server that has imported and warmed the extraction libraries once
    (`components.data.clip_worker`), so no worker pays their seconds of imports again. Not a plain fork: the caller
    may hold torch's thread pools, which a forked child would inherit locked. Spawn where there is no fork server
    (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["components.data.clip_worker"])
    return context


def _one_blas_thread() -> None:
    """Each pool worker's start: the fork server's preload did this already, but multiprocessing ignores a preload
    that fails to import, and features must not depend on it."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def warm_up() -> None:
    """Import and run the audio path once: librosa's imports and first calls take seconds, better paid at load."""
    audio_features(np.zeros(4096, np.float32), AudioClipParams())


def _safe_extract(job: ClipJob) -> np.ndarray | ClipProblem:
    try:
        return extract(job)
    except ClipProblem as e:
        return e


def read_clip(source: Path | bytes, max_bytes: int) -> bytes:
    """The clip's bytes: at most `max_bytes`, and from a file only when it is a regular one (a FIFO or a device
    would state size 0 and never end)."""
    if not isinstance(source, bytes):
        try:
            if not source.is_file():
                raise ClipProblem("not a regular file")
            with source.open("rb") as f:
                source = f.read(max_bytes + 1)  # one byte over tells "too big" without reading the rest
        except OSError as e:
            raise ClipProblem(f"cannot read the clip: {e.strerror or e}") from None
    if len(source) > max_bytes:
        raise ClipProblem(f"clip is more than the {max_bytes} bytes allowed")
    return source


def sniff(data: bytes) -> str | None:
    """The FFmpeg demuxer for `data` by its leading bytes, or None when it is none of WAV, FLAC, MP4, WebM."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[4:8] == b"ftyp":
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    return None


def _open(data: bytes, formats: dict[str, str]):
    import av

    demuxer = sniff(data)
    if demuxer not in formats:
        raise ClipProblem(f"not in {' or '.join(formats.values())} format")
    try:  # metadata (tags) as text with replacement characters: a Latin-1 tag is no reason to refuse a clip
        return av.open(io.BytesIO(data), format=demuxer, metadata_errors="replace")
    except (av.FFmpegError, ValueError) as e:
        raise ClipProblem(f"clip does not open ({_reason(e)})") from None


def _reason(error: Exception) -> str:
    """FFmpeg's words for what went wrong, without its error number or the (nameless) file."""
    return getattr(error, "strerror", None) or type(error).__name__


def _header_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def check_clip(data: bytes, column: str, bounds: ClipBounds, *, soundtrack: bool = False) -> None:
    """ClipProblem unless `data` is a usable clip for the `audio` or `video` column: the right format, within
    `bounds`, and decoding to the end; a video whose `soundtrack` gives the sample's audio must have one that does.
    Decoding only: features are featurize's."""
    if column == "audio":
        decode_audio(data, 16000, bounds)
        return
    _decode_frames(data, 1.0, bounds, lambda frame: None)
    if soundtrack:  # NoAudioStream for a silent video: the caller knows whether the sample may lack audio
        decode_audio(data, 16000, bounds, _VIDEO_FORMATS)


def decode_audio(
    data: bytes,
    sample_rate: int,
    bounds: ClipBounds,
    formats: dict[str, str] = _AUDIO_FORMATS,
    *,
    max_samples: int | None = None,
) -> np.ndarray:
    """The first audio stream of `data` as mono float32 at `sample_rate`: a WAV or FLAC file, or with the video
    `formats` an MP4/WebM video's soundtrack. With `max_samples`, decoding stops once that many are out, and the
    signal is their first `max_samples` (the same ones, whatever the codec's frame size)."""
    import av

    with _open(data, formats) as container:
        if not container.streams.audio:
            raise NoAudioStream("clip has no audio stream")
        stream = _stream(container.streams.audio, AUDIO_CODECS, "audio")
        if not bounds.min_sample_rate <= (stream.rate or 0) <= bounds.max_sample_rate:
            raise ClipProblem(
                f"audio sample rate {stream.rate} Hz is outside [{bounds.min_sample_rate}, {bounds.max_sample_rate}]"
            )
        _check_seconds(_header_seconds(container, stream), bounds)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        limit = int(bounds.max_seconds * sample_rate) + sample_rate  # a second of slack for codec padding
        chunks, total = [], 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if total > limit:
                    raise ClipProblem(f"clip decodes to more than the {bounds.max_seconds:g} s allowed")
                if max_samples is not None and total >= max_samples:
                    break
            else:  # decoded to the end: what the resampler still holds
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except ClipProblem:
            raise
        except (av.FFmpegError, ValueError) as e:  # ValueError: the resampler, when the rate or layout changes
            raise ClipProblem(f"audio does not decode ({_reason(e)})") from None
    if not chunks or not sum(c.size for c in chunks):
        raise ClipProblem("clip has no audio samples")
    signal = np.concatenate(chunks)[:max_samples].astype(np.float32, copy=False)
    if not np.isfinite(signal).all():  # float WAVs can hold NaN or infinity
        raise ClipProblem("audio has NaN or infinite samples")
    return signal


def _stream(streams, allowed: tuple[str, ...], kind: str):
    """The first of `streams` in an `allowed` codec (a phone's video may hold a track no decoder here reads before
    its AAC one); else a ClipProblem naming the codecs found."""
    found = []
    for stream in streams:
        context = stream.codec_context  # None: the wheel has no decoder for this codec
        codec = context.codec.canonical_name if context is not None else "unknown"
        if codec in allowed:
            return stream
        found.append(codec)
    raise ClipProblem(
        f"{kind} codec {' or '.join(repr(c) for c in found)} is not accepted; transcode the clip to "
        f"one of {', '.join(c for c in allowed if not c.startswith('pcm_'))} or PCM"
    )


def _check_seconds(seconds: float | None, bounds: ClipBounds) -> None:
    if seconds is not None and seconds > bounds.max_seconds:
        raise ClipProblem(f"clip lasts {seconds:.1f} s, more than the {bounds.max_seconds:g} s allowed")


def audio_features(signal: np.ndarray, settings: AudioClipParams) -> np.ndarray:
    """Per frame: `n_mfcc` MFCCs, log2 of the YIN pitch (Hz) and RMS energy in dB; [T, n_mfcc + 2] float32 with
    T = 1 + samples // hop (frames centered on hop multiples, as librosa frames them)."""
    import librosa

    sr, n_fft, hop = settings.sample_rate, settings.window, _hop(settings)
    if signal.size < n_fft:  # a clip shorter than one window is one frame of it
        signal = np.pad(signal, (0, n_fft - signal.size))
    mfcc = librosa.feature.mfcc(y=signal, sr=sr, n_mfcc=settings.n_mfcc, n_fft=n_fft, hop_length=hop)
    pitch = librosa.yin(signal, fmin=settings.fmin, fmax=settings.fmax, sr=sr, frame_length=n_fft, hop_length=hop)
    rms = librosa.feature.rms(y=signal, frame_length=n_fft, hop_length=hop)[0]
    return np.column_stack([mfcc.T, np.log2(pitch), 20 * np.log10(rms + 1e-5)]).astype(np.float32)


def _hop(settings: AudioClipParams) -> int:
    """Samples between the centers of two audio frames."""
    return max(1, round(settings.sample_rate / settings.frame_rate))


def video_features(
    data: bytes, settings: VideoClipParams, bounds: ClipBounds, *, max_frames: int | None = None
) -> np.ndarray:
    """Frames sampled every 1 / `frame_rate` s, each the grey center square as grid x grid values in [0, 1]:
    [T, grid * grid] float32; the first `max_frames` of them when given (nothing after them is decoded)."""
    frames = _decode_frames(
        data, settings.frame_rate, bounds, lambda frame: _thumbnail(frame, settings.grid), keep=max_frames
    )
    return np.stack(frames)


def _decode_frames(data: bytes, frame_rate: float, bounds: ClipBounds, sample, *, keep: int | None = None) -> list:
    """`sample(frame)` for the frames due every 1 / `frame_rate` s of the first video stream, decoding them all, or
    until `keep` are sampled."""
    import av

    step = 1.0 / frame_rate
    with _open(data, _VIDEO_FORMATS) as container:
        if not container.streams.video:
            raise ClipProblem("clip has no video stream")
        stream = _stream(container.streams.video, VIDEO_CODECS, "video")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > bounds.max_pixels:
            raise ClipProblem(f"video is {width}x{height} pixels, more than the {bounds.max_pixels} allowed")
        _check_seconds(_header_seconds(container, stream), bounds)
        # The decoder itself refuses larger frames (the stream may change its size after the header), and decodes
        # on one thread: a worker is one core's worth.
        stream.codec_context.options = {"max_pixels": str(bounds.max_pixels)}
        stream.codec_context.thread_count = 1
        max_frames = int(bounds.max_seconds * MAX_FPS) + 1  # timestamps can stand still or run backwards
        sampled, due, start = [], 0.0, None
        try:
            for count, frame in enumerate(container.decode(stream), start=1):
                t = float(frame.time) if frame.time is not None else due
                start = t if start is None else start
                t -= start  # from the first frame: a clip cut from a longer recording starts late
                if t > bounds.max_seconds + step or count > max_frames:
                    raise ClipProblem(f"clip decodes to more than the {bounds.max_seconds:g} s allowed")
                if t + 1e-6 < due:
                    continue
                sampled.append(sample(frame))
                while due <= t + 1e-6:
                    due += step
                if keep is not None and len(sampled) >= keep:
                    break
        except ClipProblem:
            raise
        except (av.FFmpegError, ValueError) as e:
            raise ClipProblem(f"video does not decode ({_reason(e)})") from None
    if not sampled:
        raise ClipProblem("clip has no video frames")
    return sampled


def _thumbnail(frame, grid: int) -> np.ndarray:
    """The grey center square of `frame`, scaled to grid x grid by FFmpeg (area averaging), flattened in [0, 1]."""
    w, h = frame.width, frame.height
    scale = grid / min(w, h)
    scaled_w, scaled_h = max(grid, round(w * scale)), max(grid, round(h * scale))
    grey = frame.reformat(width=scaled_w, height=scaled_h, format="gray", interpolation="AREA").to_ndarray()
    top, left = (scaled_h - grid) // 2, (scaled_w - grid) // 2
    return (grey[top : top + grid, left : left + grid].astype(np.float32) / 255.0).reshape(-1)
