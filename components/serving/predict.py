"""`msa predict`: a file of raw rows scored into a file of predictions, with bounds before work and the output
written whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from components.core.atomic import chmod_new
from components.core.errors import DataError, UserError
from components.serving.explain import EXPLAIN, OUTPUTS
from components.serving.input_files import InputChunk, InputSummary, check_inputs, input_chunks, input_kind, open_input
from components.serving.predictor import Predictor
from components.serving.pyfunc import LoadedModel, check_model_dir, load_model, local_model

__all__ = [
    "OUTPUT_SUFFIXES",
    "SYSTEM_DIRS",
    "PredictResult",
    "StagedFile",
    "check_model_inputs",
    "check_output",
    "predict_file",
    "rows_of_file",
    "score_chunk",
    "staged_output",
]

OUTPUT_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv")
SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))  # the kernel's and devices' files: never an output


@dataclass(frozen=True)
class PredictResult:
    output: Path
    rows: int
    seconds: float

    def summary(self) -> str:
        return f"predict: {self.rows} rows -> {self.output} ({self.seconds:.1f} s)"


def predict_file(
    model_uri: str,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    trust_model: bool = False,
    explain: bool = False,
) -> PredictResult:
    """Score the raw rows in `input_path` with an MLflow model (e.g. models:/<name>@champion, a local model
    directory or its file:// URI, read in place) into `output` (JSONL, or CSV by its suffix; default
    `<input>.predictions.jsonl`), carrying an `id` column through.

    Bounds come before work: the input must be a regular file and the output a writable place (not a tracked
    file, not /proc, /sys or /dev) before the model loads; a first streaming pass checks every row's cheap rules
    before any row is scored; then rows are scored CHUNK_ROWS at a time into a temporary file renamed over
    `output` at the end, so memory stays bounded and a failure leaves any older `output` as it was.

    Paths in `image` are read inside `image_root` (default: the input file's directory). A model this project
    did not package runs its own code when loaded, so it needs `trust_model`. `explain`: every row also gets its
    explanation (`components.serving.explain`), as a row whose `explain` column is true does.
    """
    start = time.perf_counter()
    input_path = Path(input_path)
    output = Path(output) if output else input_path.with_suffix(".predictions.jsonl")
    input_kind(input_path)
    open_input(input_path).close()
    check_output(output, input_path)
    local = local_model(model_uri)
    if local is not None:
        check_model_dir(local)
    root = Path(image_root) if image_root is not None else input_path.parent
    as_csv = output.suffix.lower() == ".csv"
    with tempfile.TemporaryDirectory(prefix="msa-model-") as tmp:
        model = load_model(model_uri if local is None else str(local), Path(tmp), trust_model=trust_model)
        summary = check_model_inputs(input_path, model)
        if explain and not isinstance(model.predictor, Predictor):
            raise UserError(f"{model_uri}: --explain explains models this project packaged; this one runs its own code")
        rows = 0
        with staged_output(output) as sink:
            for chunk in input_chunks(input_path):
                if explain:
                    chunk.frame[EXPLAIN] = True
                predictions = score_chunk(model, chunk, input_path, root)
                if "id" in summary.columns:
                    ids = chunk.frame["id"].to_numpy() if "id" in chunk.frame.columns else [None] * len(predictions)
                    predictions.insert(0, "id", ids)
                if as_csv:
                    for column in set(OUTPUTS) & set(predictions.columns):  # a cell of CSV holds JSON text
                        predictions[column] = [None if v is None else json.dumps(v) for v in predictions[column]]
                    text = predictions.to_csv(index=False, header=rows == 0)
                else:
                    text = predictions.to_json(orient="records", lines=True)
                    text += "" if text.endswith("\n") else "\n"
                sink.write(text.encode("utf-8"))
                rows += len(predictions)
    return PredictResult(output, rows, time.perf_counter() - start)


def check_model_inputs(path: Path, model: LoadedModel) -> InputSummary:
    """`check_inputs` with what `model` needs: its required columns, and with ours, text within its bounds."""
    ours = isinstance(model.predictor, Predictor)
    return check_inputs(
        path,
        required=model.required,
        takes=model.input_names,
        text=ours and model.predictor.spec.text is not None,
        max_text_chars=model.predictor.limits.max_text_chars if ours else None,
    )


def score_chunk(model: LoadedModel, chunk: InputChunk, source: Path, image_root: Path) -> pd.DataFrame:
    """Predictions for one chunk; errors name the row's number in the file, not in the chunk."""
    if not isinstance(model.predictor, Predictor):
        predictions = model.predictor.predict(chunk.frame)
        return predictions if isinstance(predictions, pd.DataFrame) else pd.DataFrame(predictions)
    with rows_of_file(chunk, source):  # ours: errors name this file and row
        return model.predictor.predict_frame(chunk.frame, source=source, image_root=image_root)


@contextmanager
def rows_of_file(chunk: InputChunk, source: Path) -> Iterator[None]:
    """A DataError about a row of `chunk` names the row's number in `source`, not in the chunk."""
    try:
        yield
    except DataError as e:
        if e.path != source or e.row is None or not 1 <= e.row <= len(chunk.rows):
            raise
        raise DataError(e.path, e.rule, row=chunk.rows[e.row - 1], sample_id=e.sample_id) from None


def check_output(
    output: Path, input_path: Path, suffixes: tuple[str, ...] = OUTPUT_SUFFIXES, formats: str = ".jsonl or .csv"
) -> None:
    """Everything that would make writing the predictions (a file named with one of `suffixes`: `formats`) fail or
    harm a file, checked before the model loads."""
    if output.is_dir():
        raise DataError(output, "is a directory: --output names the predictions file (.jsonl or .csv)")
    try:
        place, target = output.parent.resolve(), output.resolve()
        same = output.exists() and output.samefile(input_path)
        existing = place
        while not existing.exists():
            existing = existing.parent
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise DataError(output, f"cannot reach where it would go: {getattr(e, 'strerror', None) or e}") from None
    if same or target == input_path.resolve():
        raise DataError(output, "is the input file: predictions never overwrite the rows they score")
    if output.suffix.lower() not in suffixes:
        raise DataError(output, f"predictions are written as {formats}: name the file so")
    for system in SYSTEM_DIRS:
        if place.is_relative_to(system) or target.is_relative_to(system):
            raise DataError(
                output, f"is under {system}, the system's own files: write predictions to a directory of yours"
            )
    if not existing.is_dir():
        raise DataError(output, f"cannot be created under {existing}: it is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(output, f"cannot write in {existing}: permission denied")
    if output.exists() and not output.is_file():
        raise DataError(output, "exists and is not a regular file: predictions go to a file of their own")
    if output.exists() and _tracked_by_git(output):
        raise DataError(output, "is a file git tracks: predictions never overwrite it; choose another --output name")


def _tracked_by_git(path: Path) -> bool:
    """Whether the repository holding `path` tracks it; False where git is absent or `path` is in no repository."""
    # No safe.directory override, and no fsmonitor: a repository someone else owns runs none of its hooks here.
    command = [
        "git",
        "-c",
        "core.fsmonitor=false",
        "--literal-pathspecs",
        "-C",
        str(path.parent),
        "ls-files",
        "--error-unmatch",
        "--",
        path.name,
    ]
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextmanager
def staged_output(output: Path, what: str = "the predictions") -> Iterator[StagedFile]:
    """A file beside `output` to write `what` into, renamed over `output` once all is written; on any failure the
    temporary file (and any directory made for it) goes and an older `output` stays as it was."""
    made = [p for p in (output.parent, *output.parent.parents) if not p.exists()][::-1]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        chmod_new(fd)
    except OSError as e:
        _remove_empty(made)
        raise DataError(output, f"cannot write {what}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            yield StagedFile(file, output, what)
            file.flush()
            os.fsync(file.fileno())
        Path(tmp).replace(output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _remove_empty(made)
        raise


class StagedFile:
    """The staged file as a writer (pyarrow's ParquetWriter writes to it too): a failed write is a DataError that
    names the output."""

    def __init__(self, file: BinaryIO, output: Path, what: str) -> None:
        self._file, self._output, self._what = file, output, what

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            raise DataError(self._output, f"cannot write {self._what}: {e.strerror or e}") from None

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file.closed


def _remove_empty(directories: list[Path]) -> None:
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            return
