"""Benchmark clip feature extraction (`components.data.media`) against PyAV and librosa called directly, and the cost of
a featurize cache hit on a dataset of clips.

Data: `generate_demo(size=N, media=True)` in a temporary folder: N WAV clips (1-2 s, 16 kHz mono) and N MP4 clips
(64x64 H.264, 10 fps), the same seconds per sample. Settings: `AudioClipParams()` and `VideoClipParams()`, the
defaults featurize uses. Contenders, per kind (audio, video), on the same files:

    library alone      the minimal direct calls, one process: audio `av.open(path)`, `av.AudioResampler(format="flt",
                       layout="mono", rate=16000)` over the decoded frames, then `librosa.feature.mfcc`,
                       `librosa.yin` and `librosa.feature.rms` with media.audio_features' parameters, stacked as
                       it stacks them; video `av.open(path)`, decode, keep a frame every 1/5 s, each
                       `frame.reformat(..., format="gray", interpolation="AREA")` to a grid x grid thumbnail
    ours, 1 process    `extract_many(jobs, workers=1)`: `components.data.media.extract` per clip (reading the bytes,
                       picking the demuxer from the leading bytes, the size, rate, pixel and duration bounds),
                       the same process: like against like (goal >= 0.9x the library alone)
    ours, N processes  `extract_many(jobs, workers=N)` (default: one per core), all clips of the kind in one call: a
                       pool per call, as featurize makes one, whose workers fork from the process's fork server
                       (`components.data.clip_worker`: the libraries imported and warmed once). The server starts with
                       the first pooled call, so the first round's row pays its start (imports, librosa's first
                       calls); the median over `--rounds` (default 3) is a warm one. "start-up" in the notes:
                       pool wall - (1 process wall) / N, per round.

The first call of each path is made before any timing (librosa's lazy imports and numba cost seconds; they go to
whichever path runs first) and shown on its own. Library alone and ours, 1 process, take turns per block of
`--block` clips (which one goes first alternates), so that load from other work on a shared machine hits both
alike; each contender's time is summed over the round; then the pool. Each `extract_many` call has ~10-15 ms of
its own (the progress bar, entering the one-BLAS-thread limit), which featurize pays once: blocks of 50 clips keep
it to 4 calls per kind and round (with blocks of 10, 20 calls cost video, at ~7 ms a clip, about
0.1x). `--rounds` rounds (the kinds' order
alternating); rows are medians over rounds, ratios medians of per-round ratios against the library alone in the
same round; the "all" rows are the sums of the audio and video times per round. Media seconds are the clips'
durations from their headers. Every clip's features from ours (both ways) must equal the library's (np.allclose;
the largest difference is shown), or the run fails: both did the same work.

Also measured: the whole `featurize()` of the dataset (fresh out dir; workers=N, CPU: text token states with the
bundled MiniLM, its load included, images, the clip pool, standardization and writing), then `featurize()` again
with unchanged inputs: the cache hit (goal < 1 s), three times.

    python bench/extraction.py [--size 200] [--rounds 3] [--block 50] [--workers N] [--seed 0]
"""

# Spawn workers import this script again (as __mp_main__): the heavy imports (featurize, torch) stay in main().
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import av
import librosa
import numpy as np
import typer
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.core.config import AudioClipParams, VideoClipParams
from components.data.media import ClipJob, ClipProblem, extract_many

CORES = os.cpu_count() or 1
RESULTS = Path(__file__).parent / "results" / "extraction.json"
GOALS = {"ratio_single": 0.9, "cache_hit_s": 1.0}
KINDS = {"audio": ("audio", "audio"), "video": ("vision", "vision")}  # kind -> (dataset modality, ClipJob kind)
LIBRARY, SINGLE, POOL = "library alone", "ours, 1 process", "ours, {n} processes"


def library_audio(path: Path, settings: AudioClipParams) -> np.ndarray:
    """PyAV decode + resample to mono float32, then librosa's MFCC, YIN and RMS: [T, n_mfcc + 2]."""
    sr, n_fft = settings.sample_rate, settings.window
    hop = round(sr / settings.frame_rate)
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        chunks = [out.to_ndarray().reshape(-1) for f in container.decode(audio=0) for out in resampler.resample(f)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    y = np.concatenate(chunks)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=settings.n_mfcc, n_fft=n_fft, hop_length=hop)
    pitch = librosa.yin(y, fmin=settings.fmin, fmax=settings.fmax, sr=sr, frame_length=n_fft, hop_length=hop)
    rms = librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop)[0]
    return np.column_stack([mfcc.T, np.log2(pitch), 20 * np.log10(rms + 1e-5)]).astype(np.float32)


def library_video(path: Path, settings: VideoClipParams) -> np.ndarray:
    """PyAV decode, a frame every 1 / frame_rate s, each the grey center square at grid x grid: [T, grid * grid]."""
    grid, step = settings.grid, 1.0 / settings.frame_rate
    frames, due = [], 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            t = float(frame.time)
            if t + 1e-6 < due:
                continue
            scale = grid / min(frame.width, frame.height)
            w, h = max(grid, round(frame.width * scale)), max(grid, round(frame.height * scale))
            grey = frame.reformat(width=w, height=h, format="gray", interpolation="AREA").to_ndarray()
            top, left = (h - grid) // 2, (w - grid) // 2
            frames.append((grey[top : top + grid, left : left + grid].astype(np.float32) / 255.0).reshape(-1))
            while due <= t + 1e-6:
                due += step
    return np.stack(frames)


def header_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / 1_000_000


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall s, CPU s of this process and of the child processes it reaped meanwhile, value)."""
    before, wall = os.times(), time.perf_counter()
    value = fn()
    wall, after = time.perf_counter() - wall, os.times()
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system"))
    return wall, cpu, value


def same_features(name: str, files: list[Path], got: list, want: list[np.ndarray]) -> float:
    """Largest absolute difference between `got` and `want`; SystemExit at the first clip that differs."""
    worst = 0.0
    for file, a, b in zip(files, got, want, strict=True):
        if isinstance(a, ClipProblem):
            raise SystemExit(f"{name}: {file.name} failed: {a}")
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-4):  # BLAS threads: summation order
            diff = np.abs(a - b).max() if a.shape == b.shape else f"shape {a.shape} vs {b.shape}"
            raise SystemExit(f"{name}: features of {file.name} differ from the library's ({diff}): not the same work")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main(
    size: Annotated[int, typer.Option(min=30, help="Demo samples: this many WAV and this many MP4 clips.")] = 200,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of all the extraction contenders.")] = 3,
    block: Annotated[int, typer.Option(min=1, help="Clips per turn of library alone and ours, 1 process.")] = 50,
    workers: Annotated[int, typer.Option(min=1, help="Processes of the pool rows and featurize.")] = CORES,
    seed: Annotated[int, typer.Option(help="Demo seed.")] = 0,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    from components.core.config import FeaturizeParams
    from components.data.dataset import read_dataset
    from components.data.demo import generate_demo
    from components.features.featurize import featurize

    pool = POOL.format(n=workers)
    settings = {"audio": AudioClipParams(), "video": VideoClipParams()}
    library = {"audio": library_audio, "video": library_video}
    tmp = Path(tempfile.mkdtemp(prefix="extraction-bench-"))
    try:
        demo_s, _, raw = timed(lambda: generate_demo(tmp / "raw", size=size, seed=seed, media=True))
        dataset = read_dataset(raw)
        files = {kind: [f for f in dataset.clip_files(m) if f is not None] for kind, (m, _) in KINDS.items()}
        jobs = {
            kind: [ClipJob(f, job_kind, settings[kind], dataset.manifest.clips) for f in files[kind]]
            for kind, (_, job_kind) in KINDS.items()
        }
        seconds = {kind: sum(header_seconds(f) for f in files[kind]) for kind in KINDS}

        # First calls, untimed in the rows: librosa's imports and numba go to whichever path calls it first.
        first_call = {}
        for kind in KINDS:
            first_call[f"{kind} {LIBRARY}"] = timed(lambda k=kind: library[k](files[k][0], settings[k]))[0]
            first_call[f"{kind} {SINGLE}"] = timed(lambda k=kind: extract_many(jobs[k][:1], workers=1))[0]

        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        max_diff: dict[str, float] = {}
        loads = [os.getloadavg()[0]]
        turns = {
            LIBRARY: lambda k, b: [library[k](f, settings[k]) for f in files[k][b : b + block]],
            SINGLE: lambda k, b: extract_many(jobs[k][b : b + block], workers=1),
        }
        for r in range(rounds):
            for kind in KINDS if r % 2 == 0 else list(KINDS)[::-1]:
                # Library and ours in turns per block of clips (the first of each pair alternating), so that
                # the neighbours' load on a shared machine hits both alike; each summed over the round.
                values: dict[str, list] = {LIBRARY: [], SINGLE: []}
                spent = {LIBRARY: [0.0, 0.0], SINGLE: [0.0, 0.0]}
                for i, b in enumerate(range(0, len(files[kind]), block)):
                    for name in (LIBRARY, SINGLE) if (i + r) % 2 == 0 else (SINGLE, LIBRARY):
                        wall, cpu, value = timed(lambda n=name, k=kind, b=b: turns[n](k, b))
                        values[name] += value
                        spent[name][0] += wall
                        spent[name][1] += cpu
                wall, cpu, values[pool] = timed(lambda k=kind: extract_many(jobs[k], workers=workers))
                spent[pool] = [wall, cpu]
                for name in (LIBRARY, SINGLE, pool):
                    runs.setdefault((kind, name), []).append(tuple(spent[name]))
                for name in (SINGLE, pool):
                    diff = same_features(f"{kind} {name}", files[kind], values[name], values[LIBRARY])
                    max_diff[f"{kind} {name}"] = max(diff, max_diff.get(f"{kind} {name}", 0.0))
                loads.append(os.getloadavg()[0])
        for name in (LIBRARY, SINGLE):  # the single-process contenders over both kinds: the sums per round
            runs["all", name] = [
                (a[0] + v[0], a[1] + v[1]) for a, v in zip(runs["audio", name], runs["video", name], strict=True)
            ]

        params = FeaturizeParams(out=tmp / "features", workers=workers, device="cpu")
        first_s, _, first = timed(lambda: featurize(raw, params, progress=False))
        if first.cached:
            raise SystemExit("the first featurize() hit a cache: the out dir was not fresh")
        hits = []
        for _ in range(3):
            wall, _, again = timed(lambda: featurize(raw, params, progress=False))
            if not again.cached:
                raise SystemExit("featurize() with unchanged inputs did not hit its cache")
            hits.append(wall)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for kind in ("audio", "video", "all"):
        clips = len(files[kind]) if kind != "all" else len(files["audio"]) + len(files["video"])
        media_s = seconds[kind] if kind != "all" else seconds["audio"] + seconds["video"]
        for name in (LIBRARY, SINGLE, pool) if kind != "all" else (LIBRARY, SINGLE):
            measured, base = runs[kind, name], runs[kind, LIBRARY]
            wall = statistics.median(m[0] for m in measured)
            row = {
                "kind": kind,
                "contender": name,
                "clips": clips,
                "media_s": media_s,
                "seconds_wall": wall,
                "seconds_cpu": statistics.median(m[1] for m in measured),
                "clips_per_s": clips / wall,
                "media_s_per_s": media_s / wall,
                "ratio_vs_library": statistics.median(b[0] / m[0] for m, b in zip(measured, base, strict=True)),
                "runs": measured,
            }
            if name == pool:
                row["speedup_vs_single"] = statistics.median(
                    s[0] / m[0] for m, s in zip(measured, runs[kind, SINGLE], strict=True)
                )
            rows.append(row)
    library_all = statistics.median(m[0] for m in runs["all", LIBRARY])
    clips_all, media_all = rows[-1]["clips"], rows[-1]["media_s"]
    startup = {
        kind: statistics.median(
            p[0] - s[0] / workers for p, s in zip(runs[kind, pool], runs[kind, SINGLE], strict=True)
        )
        for kind in KINDS
    }
    featurize_row = {
        "kind": "all",
        "contender": f"featurize(), first run, {workers} processes",
        "clips": clips_all,
        "media_s": media_all,
        "seconds_wall": first_s,
        "clips_per_s": clips_all / first_s,
        "media_s_per_s": media_all / first_s,
        "ratio_vs_library": library_all / first_s,
    }
    hit_row = {"kind": "all", "contender": "featurize() again: cache hit", "seconds_wall": hits[0]}

    table = Table(
        title=f"Clip extraction: {size} WAV + {size} MP4 demo clips, {CORES} cores, {rounds} rounds, medians; "
        "x library: per-round library alone wall / contender wall; x 1 process: ours, 1 process wall / pool wall"
    )
    columns = (
        "kind",
        "contender",
        "clips",
        "media s",
        "s wall",
        "s CPU",
        "clips/s",
        "media s/s",
        "x library",
        "x 1 process",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("kind", "contender") else "right")
    for r in rows:
        table.add_row(
            r["kind"],
            r["contender"],
            str(r["clips"]),
            f"{r['media_s']:.1f}",
            f"{r['seconds_wall']:.2f}",
            f"{r['seconds_cpu']:.2f}",
            f"{r['clips_per_s']:.1f}",
            f"{r['media_s_per_s']:.1f}",
            f"{r['ratio_vs_library']:.3f}",
            f"{r['speedup_vs_single']:.2f}" if "speedup_vs_single" in r else "-",
        )
    r = featurize_row
    table.add_row(
        r["kind"],
        r["contender"],
        str(r["clips"]),
        f"{r['media_s']:.1f}",
        f"{r['seconds_wall']:.2f}",
        "-",
        f"{r['clips_per_s']:.1f}",
        f"{r['media_s_per_s']:.1f}",
        f"{r['ratio_vs_library']:.3f}",
        "-",
    )
    table.add_row("all", hit_row["contender"], "-", "-", f"{hits[0]:.2f}", "-", "-", "-", "-", "-")
    Console(width=170).print(table)

    goals = {}
    for r in rows:
        if r["contender"] == SINGLE and r["kind"] != "all":
            goals[f"{r['kind']} {SINGLE} >= {GOALS['ratio_single']}x library"] = (
                r["ratio_vs_library"] >= GOALS["ratio_single"]
            )
    goals[f"featurize() cache hit < {GOALS['cache_hit_s']:g} s"] = hits[0] < GOALS["cache_hit_s"]
    print("; ".join(f"{g}: {'met' if ok else 'MISSED'}" for g, ok in goals.items()))
    print(
        f"features equal to the library's (np.allclose) for every clip, both ways, every round; largest difference "
        f"{max(max_diff.values()):.2g}. First calls before timing (s, excluded from the rows; each pool worker pays "
        f"the like inside its row): " + ", ".join(f"{k} {v:.2f}" for k, v in first_call.items()) + ". "
        f"{pool}: workers forked from one fork server, started by the first round's call (pool wall - 1 process "
        f"wall / {workers}, median: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items())
        + "); the 'all' rows are the sums of the audio and video times per round."
        " featurize() first run includes the text token "
        "states (MiniLM load and forward, CPU), images and writing; cache hits (s): "
        + ", ".join(f"{h:.3f}" for h in hits)
        + f". Demo generation {demo_s:.1f} s. Load average (1 min) at the start and after each kind of each round: "
        + ", ".join(f"{x:.2f}" for x in loads)
    )

    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    result = {
        "settings": {
            "machine": machine.summary,
            "date": machine.date,
            "machine_details": machine.details,
            "size": size,
            "seed": seed,
            "rounds": rounds,
            "block": block,
            "workers": workers,
            "cores": os.cpu_count(),
            "audio_clips": settings["audio"].model_dump(),
            "video_clips": settings["video"].model_dump(),
            "av": av.__version__,
            "librosa": librosa.__version__,
            "goals": GOALS,
        },
        "rows": rows,
        "featurize_first": featurize_row,
        "cache_hit_s": hits,
        "first_call_s": first_call,
        "pool_startup_s": startup,
        "max_abs_diff": max_diff,
        "demo_s": demo_s,
        "load_average": loads,
        "goals": goals,
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
