"""The `msa` command line: one subcommand per stage, calling the same component functions as the DVC stages
and the Prefect tasks. Settings come from params.yaml; options override them for one run."""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from components.core.atomic import check_replaceable
from components.core.config import DEFAULT_PARAMS, RegisterParams, load_params, with_seeds
from components.core.errors import TrackingError, UserError
from components.data.data_version import record_in_dvc
from components.data.dataset import MANIFEST, SPLITS, read_dataset
from components.data.demo import generate_demo
from components.data.importers import import_clips_csv, import_image_text_csv, import_mmsa, import_text_tsv
from components.data.importers.clips import MAX_LEN_AUDIO, MAX_LEN_VISION
from components.data.importers.labelled_csv import TASKS
from components.data.validation import html_path, validate_dataset  # GX itself: imported only when validating
from components.features.featurize import featurize as featurize_dataset

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the fallback Prefect itself uses, one of its dependencies
    import toml as tomllib

if TYPE_CHECKING:
    from components.core.config import Params
    from components.registry.register import Registration, Skipped

# At exit Python collects garbage over every object the imports made: with MLflow and pandas loaded, 1-2 s, as long as
# the rest of an `msa run` that skips. What is left then needs no collecting: files and connections close with the
# process.
atexit.register(gc.freeze)

err = Console(stderr=True, highlight=False, soft_wrap=True)


class _UserErrorsAsOneLine(TyperGroup):
    """The one place user errors are caught: bad input, bad settings, an unreachable server or an interrupt end
    with one line on stderr and exit code 1 (130 for an interrupt); anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            err.print(f"error: {e}", style="red", markup=False, soft_wrap=True)
            raise typer.Exit(getattr(e, "exit_code", 1)) from None
        except KeyboardInterrupt:  # Ctrl-C outside training (which says where it stopped itself)
            command = ctx.meta.get(_COMMAND, "")
            what = _WHOLE_OR_NOTHING if command in _FILE_COMMANDS else " before it finished"
            err.print(f"interrupted: {f'msa {command}'.strip()} stopped{what}", style="red", markup=False)
            raise typer.Exit(130) from None  # the shell's convention for a run ended by SIGINT

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, noting the full name of the command invoked (`data import csv`) for the interrupt line."""
        name, command, rest = super().resolve_command(ctx, args)
        words, leaf = [name or ""], command
        for word in rest:
            if not hasattr(leaf, "get_command") or (leaf := leaf.get_command(ctx, word)) is None:  # not a group
                break
            words.append(word)
        ctx.meta[_COMMAND] = " ".join(words)
        return name, command, rest


def _log_lines_to_stderr() -> None:
    """A stage command runs without Prefect: the components' log lines (the device, an epoch) go to stderr as
    plain lines. (Under `msa run` and on workers, Prefect's handlers take them: see flows/__init__.py.)"""
    logger = logging.getLogger("components")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


_COMMAND = "msa.command"  # ctx.meta key: the subcommand being run
# Commands whose every output is written to a temporary name and renamed into place (components.core.atomic): Ctrl-C
# leaves each file whole, old or new. The others (train, register, run, ...) promise nothing here.
_FILE_COMMANDS = (
    "data demo", "data import mmsa", "data import csv", "data import clips", "data import tsv", "validate",
    "featurize", "evaluate", "robustness", "compress",
)  # fmt: skip
_WHOLE_OR_NOTHING = "; each file it writes is replaced whole or not at all, so nothing half-written was kept"


app = typer.Typer(
    cls=_UserErrorsAsOneLine, no_args_is_help=True, add_completion=False, help=__doc__,
    pretty_exceptions_show_locals=False,
)  # fmt: skip
data_app = typer.Typer(no_args_is_help=True, help="Create or import the canonical dataset.")
import_app = typer.Typer(no_args_is_help=True, help="Convert an outside format into the canonical dataset.")
app.add_typer(data_app, name="data")
data_app.add_typer(import_app, name="import")

out = Console(highlight=False, soft_wrap=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read settings from.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Dataset directory to write (default: data.raw in params).")]
NameOpt = Annotated[str | None, typer.Option(help="Dataset name in the manifest (default: the file's stem).")]
LabelMin = Annotated[float, typer.Option(help="Lowest valid regression label (MOSI/MOSEI: -3, CH-SIMS: -1).")]
LabelMax = Annotated[float, typer.Option(help="Highest valid regression label.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split made when the input has none.")]
ValidFrac = Annotated[float, typer.Option(help="Share of samples put in valid when the input has no split.")]
TestFrac = Annotated[float, typer.Option(help="Share of samples put in test when the input has no split.")]


def _task(task: str) -> str:
    if task not in TASKS:
        raise typer.BadParameter(f"{task!r} is not one of {', '.join(TASKS)}")
    return task


TaskOpt = Annotated[
    str,
    typer.Option(
        help="auto, regression or classification (auto: classification if a label is not a number).", callback=_task
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated class names (default: the labels seen).",
        callback=lambda names: [c.strip() for c in names.split(",")] if names else None,
    ),
]


@contextmanager
def _writing_dataset(out_dir: Path | None, params: Path) -> Iterator[Path]:
    """Yield where the dataset goes (--out, else data.raw); once written, read it back and summarise it."""
    started = time.perf_counter()
    path = out_dir or load_params(params).data.raw
    check_replaceable(path, MANIFEST)  # before the work: a mistyped --out fails at once, and nothing is touched
    yield path
    dataset = read_dataset(path)
    counts = dataset.samples["split"].value_counts()
    splits = ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS)
    kind = "SYNTHETIC " if dataset.manifest.synthetic else ""
    out.print(
        f"Wrote {kind}dataset '{dataset.manifest.name}' v{dataset.manifest.version} to {path}: "
        f"{len(dataset.samples)} samples ({splits}); modalities: {', '.join(dataset.manifest.modalities.present)} "
        f"[{time.perf_counter() - started:.1f}s]"
    )
    if (recorded := record_in_dvc(path)) is not None:
        out.print(recorded.summary(), markup=False)


@data_app.command("demo")
def data_demo(
    size: Annotated[int | None, typer.Option(min=30, help="Number of samples (default: data.demo.size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: data.demo.seed).")] = None,
    media: Annotated[
        bool, typer.Option("--media", help="Audio and vision as WAV and MP4 clips instead of feature sequences.")
    ] = False,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Write the deterministic SYNTHETIC demo dataset (byte-identical for the same size and seed)."""
    demo = load_params(params).data.demo
    with _writing_dataset(out_dir, params) as path:
        size, seed = demo.size if size is None else size, demo.seed if seed is None else seed
        generate_demo(path, size=size, seed=seed, media=media)


@import_app.command("mmsa")
def import_mmsa_command(
    file: Annotated[Path, typer.Argument(help="MMSA pickle (CMU-MOSI / MOSEI / CH-SIMS layout).")],
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Load the pickle. Pickle runs code: only for files you trust.")
    ] = False,
    zero_nonfinite: Annotated[
        bool, typer.Option("--zero-nonfinite", help="Replace NaN/inf features by 0, as MMSA's own loader does.")
    ] = False,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import an MMSA pickle: train/valid/test with raw_text, audio, vision, lengths, regression_labels, id."""
    with _writing_dataset(out_dir, params) as path:
        import_mmsa(
            file, path, trust_pickle=trust_pickle, name=name, label_min=label_min, label_max=label_max,
            zero_nonfinite=zero_nonfinite,
        )  # fmt: skip


@import_app.command("csv")
def import_csv_command(
    file: Annotated[Path, typer.Argument(help="CSV with columns id, text, image, label and optional split.")],
    image_root: Annotated[Path, typer.Option(help="Directory the CSV's image paths are relative to.")],
    task: TaskOpt = "auto",
    classes: ClassesOpt = None,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    seed: SeedOpt = 0,
    valid_frac: ValidFrac = 0.1,
    test_frac: TestFrac = 0.1,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import image-text posts (MVSA / Twitter-2015 style)."""
    with _writing_dataset(out_dir, params) as path:
        import_image_text_csv(
            file, path, image_root=image_root, name=name, task=task,  # type: ignore[arg-type]
            classes=classes,  # type: ignore[arg-type] - the option's callback made it a list
            label_min=label_min, label_max=label_max, seed=seed, valid_frac=valid_frac, test_frac=test_frac,
        )  # fmt: skip


@import_app.command("clips")
def import_clips_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with columns id, text, label, audio and/or video, and optional split; or MMSA-FET's label.csv."
        ),
    ],
    media_root: Annotated[Path, typer.Option(help="Directory the CSV's audio and video paths are relative to.")],
    task: TaskOpt = "auto",
    classes: ClassesOpt = None,
    max_len_audio: Annotated[
        int, typer.Option(min=1, help="Audio frames kept per sample (25 a second at featurize's default).")
    ] = MAX_LEN_AUDIO,
    max_len_vision: Annotated[
        int, typer.Option(min=1, help="Video frames kept per sample (5 a second at featurize's default).")
    ] = MAX_LEN_VISION,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    seed: SeedOpt = 0,
    valid_frac: ValidFrac = 0.1,
    test_frac: TestFrac = 0.1,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import utterance clips (MMSA-FET label.csv style): WAV/FLAC audio and MP4/WebM video, copied as they are."""
    with _writing_dataset(out_dir, params) as path:
        import_clips_csv(
            file, path, media_root=media_root, name=name, task=task,  # type: ignore[arg-type]
            classes=classes,  # type: ignore[arg-type] - the option's callback made it a list
            label_min=label_min, label_max=label_max, seed=seed, valid_frac=valid_frac, test_frac=test_frac,
            max_len_audio=max_len_audio, max_len_vision=max_len_vision,
        )  # fmt: skip


@import_app.command("tsv")
def import_tsv_command(
    train: Annotated[Path, typer.Argument(help="text<TAB>label file with a header line; the train split.")],
    valid: Annotated[Path | None, typer.Option(help="File for the valid split (default: carved from train).")] = None,
    test: Annotated[Path | None, typer.Option(help="File for the test split (default: carved from train).")] = None,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    seed: SeedOpt = 0,
    valid_frac: ValidFrac = 0.1,
    test_frac: TestFrac = 0.1,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import text-only `text<TAB>label` files (e.g. ../shared/datasets/mosi-text)."""
    with _writing_dataset(out_dir, params) as path:
        import_text_tsv(
            train, path, valid=valid, test=test, name=name, label_min=label_min, label_max=label_max, seed=seed,
            valid_frac=valid_frac, test_frac=test_frac,
        )  # fmt: skip


@app.command()
def run(
    force: Annotated[
        bool, typer.Option("--force", help="Train even if a registered version has the same data, params and code.")
    ] = False,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            min=1,
            help="Train this many seeds (train.seed and on); register the best on valid, report "
            "every metric's mean and std over them. Default: train.seeds.",
        ),
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """The whole pipeline as a Prefect flow: validate, featurize, train, evaluate, robustness, compress, register.

    Runs on Prefect's ephemeral API (no server needed), or on the server PREFECT_API_URL names, where its runs,
    logs and artifacts show in the UI. Registers in MLflow (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db).
    Unchanged data, params and code end it in seconds; without a Prefect server, before Prefect starts.
    """
    started = time.perf_counter()
    result = None if force else _skip_before_prefect(params, seeds)
    if result is None:
        from flows.pipeline import pipeline

        result = pipeline(params=str(params), force=force, seeds=seeds)
    if result.registered:
        what = "champion" if result.promoted else "challenger"
        outcome = f"{result.name} version {result.version} is {what} ({result.decision})"
    else:
        outcome = f"{result.summary()} (--force trains anyway)"
    out.print(f"run: {outcome} [{time.perf_counter() - started:.1f}s]", markup=False)
    if result.registered:
        out.print(run_summary(load_params(params), result), markup=False)


def run_summary(p: Params, registration: Registration) -> str:
    """Where a run's results are and how to use its model: what `msa run` prints last."""
    from components.models.store import CARD
    from components.tracking import runs as tracking

    headline = json.loads(Path(p.evaluate.headline).read_text())
    split = "test" if "test" in headline else "valid"
    width = max(map(len, headline[split]))
    scores = [
        f"  {head:<{width}}  " + "  ".join(f"{metric} {value:.4f}" for metric, value in metrics.items())
        for head, metrics in headline[split].items()
    ]
    model = f"models:/{registration.name}/{registration.version}"
    uri = tracking.tracking_uri()
    on_server = uri.startswith(("http://", "https://"))
    ui = (
        [f"  open {registration.runs_url}"]
        if on_server
        else [f"  mlflow ui --backend-store-uri {uri}", f"  then open {registration.runs_url}"]
    )
    reports = (html_path(p.validation.report), p.evaluate.report, p.robustness.report, p.compress.report)
    return "\n".join(
        [
            f"\n{split} split, every head of the trained model:",
            *scores,
            f"  (version {registration.version} serves {registration.variant}: {p.compress.headline} compares it)",
            "\nfiles:",
            f"  model card  {Path(p.train.out) / CARD} (model_card.md in the MLflow run)",
            f"  reports     {', '.join(map(str, reports))}",
            f"  figures     {p.evaluate.figures}/, {p.robustness.figure}",
            f"  metrics     {p.evaluate.headline}, {p.compress.headline} (dvc metrics show)",
            "\nMLflow (runs table, this run, the registry):",
            *ui,
            "\nuse the model:",
            f"  msa predict --model {model} --input examples/rows.jsonl",
            f"  msa serve {model} --port 5001",
            f"  mlflow models serve -m {model} --env-manager local --port 5001",  # MLflow's default store is ours
        ]
    )


def _skip_before_prefect(params: Path, seeds: int | None = None) -> Skipped | None:
    """The pipeline flow's first step, its lineage check, made here when the flow would run on Prefect's ephemeral
    API: starting that takes 8-13 s, the check is one tracking query. With a Prefect server the flow makes the check
    itself (a client round trip, no server to start), so that the skip shows there as a flow run with its artifact.

    None when something changed, or when the flow is to decide.
    """
    if _prefect_api_configured():
        return None
    from components.registry.register import registered_with_same_lineage

    try:
        return registered_with_same_lineage(with_seeds(load_params(params), seeds))
    except TrackingError:
        return None  # the flow asks again, with Prefect's retries and backoff (pipeline.retries)


def _prefect_api_configured() -> bool:
    """Whether Prefect runs flows on a server: PREFECT_API_URL in the environment or in the active profile (where
    `prefect config set` writes it). Read without Prefect, whose import alone takes 2-3 s; when unsure, yes."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):  # unreadable, or not TOML: Prefect decides
        return True
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    if active not in profiles.get("profiles", {}):
        return active != "ephemeral"  # one of Prefect's own profiles: only `ephemeral` has no server
    return bool(profiles["profiles"][active].get("PREFECT_API_URL"))


@app.command()
def tune(
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="Finished trials the study is to have (default: tune.trials).")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Search tune.space with Optuna (TPE, median pruning) as a Prefect flow: each trial trains on train and is
    scored on valid (test is never read), tune.concurrency at once; writes the best values as a params file.

    The study is stored in tune.storage: a killed `msa tune` resumes where it stopped, and several (on several
    machines, with a shared database) share the work. Trials are nested runs of a tune run in MLflow.
    """
    from flows.tuning import tune as tune_flow

    started = time.perf_counter()
    result = tune_flow(params=str(params), trials=trials)
    out.print(f"{result.summary()} [{time.perf_counter() - started:.1f}s]", markup=False)


@app.command()
def validate(
    data: Annotated[Path | None, typer.Option(help="Dataset directory (default: data.raw in params).")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Run the Great Expectations suite; exit 1 with a summary of each failed expectation."""
    p = load_params(params)
    report = validate_dataset(data or p.data.raw, p.validation)
    (out if report.success else err).print(report.summary(), markup=False, soft_wrap=True)
    out.print(f"Report: {p.validation.report}; Data Docs: {report.data_docs}", markup=False)
    if not report.success:
        raise typer.Exit(1)


@app.command()
def featurize(
    data: Annotated[Path | None, typer.Option(help="Dataset directory (default: data.raw in params).")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Tokenize text (with frozen token states), resize images, standardize sequences -> featurize.out."""
    _log_lines_to_stderr()
    p = load_params(params)
    result = featurize_dataset(data or p.data.raw, p.featurize)
    out.print(result.summary(), markup=False)


@app.command()
def train(
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over even if a checkpoint of the same inputs could continue.")
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Multi-task training of every head plus the fusion head; continues a checkpoint of the same features and
    settings (a run that was killed) unless --restart. Several processes: torchrun --no-python msa train."""
    from components.training.train import train as train_model  # torch and sklearn: only the commands that train pay

    _log_lines_to_stderr()
    p = load_params(params)
    result = train_model(p.featurize.out, p.model, p.train, resume=False if restart else None)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary rather than one per process
        out.print(result.summary(), markup=False)


@app.command()
def evaluate(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Every head on valid and test -> evaluate.report and its headline; plot data and PNGs -> evaluate.plots,
    evaluate.figures."""
    from components.evaluation.evaluate import (
        evaluate as evaluate_model,  # torch, sklearn and matplotlib: only when used
    )

    _log_lines_to_stderr()
    p = load_params(params)
    result = evaluate_model(p.featurize.out, p.train.out, p.evaluate)
    out.print(result.summary(), markup=False)


@app.command()
def robustness(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Every head on robustness.split under each perturbation and severity of robustness.perturbations ->
    robustness.report, its plot data (robustness.plots) and figure."""
    from components.evaluation.robustness import (
        robustness as score_robustness,  # torch and transformers: only when used
    )

    _log_lines_to_stderr()
    p = load_params(params)
    result = score_robustness(p.data.raw, p.featurize.out, p.train.out, p.robustness)
    out.print(result.summary(), markup=False)


@app.command()
def compress(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """int8 quantization and magnitude pruning of the trained model, each measured against it -> compress.out."""
    from components.compression.compress import compress as compress_model  # torch: only the commands that need it pay

    _log_lines_to_stderr()
    p = load_params(params)
    result = compress_model(p.featurize.out, p.train.out, p.compress, p.train)
    out.print(result.summary(), markup=False)


@app.command()
def register(
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Score the champion on the test split again even if it was already.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Register even if a registered version has the same data, params and code.")
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Record the stages' outputs as one MLflow run (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db) and register
    the model: alias challenger, and champion only if it beats the current champion by register.margin."""
    from components.registry.register import record_and_register

    result = record_and_register(load_params(params), force=force, force_gate_rescore=rescore)
    out.print(result.summary() + ("" if result.registered else " (--force registers anyway)"), markup=False)


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(help="MLflow model URI, e.g. models:/msa-demo@champion, or a local model dir (or file:// URI)."),
    ],
    input_file: Annotated[Path, typer.Option("--input", help="JSONL or CSV of raw inputs, one per row.")],
    output: Annotated[
        Path | None, typer.Option(help="Where predictions go: .jsonl or .csv (default: <input>.predictions.jsonl).")
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            "--media-root",
            help="Directory the image, audio and video paths must resolve inside (default: the input's directory).",
        ),
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Load a model this project did not package. Its loader runs code: only if you trust it.",
        ),
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Score raw inputs (text, image file or path, audio/vision frames or clip files) with a registered or logged
    model."""
    from components.serving.pyfunc import local_model, predict_file
    from components.tracking.runs import connected

    settings = load_params(params).registry if params.exists() else RegisterParams()
    # A local model directory (a path or a file:// URI, read in place) needs no tracking server; models:/ or runs:/ do.
    with nullcontext() if local_model(model) is not None else connected(settings):
        result = predict_file(model, input_file, output, image_root=image_root, trust_model=trust_model)
    out.print(result.summary(), markup=False)


@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="MLflow model URI, e.g. models:/msa-demo@champion, or a local model dir.")
    ],
    host: Annotated[
        str, typer.Option("--host", "-h", help="Address to listen on; another than loopback lets others in.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: any free one).")] = 5001,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Load a model this project did not package (or ours unverified). Its loader runs code: only if you "
            "trust it.",
        ),
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Serve a model over REST with MLflow's scoring server (POST /invocations; /ping, /health, /version), each
    request's size and shape measured before MLflow parses it. Ctrl-C stops."""
    import tempfile

    from components.serving.guard import guarded_app, run_server
    from components.serving.pyfunc import local_model
    from components.tracking.runs import connected

    settings = load_params(params).registry if params.exists() else RegisterParams()
    with tempfile.TemporaryDirectory(prefix="msa-serve-") as scratch:
        with nullcontext() if local_model(model) is not None else connected(settings):
            scoring = guarded_app(model, Path(scratch), trust_model=trust_model)

        def ready(url: str) -> None:
            out.print(f"serve: {model} at {url}/invocations (Ctrl-C stops)", markup=False)

        run_server(scoring, host, port, on_ready=ready)
    out.print("serve: stopped", markup=False)


if __name__ == "__main__":  # `python -m flows.cli`, as dvc.yaml runs the stages
    app(prog_name="msa")
