"""A deterministic synthetic multimodal sentiment dataset (`msa data demo`), built so that fusion matters.

Every sample has a hidden polarity (+1, -1, or neutral with label 0) and a strength in [0.4, 3.0]; the label is
polarity x strength, rounded to 0.2 like averaged annotator scores. Each modality either *carries* the polarity
or shows a neutral pattern:

- text: 40% explicit ("the acting was brilliant"), whose adjective also tells the strength; 30% ambiguous
  ("the plot was certainly something"); 30% sarcasm-shaped ("oh great, the ending was just wonderful"), used
  alike for sarcastic negatives and sincere positives, so the words alone cannot give the sign;
- image (32x32 PNG): a face whose mouth curves up or down on a warm or cold background, or a flat mouth on grey;
- audio (8 prosody-like features per frame): a rising or falling pitch contour with more or less energy;
- vision (12 action-unit-like features per frame): smile (AU6, AU12) or frown (AU4, AU15) intensities.

With `media`, audio and vision are clips instead of feature arrays, so the raw path (decoding, extraction) is
exercised: a WAV of a voiced sound whose pitch rises or falls and whose energy swells or drops, and an MP4 of a
face whose mouth curves up or down and whose brows rise or knit while the expression shows.

When the text is explicit, each other modality carries the polarity with probability 0.35; otherwise with 0.55,
and at least one does. So text alone can get about 70% of the signs, each other modality about 75%, and only
their combination gets nearly all of them. Noise on every modality keeps it from being trivial.

The same (size, seed) gives byte-identical files: one seeded generator, no sets or dict-order dependence, PNG and
parquet without timestamps. The data is synthetic and says so in its manifest.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from components.data.dataset import (
    ImageSpec,
    Manifest,
    Modalities,
    RegressionLabel,
    SequenceArray,
    SequenceSpec,
    TextSpec,
    carve_splits,
    write_dataset,
)

__all__ = ["MEDIA_VERSION", "VERSION", "generate_demo", "wav_bytes"]

# Bump whenever the clips' bytes change. The MP4s carry the x264 and FFmpeg of the `av` wheel (its version is pinned in
# constraints.txt), so byte identity holds for that version, as the parquet files' does for pyarrow's.
MEDIA_VERSION = "1"
SAMPLE_RATE, VIDEO_FPS, VIDEO_SIZE = 16000, 10, 64
CLIP_SECONDS = (1.0, 2.0)

VERSION = "1"  # bump whenever the generator's output changes
IMAGE_SIZE = 32
MAX_LEN, MIN_LEN = 32, 12
AUDIO_DIM, VISION_DIM = 8, 12
P_NEUTRAL = 0.08
TEXT_KINDS, TEXT_KIND_P = ("explicit", "ambiguous", "sarcastic"), (0.4, 0.3, 0.3)
P_CARRY_IF_EXPLICIT, P_CARRY_OTHERWISE = 0.35, 0.55
OTHER_MODALITIES = ("image", "audio", "vision")

TOPICS = (
    "the movie",
    "the plot",
    "the acting",
    "the soundtrack",
    "the ending",
    "the dialogue",
    "the main character",
    "the set design",
    "the pacing",
    "the cinematography",
    "the script",
    "the villain",
)
# Adjectives by strength band (weak, medium, strong), so explicit text also tells how strong the feeling is.
POSITIVE = (
    ("decent", "fine", "pleasant", "okay"),
    ("good", "enjoyable", "nice", "fun"),
    ("amazing", "brilliant", "fantastic", "wonderful", "outstanding"),
)
NEGATIVE = (
    ("a bit dull", "somewhat flat", "mediocre", "not great"),
    ("bad", "boring", "weak", "disappointing"),
    ("terrible", "awful", "painful", "horrible", "a complete mess"),
)
EXPLICIT = ("{topic} was {adj}", "I thought {topic} was {adj}", "honestly {topic} felt {adj}", "{topic} is {adj}")
AMBIGUOUS = (
    "{topic} was certainly something",
    "well {topic} was what it was",
    "I did not expect {topic} to be like that",
    "so {topic} happened",
    "{topic} was exactly what I expected",
    "let me tell you about {topic}",
)
SARCASTIC = ("oh great, {topic} was just {adj}", "yeah, {topic} was {adj}, sure", "wow, {topic} was so {adj}")
NEUTRAL = ("{topic} was about two hours long", "{topic} was in english", "I saw {topic} on a Tuesday")
FILLERS = (
    "I watched it last weekend",
    "my friend recommended it",
    "we went to the late showing",
    "I saw the trailer first",
    "it came out last year",
    "the cinema was half empty",
)


def generate_demo(out: str | Path, size: int = 1000, seed: int = 0, *, media: bool = False) -> Path:
    """Write the synthetic dataset to `out` (atomically) and return the path; with `media`, audio and vision are
    WAV and MP4 clips under audio/ and video/."""
    if size < 30:
        raise ValueError(f"demo size must be at least 30 so that every split has samples, got {size}")
    rng = np.random.default_rng(seed)
    ids = [f"demo-{i:05d}" for i in range(size)]
    draws = _draw_samples(rng, ids, media)
    samples = pd.DataFrame(
        {
            "id": ids,
            "split": carve_splits(size, seed=seed, fractions={"valid": 0.15, "test": 0.15}),
            "text": draws.texts,
            "label": np.asarray(draws.labels, dtype=np.float64),
            "image": list(draws.images),
            "seq_index": pd.array([None] * size if media else range(size), dtype="Int64"),
        }
    )
    if media:
        samples["audio"] = [name for name in draws.clips if name.startswith("audio/")]
        samples["video"] = [name for name in draws.clips if name.startswith("video/")]
        # Frames kept: the longest clip at featurize's default rates (audio 25 frames a second, video 5).
        audio_spec = SequenceSpec(source="clips", max_len=int(CLIP_SECONDS[1] * 25) + 1)
        vision_spec = SequenceSpec(source="clips", max_len=int(CLIP_SECONDS[1] * 5) + 1)
        signals, sequences = "WAV clips of pitch and energy and MP4 clips of faces", {}
    else:
        # Audio and vision come from the same clip, so they share its length.
        vision_len = draws.vision.lengths
        vision_len[:] = draws.audio.lengths
        draws.vision.features[np.arange(MAX_LEN)[None, :] >= vision_len[:, None]] = 0.0
        audio_spec = SequenceSpec(dim=AUDIO_DIM, max_len=MAX_LEN)
        vision_spec = SequenceSpec(dim=VISION_DIM, max_len=MAX_LEN)
        signals = "prosody/action-unit sequences"
        sequences = {"audio": draws.audio, "vision": draws.vision}
    manifest = _manifest(size, seed, media, signals, audio_spec, vision_spec)
    return write_dataset(out, manifest, samples, sequences, draws.images, draws.clips)


@dataclass(frozen=True)
class _Draws:
    """Every sample's content as the seeded generator drew it, in sample order. Without media, audio and vision are
    the padded feature arrays; with media, `clips` (file name -> bytes) holds them and the arrays stay zeros."""

    texts: list[str]
    labels: list[float]
    images: dict[str, bytes]
    clips: dict[str, bytes]
    audio: SequenceArray
    vision: SequenceArray


def _draw_samples(rng: np.random.Generator, ids: list[str], media: bool) -> _Draws:
    size = len(ids)
    audio = SequenceArray(np.zeros((size, MAX_LEN, AUDIO_DIM), dtype=np.float32), np.zeros(size, dtype=np.int64))
    vision = SequenceArray(np.zeros((size, MAX_LEN, VISION_DIM), dtype=np.float32), np.zeros(size, dtype=np.int64))
    draws = _Draws(texts=[], labels=[], images={}, clips={}, audio=audio, vision=vision)
    for i, sample_id in enumerate(ids):
        neutral = rng.random() < P_NEUTRAL
        polarity = 0 if neutral else int(rng.choice((-1, 1)))
        strength = float(np.round(rng.uniform(0.4, 3.0) * 5) / 5)
        kind = "neutral" if neutral else str(rng.choice(TEXT_KINDS, p=TEXT_KIND_P))
        carried = _carrying_modalities(rng, kind)

        draws.texts.append(_text(rng, kind, polarity, strength))
        draws.labels.append(round(polarity * strength, 1) if polarity else 0.0)
        shown = {m: (polarity if m in carried else 0) for m in OTHER_MODALITIES}
        draws.images[f"images/{sample_id}.png"] = _image(rng, shown["image"], strength)
        if media:
            seconds = float(np.round(rng.uniform(*CLIP_SECONDS), 1))
            draws.clips[f"audio/{sample_id}.wav"] = _audio_clip(rng, shown["audio"], strength, seconds)
            draws.clips[f"video/{sample_id}.mp4"] = _video_clip(rng, shown["vision"], strength, seconds)
        else:
            audio.lengths[i] = _audio(rng, shown["audio"], strength, audio.features[i])
            vision.lengths[i] = _vision(rng, shown["vision"], strength, vision.features[i])
    return draws


def _manifest(
    size: int, seed: int, media: bool, signals: str, audio_spec: SequenceSpec, vision_spec: SequenceSpec
) -> Manifest:
    """The manifest of a demo dataset: synthetic, saying so and how it was made."""
    return Manifest(
        name="msa-demo-media" if media else "msa-demo",
        version=f"{VERSION}.{MEDIA_VERSION}" if media else VERSION,
        synthetic=True,
        description=(
            f"SYNTHETIC multimodal sentiment data from `msa data demo{' --media' if media else ''} --size {size} "
            f"--seed {seed}`: movie-review utterances, face-like images and {signals} whose labels need the "
            "modalities together. Not real data; for demos and tests only."
        ),
        source="msa data demo",  # the command, not a file: a file moves, and the dataset's bytes would with it
        label=RegressionLabel(min=-3.0, max=3.0),
        modalities=Modalities(
            text=TextSpec(),
            image=ImageSpec(height=IMAGE_SIZE, width=IMAGE_SIZE),
            audio=audio_spec,
            vision=vision_spec,
        ),
    )


def _audio_clip(rng: np.random.Generator, polarity: int, strength: float, seconds: float) -> bytes:
    """16-bit mono WAV: a voiced sound (five harmonics, four syllables a second) whose pitch glides up for a
    positive speaker and down for a negative one, louder or quieter, with breath noise."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tau = np.linspace(-1.0, 1.0, n)
    base = rng.uniform(110.0, 220.0)
    slope = polarity * strength * 0.12 if polarity else rng.normal(0.0, 0.02)
    f0 = base * 2.0 ** (slope * tau)  # up to a third of an octave each way
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, np.pi)))
    gain_db = polarity * strength * 2.5 + rng.normal(0.0, 1.5)
    signal = 0.12 * 10 ** (gain_db / 20) * voice * syllables + rng.normal(0.0, 0.004, n)
    return wav_bytes(signal, SAMPLE_RATE)


def wav_bytes(signal: np.ndarray, rate: int) -> bytes:
    """`signal` (floats in [-1, 1]) as a 16-bit mono WAV file."""
    pcm = np.clip(np.asarray(signal) * 32767, -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def _video_clip(rng: np.random.Generator, polarity: int, strength: float, seconds: float) -> bytes:
    """An H.264 MP4 of a grey face that smiles with raised brows (positive) or frowns with knitted brows
    (negative) during a window of the clip, and keeps a flat mouth otherwise; it drifts a little."""
    import av

    n = int(seconds * VIDEO_FPS)
    start = int(rng.integers(0, max(1, n // 2)))
    window = range(start, start + max(3, n // 2))
    cx, cy = (VIDEO_SIZE // 2 + int(v) for v in rng.integers(-4, 5, size=2))
    drift = rng.normal(0.0, 0.6, size=(n, 2)).cumsum(0).round().astype(int)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        # A constant quantizer: x264's rate control (CRF) gave other bytes for the same frames from one call to the
        # next, and a dataset version must hash the same for the same seed wherever it is made.
        stream = container.add_stream("libx264", rate=VIDEO_FPS, options={"threads": "1", "preset": "fast", "qp": "26"})
        stream.codec_context.thread_count = 1
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            shown = polarity if i in window else 0
            face = _face(cx + drift[i, 0], cy + drift[i, 1], shown, strength)
            noisy = np.asarray(face, np.float64) + rng.normal(0.0, 6.0, size=(VIDEO_SIZE, VIDEO_SIZE))
            frame = av.VideoFrame.from_ndarray(np.clip(noisy, 0, 255).astype(np.uint8), format="gray")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i  # timestamps pinned, not left to the encoder to guess
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _face(cx: int, cy: int, polarity: int, strength: float) -> Image.Image:
    img = Image.new("L", (VIDEO_SIZE, VIDEO_SIZE), 40)
    draw = ImageDraw.Draw(img)
    draw.ellipse([cx - 22, cy - 26, cx + 22, cy + 26], fill=170)
    ink, bend = 20, round(2 + 2.5 * strength)
    for side in (-1, 1):
        ex = cx + side * 9
        draw.ellipse([ex - 3, cy - 9, ex + 3, cy - 4], fill=ink)
        # Brows: raised and level when positive; knitted (inner end low) when negative.
        inner, outer = {1: (cy - 16, cy - 16), -1: (cy - 10, cy - 15), 0: (cy - 13, cy - 13)}[polarity]
        draw.line([cx + side * 4, inner, cx + side * 14, outer], fill=ink, width=2)
    if polarity > 0:
        draw.arc([cx - 12, cy + 8 - bend, cx + 12, cy + 8 + bend], 0, 180, fill=ink, width=3)
    elif polarity < 0:
        draw.arc([cx - 12, cy + 12 - bend, cx + 12, cy + 12 + bend], 180, 360, fill=ink, width=3)
    else:
        draw.line([cx - 10, cy + 12, cx + 10, cy + 12], fill=ink, width=3)
    return img


def _carrying_modalities(rng: np.random.Generator, kind: str) -> list[str]:
    if kind == "neutral":
        return []
    p = P_CARRY_IF_EXPLICIT if kind == "explicit" else P_CARRY_OTHERWISE
    carried = [m for m in OTHER_MODALITIES if rng.random() < p]
    if not carried and kind != "explicit":  # somebody has to tell the sign when the words cannot
        carried = [str(rng.choice(OTHER_MODALITIES))]
    return carried


def _text(rng: np.random.Generator, kind: str, polarity: int, strength: float) -> str:
    topic = str(rng.choice(TOPICS))
    band = min(int(strength / 1.0), 2)  # [0.4, 1) weak, [1, 2) medium, [2, 3] strong
    if kind == "explicit":
        adj = str(rng.choice((POSITIVE if polarity > 0 else NEGATIVE)[band]))
        core = str(rng.choice(EXPLICIT)).format(topic=topic, adj=adj)
    elif kind == "sarcastic":
        # Literal praise whatever the polarity: sincere when positive, sarcastic when negative.
        core = str(rng.choice(SARCASTIC)).format(topic=topic, adj=str(rng.choice(POSITIVE[2])))
    elif kind == "ambiguous":
        core = str(rng.choice(AMBIGUOUS)).format(topic=topic)
    else:
        core = str(rng.choice(NEUTRAL)).format(topic=topic)
    sentences = [core]
    n_fillers = int(rng.integers(0, 3))  # 0-2 filler sentences, before or after: HAN sees several
    for filler in rng.choice(FILLERS, size=n_fillers, replace=False):
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), str(filler))
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _image(rng: np.random.Generator, polarity: int, strength: float) -> bytes:
    grey = np.array([128.0, 128.0, 128.0])
    target = {1: np.array([235.0, 175.0, 60.0]), -1: np.array([60.0, 85.0, 175.0]), 0: grey}[polarity]
    vividness = 0.35 + 0.65 * strength / 3.0
    background = tuple(int(c) for c in grey + (target - grey) * vividness)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(img)
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    cx, cy = 16 + dx, 16 + dy
    ink = (20, 20, 20)
    for ex in (cx - 6, cx + 6):
        draw.ellipse([ex - 2, cy - 7, ex + 2, cy - 3], fill=ink)
    if polarity > 0:  # PIL angles run clockwise from 3 o'clock: 20..160 is the lower arc, a smile
        draw.arc([cx - 9, cy - 6, cx + 9, cy + 8], 20, 160, fill=ink, width=2)
    elif polarity < 0:
        draw.arc([cx - 9, cy + 3, cx + 9, cy + 15], 200, 340, fill=ink, width=2)
    else:
        draw.line([cx - 7, cy + 5, cx + 7, cy + 5], fill=ink, width=2)
    pixels = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 18.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# Raw-scale prosody: pitch (Hz), energy (dB), voicing, then five spectral-like coefficients.
AUDIO_MEAN = np.array([180.0, 60.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
AUDIO_STD = np.array([25.0, 6.0, 0.15, 1.0, 1.0, 1.0, 1.0, 1.0])


def _audio(rng: np.random.Generator, polarity: int, strength: float, out: np.ndarray) -> int:
    length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    t = np.linspace(-1.0, 1.0, length)
    frames = AUDIO_MEAN + AUDIO_STD * rng.normal(0.0, 1.0, size=(length, AUDIO_DIM))
    frames[:, 0] += polarity * strength * 20.0 * t  # rising pitch sounds upbeat, falling sounds flat
    frames[:, 1] += polarity * strength * 2.5
    out[:length] = frames
    return length


def _vision(rng: np.random.Generator, polarity: int, strength: float, out: np.ndarray) -> int:
    length = MAX_LEN  # trimmed to the clip's (audio) length by the caller
    frames = np.abs(rng.normal(0.4, 0.35, size=(length, VISION_DIM)))
    # The expression shows in a window of the clip, not all of it.
    start = int(rng.integers(0, length // 2))
    window = slice(start, start + length // 3)
    if polarity > 0:
        frames[window, [2, 5]] += 0.8 * strength  # AU6 cheek raiser, AU12 lip corner puller
    elif polarity < 0:
        frames[window, [1, 7]] += 0.8 * strength  # AU4 brow lowerer, AU15 lip corner depressor
    out[:] = frames
    return length
