"""Benchmark the featurize text path against sentence-transformers, and the cost of a featurize cache hit.

Texts: the CMU-MOSI transcripts in ../shared/datasets/mosi-text (train.tsv + dev.tsv, 1513 texts), or the demo
dataset's texts when that folder is absent. Contenders, on the same texts with the same bundled MiniLM, batch size
(featurize.batch_size, 64), maximum length (featurize.max_tokens, 64; SentenceTransformer's max_seq_length is set
to the same value instead of its 256) and torch thread count:

    project text path   what featurize does for text: one tokenizer call (with offsets and special-token mask,
                        truncated at max_tokens), the padded id and mask arrays, then
                        `components.features.contract.token_states` (longest first, per-batch trimming, float16 states)
    ST encode           `SentenceTransformer(path, device="cpu").encode(texts, batch_size=64)` (tokenize per
                        batch, forward, mean pooling, normalize)

Model and tokenizer loading is excluded from both (loaded before the clock starts; `token_states` gets the
preloaded model through a patched `AutoModel.from_pretrained`) and shown on its own. The two alternate (A B, B A,
...) for several rounds; the ratio is the median of per-round ratios, project/ST texts/s (target >= 0.9). Mean
pooling the project's token states must reproduce ST's embeddings (min cosine shown), so both did the same work.

Also measured, in the same rounds: the whole `featurize()` on a text-only canonical dataset (imported with
`import_text_tsv`, fresh out dir each round; model load, content key, HAN sentence index and writing included),
and the cache hit: `featurize()` again with unchanged inputs (target < 1 s), in process and as `msa featurize`
in a subprocess (CLI imports included) on the demo dataset, against a subprocess that imports only the featurize
stage (what the CLI would cost if it imported nothing else).

    python bench/featurize_throughput.py [--mosi ../shared/datasets/mosi-text] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network: the model is bundled

import csv
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
import yaml
from _support.machine import this_machine
from rich.console import Console
from rich.table import Table

from components.core.config import DEFAULT_PARAMS, FeaturizeParams, load_params
from components.data.dataset import read_dataset
from components.data.importers import import_text_tsv
from components.features.contract import STATE, TextState, encode_texts, token_states
from components.features.featurize import featurize
from components.features.text_model import resolve_text_model

RESULTS = Path(__file__).parent / "results" / "featurize_throughput.json"
MOSI = Path("../shared/datasets/mosi-text")
RAW = Path("data/raw")
FEATURES = Path("data/features")
MINIMAL_CLI = (
    "import sys; from components.core.config import load_params; from components.features.featurize import featurize; "
    "p = load_params(sys.argv[1]); print(featurize(p.data.raw, p.featurize).summary())"
)


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall s, process CPU s, value)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def read_texts(mosi: Path, raw: Path, tmp: Path) -> tuple[str, list[str], Path]:
    """(source, texts, text-only canonical dataset with those texts)."""
    if (mosi / "train.tsv").is_file() and (mosi / "dev.tsv").is_file():
        files = [mosi / "train.tsv", mosi / "dev.tsv"]
        source = f"{mosi} train+dev"
    else:  # the demo texts, as a TSV the text importer reads
        samples = read_dataset(raw).samples
        files = [tmp / "demo.tsv"]
        samples[["text", "label"]].to_csv(files[0], sep="\t", index=False, quoting=csv.QUOTE_NONE)
        source = f"{raw} (demo texts; {mosi} absent)"
    frames = [pd.read_csv(f, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False) for f in files]
    texts = pd.concat(frames)["text"].tolist()
    dataset = import_text_tsv(files[0], tmp / "text-raw", valid=files[1] if len(files) > 1 else None)
    return source, texts, dataset


def project_text_path(
    texts: list[str], params: FeaturizeParams, path: Path, tokenizer, model
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize as featurize does (`encode_texts`), then `token_states` with the preloaded model: (float16 [N, L,
    H], mask)."""
    state = TextState(
        model=str(path),
        hidden_size=model.config.hidden_size,
        max_tokens=params.max_tokens,
        max_sentences=params.max_sentences,
        max_sentence_tokens=params.max_sentence_tokens,
        token_states=True,
    )
    encoded = encode_texts(tokenizer, texts, state)
    input_ids, attention = encoded["text.input_ids"], encoded["text.attention_mask"]
    return token_states(model, input_ids, attention, batch_size=params.batch_size), attention


def cosine_check(states: np.ndarray, attention: np.ndarray, embeddings: np.ndarray) -> float:
    """Min cosine between ST's embeddings and the mean-pooled, normalized project token states."""
    mask = attention[..., None]
    pooled = (states.astype(np.float32) * mask).sum(1) / mask.sum(1).clip(min=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    target = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return float((pooled * target).sum(1).min())


def subprocess_s(args: list[str], expect: str | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode or (expect and expect not in done.stdout):
        raise RuntimeError(f"{' '.join(args)} failed or did not hit the cache:\n{done.stdout}\n{done.stderr}")
    return seconds


def main(
    mosi: Annotated[Path, typer.Option(help="mosi-text folder (the demo texts are used if absent).")] = MOSI,
    rounds: Annotated[int, typer.Option(help="Alternated rounds of the throughput contenders.")] = 3,
    threads: Annotated[int, typer.Option(help="torch threads for both; 0: torch's default (one per core).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass, both contenders.")] = 64,
    max_tokens: Annotated[int, typer.Option(help="Tokens per text, both (ST's max_seq_length is set to it).")] = 64,
    raw: Annotated[Path, typer.Option(help="Dataset for the cache-hit and CLI timings.")] = RAW,
    features: Annotated[Path, typer.Option(help="Its features (copied, never written), to start warm.")] = FEATURES,
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = RESULTS,
) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    project_params = load_params(DEFAULT_PARAMS).featurize
    params = FeaturizeParams(batch_size=batch_size, max_tokens=max_tokens, device="cpu")
    path = resolve_text_model(params.text_model)
    tmp = Path(tempfile.mkdtemp(prefix="featurize-bench-"))
    try:
        source, texts, text_raw = read_texts(mosi, raw, tmp)
        loads: dict[str, list[float]] = {"tokenizer": [], "AutoModel": [], "SentenceTransformer": []}
        runs: dict[str, list[tuple[float, float]]] = {"project text path": [], "ST encode": [], "featurize()": []}
        cosines, hits = [], []

        def load_all():
            wall, _, tokenizer = timed(AutoTokenizer.from_pretrained, path, local_files_only=True)
            loads["tokenizer"].append(wall)
            wall, _, model = timed(lambda: AutoModel.from_pretrained(path, local_files_only=True).eval())
            loads["AutoModel"].append(wall)
            wall, _, st = timed(SentenceTransformer, str(path), device="cpu")
            loads["SentenceTransformer"].append(wall)
            st.max_seq_length = max_tokens
            return tokenizer, model, st

        tokenizer, model, st = load_all()
        project_text_path(texts[:batch_size], params, path, tokenizer, model)  # warm-up, not timed
        st.encode(texts[:batch_size], batch_size=batch_size, show_progress_bar=False)
        for r in range(rounds):
            tokenizer, model, st = load_all()
            out = tmp / f"features-{r}"
            contenders = {
                "project text path": functools.partial(project_text_path, texts, params, path, tokenizer, model),
                "ST encode": functools.partial(st.encode, texts, batch_size=batch_size, show_progress_bar=False),
                "featurize()": functools.partial(
                    featurize, text_raw, params.model_copy(update={"out": out}), progress=False
                ),
            }
            values = {}
            for name in contenders if r % 2 == 0 else list(contenders)[::-1]:
                wall, cpu, values[name] = timed(contenders[name])
                runs[name].append((wall, cpu))
            cosines.append(cosine_check(*values["project text path"], values["ST encode"]))
            assert not values["featurize()"].cached
            wall, _, again = timed(featurize, text_raw, params.model_copy(update={"out": out}), progress=False)
            assert again.cached, "featurize() with unchanged inputs did not hit its cache"
            hits.append(wall)
            shutil.rmtree(out)

        # Cache hit on the pipeline's own dataset and settings (params.yaml), in process and through the CLI.
        demo_out = tmp / "demo-features"
        if (features / STATE).is_file():
            shutil.copytree(features, demo_out)
        demo_params = project_params.model_copy(update={"out": demo_out})
        first_wall, _, first = timed(featurize, raw, demo_params, progress=False)
        demo_hits = [timed(featurize, raw, demo_params, progress=False)[0] for _ in range(3)]
        settings = yaml.safe_load(DEFAULT_PARAMS.read_text())
        settings["data"]["raw"], settings["featurize"]["out"] = str(raw.resolve()), str(demo_out)
        (tmp / "params.yaml").write_text(yaml.safe_dump(settings))
        msa = str(Path(sys.executable).parent / "msa")
        commands = {
            "msa featurize (cache hit)": [msa, "featurize", "--params", str(tmp / "params.yaml")],
            "featurize stage only (cache hit)": [sys.executable, "-c", MINIMAL_CLI, str(tmp / "params.yaml")],
            "import flows.cli only": [sys.executable, "-c", "import flows.cli"],
        }
        cli: dict[str, list[float]] = {name: [] for name in commands}
        for r in range(3):
            for name in commands if r % 2 == 0 else list(commands)[::-1]:
                cli[name].append(subprocess_s(commands[name], None if "import" in name else "unchanged inputs"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(texts)
    rows = []
    for name, measured in runs.items():
        row = {"contender": name, "texts": n}
        for i, clock in enumerate(("wall", "cpu")):
            row[f"texts_per_s_{clock}"] = statistics.median(n / m[i] for m in measured)
            row[f"ratio_vs_st_{clock}"] = statistics.median(
                st_run[i] / m[i] for m, st_run in zip(measured, runs["ST encode"], strict=True)
            )
        row["seconds_wall"] = statistics.median(m[0] for m in measured)
        row["runs"] = measured
        rows.append(row)
    load_s = {k: statistics.median(v) for k, v in loads.items()}
    project_loaded = rows[0]["seconds_wall"] + load_s["tokenizer"] + load_s["AutoModel"]
    st_loaded = rows[1]["seconds_wall"] + load_s["SentenceTransformer"]

    table = Table(
        title=f"Text featurization: {n} texts ({source}), batch {batch_size}, max {max_tokens} tokens, "
        f"{torch.get_num_threads()} torch thread(s), {rounds} rounds; medians"
    )
    for column in ("contender", "texts/s wall", "ratio vs ST wall", "texts/s CPU", "ratio vs ST CPU", "s wall"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["contender"],
            f"{r['texts_per_s_wall']:.0f}",
            f"{r['ratio_vs_st_wall']:.3f}",
            f"{r['texts_per_s_cpu']:.0f}",
            f"{r['ratio_vs_st_cpu']:.3f}",
            f"{r['seconds_wall']:.2f}",
        )
    table.add_row(
        "project text path + loads",
        f"{n / project_loaded:.0f}",
        f"{st_loaded / project_loaded:.3f}",
        "-",
        "-",
        f"{project_loaded:.2f}",
    )
    table.add_row("ST encode + load", f"{n / st_loaded:.0f}", "1.000", "-", "-", f"{st_loaded:.2f}")
    console = Console(width=150)
    console.print(table)
    print(
        f"model loads (s, excluded above, added in the '+ load' rows): tokenizer {load_s['tokenizer']:.2f}, "
        f"AutoModel {load_s['AutoModel']:.2f}, SentenceTransformer {load_s['SentenceTransformer']:.2f}; "
        f"ST embeddings vs mean-pooled project states: min cosine {min(cosines):.5f}; featurize() includes "
        "tokenizer and model loads, content key, HAN sentence index and writing"
    )

    cache = [
        ("featurize() cache hit, text-only dataset (in process)", statistics.median(hits)),
        (f"featurize() cache hit, {raw} (in process)", statistics.median(demo_hits)),
        *((name, statistics.median(v)) for name, v in cli.items()),
    ]
    table = Table(title="Cache hit, unchanged inputs (median of 3; target < 1 s)")
    table.add_column("what", justify="left")
    table.add_column("s wall", justify="right")
    for name, seconds in cache:
        table.add_row(name, f"{seconds:.2f}")
    console.print(table)
    print(f"first featurize() of {raw} into a copy of {features}: cached={first.cached} ({first_wall:.2f} s)")

    json_path.parent.mkdir(parents=True, exist_ok=True)
    machine = this_machine()
    result = {
        "settings": {
            "machine": machine.summary,
            "date": machine.date,
            "machine_details": machine.details,
            "texts": n,
            "source": source,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
        },
        "throughput": rows,
        "with_loads": {"project_s": project_loaded, "st_s": st_loaded, "ratio": st_loaded / project_loaded},
        "load_s": load_s,
        "min_cosine": min(cosines),
        "cache_hit_s": dict(cache),
        "cache_hit_runs": {"text_only": hits, "demo": demo_hits, **cli},
        "demo_first_call": {"cached": first.cached, "seconds": first_wall},
    }
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    typer.run(main)
