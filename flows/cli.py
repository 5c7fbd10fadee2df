"""The `msa` command line: one subcommand per stage, calling the same component functions as the DVC stages
and the Prefect tasks. Settings come from params.yaml; options override them for one run."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer.core import TyperGroup

from components.core.config import DEFAULT_PARAMS, Params, RegisterParams, load_params, with_seeds
from components.core.errors import TrackingError, UserError
from components.data.validation import validate_dataset  # GX itself: imported only when validating
from components.features.featurize import featurize as featurize_dataset
from flows.commands.data import data_app
from flows.commands.options import ParamsOpt, err, out
from flows.commands.summary import run_summary

__all__ = [
    "app",
    "compress",
    "evaluate",
    "featurize",
    "predict",
    "register",
    "robustness",
    "run",
    "score",
    "serve",
    "train",
    "tune",
    "validate",
]

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the fallback Prefect itself uses, one of its dependencies
    import toml as tomllib

if TYPE_CHECKING:
    from typer._click import Command, Context  # what TyperGroup's methods take: typer's own copy of click

    from components.registry.register import Registration, Skipped

# At exit Python collects garbage over every object the imports made: with MLflow and pandas loaded, 1-2 s, as long as
# the rest of an `msa run` that skips. What is left then needs no collecting: files and connections close with the
# process.
atexit.register(gc.freeze)


class _UserErrorsAsOneLine(TyperGroup):
    """The one place user errors are caught: bad input, bad settings, an unreachable server or an interrupt end
    with one line on stderr and exit code 1 (130 for an interrupt); anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: Context) -> Any:
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

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        """As click's, noting the full name of the command invoked (`data import csv`) for the interrupt line."""
        name, command, rest = super().resolve_command(ctx, args)
        words, leaf = [name or ""], command
        for word in rest:
            if not isinstance(leaf, TyperGroup) or (leaf := leaf.get_command(ctx, word)) is None:  # not a group
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
    "data demo",
    "data import mmsa",
    "data import csv",
    "data import clips",
    "data import tsv",
    "validate",
    "featurize",
    "evaluate",
    "robustness",
    "compress",
)
_WHOLE_OR_NOTHING = "; each file it writes is replaced whole or not at all, so nothing half-written was kept"


app = typer.Typer(
    cls=_UserErrorsAsOneLine,
    no_args_is_help=True,
    add_completion=False,
    help=__doc__,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data_app, name="data")


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
    result: Registration | Skipped | None = None if force else _skip_before_prefect(params, seeds)
    if result is None:
        from flows.pipeline import pipeline

        result = pipeline(params=str(params), force=force, seeds=seeds)
    registration = cast("Registration", result) if result.registered else None  # only a Registration is registered
    if registration is None:
        outcome = f"{result.summary()} (--force trains anyway)"
    else:
        what = "champion" if registration.promoted else "challenger"
        outcome = f"{registration.name} version {registration.version} is {what} ({registration.decision})"
    out.print(f"run: {outcome} [{time.perf_counter() - started:.1f}s]", markup=False)
    if registration is not None:
        out.print(run_summary(load_params(params), registration), markup=False)


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
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Also say why: each modality's share of the score and the words that moved it most (columns "
            "modality_shares, top_words; one model row more per modality and per word, serve.explain_words at most).",
        ),
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Score raw inputs (text, image file or path, audio/vision frames or clip files) with a registered or logged
    model."""
    from components.serving.predict import predict_file
    from components.serving.pyfunc import local_model
    from components.tracking.connection import connected

    settings = load_params(params).registry if params.exists() else RegisterParams()
    # A local model directory (a path or a file:// URI, read in place) needs no tracking server; models:/ or runs:/ do.
    with nullcontext() if local_model(model) is not None else connected(settings):
        result = predict_file(
            model, input_file, output, image_root=image_root, trust_model=trust_model, explain=explain
        )
    out.print(result.summary(), markup=False)


@app.command()
def score(
    model: Annotated[
        str, typer.Option(help="MLflow model URI, e.g. models:/msa-demo@champion (pinned to the version it names now).")
    ],
    input_path: Annotated[
        Path,
        typer.Option("--input", help="A dataset directory (data/raw), or a JSONL, CSV or parquet file of raw rows."),
    ],
    output: Annotated[
        Path | None, typer.Option(help="The parquet file of scores (default: <input>.scores.parquet).")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Score a batch of raw inputs with a registered model into a parquet file, chunk by chunk, with the model
    version, run id and input hash recorded; the same input and version again is a skip. A sample of the rows is
    compared with the model's drift reference, per modality, into <output>.drift.json and .drift.png. Records an
    MLflow run (rows, rows/s, the input as a dataset, the drift report) on MLFLOW_TRACKING_URI. The `score` flow
    does the same on a work pool, and a drifted batch there emits the event that starts retraining."""
    from components.serving.score_logged import score_and_record

    settings = load_params(params) if params.exists() else Params()
    result, _ = score_and_record(model, input_path, output, settings.registry, settings.drift)
    out.print(result.summary(), markup=False)
    if result.drift is not None:
        out.print(f"{result.drift.summary()} ({result.drift_files[0]})", markup=False)


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
    from components.tracking.connection import connected

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
