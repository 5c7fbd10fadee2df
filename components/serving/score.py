"""`msa score`: a batch of raw inputs scored by one registered model version, streamed in chunks into one parquet
file that says which model scored which input; the same input and model version again is a skip.

The input is a canonical dataset directory (every split's rows, media read inside it), or a JSONL, CSV or parquet
file of raw rows. Rows are read and scored CHUNK_ROWS at a time, so memory is one chunk's however long the input
is. A `models:/<name>@<alias>` URI is pinned to the version the alias names when scoring starts: an alias moved
meanwhile (a new champion) does not mix two models in one file. The model is verified before a byte of it is read,
as `msa predict` does.

The output holds `id` (when the input has one), the model's columns (`score`, `class`), and `model_version` and
`run_id` on every row (parquet stores a constant column in a few bytes), so a day's files concatenated still say
which model scored each row; the file's metadata (`SCORED_BY`) holds the same with the input's sha256. It is written
beside the output and renamed over it once whole.

A model packaged with a drift reference (`components.monitoring`) has a uniform sample of the scored rows compared
with it: `<output>.drift.json` and `.drift.png` stand beside the scores, and a skip reads them back.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from components.core.config import DriftParams
from components.core.errors import DataError, UserError, first_line
from components.core.hashing import file_sha256, tree_digest
from components.data.dataset import MANIFEST, SPLITS, read_dataset
from components.monitoring.drift import DriftReport, DriftSample, compare, report_paths, write_report
from components.monitoring.reference import DriftReference, read_reference
from components.monitoring.summaries import Summaries
from components.serving.input_files import CHUNK_ROWS, INPUT_SUFFIXES, InputChunk, input_chunks, open_input
from components.serving.monitored import batch_summaries, prediction_values
from components.serving.predict import check_model_inputs, check_output, rows_of_file, score_chunk, staged_output
from components.serving.predictor import Predictor
from components.serving.pyfunc import LoadedModel, check_model_dir, load_model, local_model
from components.serving.values import raw_frame

__all__ = ["SCORED_BY", "ScoreResult", "ScoredBy", "pin_model", "score_input", "scored_by"]

SCORED_BY = b"msa.scored_by"  # the parquet metadata key of what scored the file (`ScoredBy`, JSON)
_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ScoredBy:
    """Which model scored which input: what makes a second run over the same input with the same model a skip."""

    model_uri: str  # as given (an alias, a version, runs:/, a directory)
    model: str  # what was loaded: models:/<name>/<version> for a registered model, else `model_uri`
    model_version: str | None
    run_id: str | None  # the registration run, from the package's signed evidence
    input: str
    input_sha256: str  # of the input file, or of every file of a dataset directory
    rows: int = 0  # not in the metadata: the file's own row count

    def same_scoring(self, other: ScoredBy) -> bool:
        return (self.model, self.run_id, self.input_sha256) == (other.model, other.run_id, other.input_sha256)


@dataclass(frozen=True)
class ScoreResult:
    output: Path
    scored_by: ScoredBy
    started: float  # unix seconds
    seconds: float
    skipped: bool  # the output already held this input scored by this model
    columns: tuple[str, ...] = ()  # of the input rows (the dataset MLflow records): the first chunk's
    drift: DriftReport | None = None  # the batch against the model's drift reference; None: the model has none
    drift_files: tuple[Path, ...] = ()  # the report (JSON) and its figure, beside the output

    @property
    def rows_per_s(self) -> float:
        return self.scored_by.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        by = self.scored_by
        model = by.model + (f" (version {by.model_version})" if by.model_version else "")
        if self.skipped:
            return f"score: {self.output} already holds {by.input} scored by {model}: skipped"
        return (
            f"score: {by.rows} rows of {by.input} by {model} -> {self.output} "
            f"({self.seconds:.1f} s, {self.rows_per_s:.0f} rows/s)"
        )


def pin_model(model_uri: str) -> tuple[str, str | None]:
    """(the URI to load, the registered version): `models:/<name>@<alias>` becomes `models:/<name>/<version>` as
    the registry names it now; `models:/<name>/<version>` is kept; other URIs have no version."""
    if match := _VERSION.match(model_uri):
        return model_uri, match["version"]
    if match := _ALIAS.match(model_uri):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            version = MlflowClient().get_model_version_by_alias(match["name"], match["alias"]).version
        except MlflowException as e:
            raise UserError(f"{model_uri}: no such registered model alias ({first_line(e)})") from None
        return f"models:/{match['name']}/{version}", str(version)
    return model_uri, None


def score_input(
    model_uri: str,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    trust_model: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    drift: DriftParams | None = None,
) -> ScoreResult:
    """Score every row of `input_path` (a dataset directory, or a JSONL, CSV or parquet file) with the model at
    `model_uri` into the parquet file `output` (default `<input>.scores.parquet`). Bounds come first: the input is
    checked (a file's every row's cheap rules, in one streaming pass) and the output place too before any row is
    scored. `progress`: a bar at a terminal. A model packaged with a drift reference has a uniform sample of the
    scored rows compared with it (`drift` settings), into `<output>.drift.json` and `.drift.png`."""
    drift = drift or DriftParams()
    started, start = time.time(), time.perf_counter()
    input_path = Path(input_path)
    output = Path(output) if output else input_path.with_name(input_path.name + ".scores.parquet")
    dataset = _is_dataset(input_path)
    check_output(output, input_path, suffixes=(".parquet",), formats="parquet (.parquet)")
    if dataset and output.resolve().is_relative_to(input_path.resolve()):
        raise DataError(output, "is inside the dataset it scores: the scores go elsewhere, the dataset stays as it is")
    local = local_model(model_uri)
    if local is not None:
        check_model_dir(local)
    pinned, version = pin_model(model_uri) if local is None else (str(local), None)
    digest = tree_digest(input_path).hexdigest() if dataset else file_sha256(input_path)
    with tempfile.TemporaryDirectory(prefix="msa-model-") as tmp:
        model = load_model(pinned, Path(tmp), trust_model=trust_model)
        run_id = model.evidence.run_id if model.evidence is not None else None
        planned = ScoredBy(model_uri, pinned, version, run_id, str(input_path), digest, 0)
        previous = scored_by(output) if output.is_file() else None
        if previous is not None and previous.same_scoring(planned):
            report, files = _previous_drift(output)
            return ScoreResult(
                output, previous, started, time.perf_counter() - start, True, drift=report, drift_files=files
            )
        todo = _dataset_rows(input_path, chunk_rows) if dataset else _file_rows(input_path, model, chunk_rows)
        reference = read_reference(model.predictor.root) if isinstance(model.predictor, Predictor) else None
        sample = DriftSample(drift.sample_rows, drift.seed) if reference is not None else None
        rows, columns = _write(output, planned, model, todo, input_path, progress, sample)
        report, files = _drift(output, reference, sample, drift)
    done = ScoredBy(**{**asdict(planned), "rows": rows})
    seconds = time.perf_counter() - start
    return ScoreResult(output, done, started, seconds, False, columns, drift=report, drift_files=files)


def _drift(
    output: Path, reference: DriftReference | None, sample: DriftSample | None, settings: DriftParams
) -> tuple[DriftReport | None, tuple[Path, ...]]:
    """The scored batch's sample compared with the model's reference, written beside `output`; none without one
    (and an older report of other scores is removed: it would describe rows this file no longer holds)."""
    if reference is None or sample is None:
        if _previous_drift(output)[0] is not None:  # ours: a report, not a file that merely shares the name
            for stale in report_paths(output):
                stale.unlink(missing_ok=True)
        return None, ()
    report = compare(reference, sample, settings)
    return report, write_report(report, output, reference, sample)


def _previous_drift(output: Path) -> tuple[DriftReport | None, tuple[Path, ...]]:
    json_path, figure = report_paths(output)
    try:
        return DriftReport.model_validate_json(json_path.read_bytes()), (json_path, figure)
    except (OSError, ValueError):
        return None, ()


def scored_by(output: Path) -> ScoredBy | None:
    """What scored the parquet file `output` (its SCORED_BY metadata, and its row count); None for a file this did
    not write."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(output)
        recorded = json.loads((metadata.metadata or {})[SCORED_BY])
        return ScoredBy(**recorded, rows=metadata.num_rows)
    except (OSError, KeyError, TypeError, ValueError):  # not parquet, or not ours
        return None


def _is_dataset(path: Path) -> bool:
    """Whether `path` is a dataset directory; else it must be a regular file of rows of a kind this reads."""
    what = "--input names a dataset directory, or a .jsonl, .csv or .parquet file of rows"
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise DataError(path, f"is a directory without {MANIFEST}: {what}")
        return True
    if not path.exists():
        raise DataError(path, f"no such file or directory: {what}")
    if path.suffix.lower() not in (*INPUT_SUFFIXES, ".parquet"):
        raise DataError(path, what)
    open_input(path).close()  # a regular file: not a FIFO, a device
    return False


@dataclass(frozen=True)
class _Rows:
    """An input's rows: how many (checked before any is scored), and the chunks with the directory their media
    paths resolve inside."""

    total: int
    chunks: Iterator[tuple[InputChunk, Path]]


def _file_rows(path: Path, model: LoadedModel, rows: int) -> _Rows:
    """A JSONL or CSV file's rows, every row's cheap rules checked first (one streaming pass); or a parquet file's."""
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path, model, rows)
    summary = check_model_inputs(path, model)
    return _Rows(summary.rows, ((chunk, path.parent) for chunk in input_chunks(path, rows)))


def _parquet_rows(path: Path, model: LoadedModel, rows: int) -> _Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, f"not a readable parquet file ({first_line(e)})") from None
    missing = [c for c in model.required if c not in table.schema_arrow.names]
    if missing:
        raise DataError(path, f"has no column {', '.join(missing)}: the model needs {', '.join(model.required)}")
    if table.metadata.num_rows == 0:
        raise DataError(path, "has no rows: nothing to score")

    def chunks() -> Iterator[tuple[InputChunk, Path]]:
        first = 1
        for batch in table.iter_batches(batch_size=rows):
            frame = pd.DataFrame(batch.to_pylist())  # frames as lists of lists, as JSONL gives them: not numpy
            yield InputChunk(frame, list(range(first, first + len(frame)))), path.parent
            first += len(frame)

    return _Rows(table.metadata.num_rows, chunks())


def _dataset_rows(root: Path, rows: int) -> _Rows:
    """Every split's rows of a canonical dataset (its label left out), its media read inside it."""
    dataset = read_dataset(root)
    if not len(dataset.samples):
        raise DataError(root, "has no samples: nothing to score")

    def chunks() -> Iterator[tuple[InputChunk, Path]]:
        first = 1
        for split in SPLITS:
            frame = raw_frame(dataset, split).drop(columns=["label"])
            for start in range(0, len(frame), rows):
                part = frame.iloc[start : start + rows].reset_index(drop=True)
                yield InputChunk(part, list(range(first, first + len(part)))), root
                first += len(part)

    return _Rows(len(dataset.samples), chunks())


def _scored(
    model: LoadedModel, todo: _Rows, source: Path, summarize: bool
) -> Iterator[tuple[InputChunk, Summaries | None, pd.DataFrame]]:
    """Each chunk with its drift summaries (with `summarize`, for a model this project packaged; else None) and
    predictions. With a model this project packaged, a thread reads, prepares (parse, tokenize, decode) and
    summarizes the next chunk while the model scores this one: ONNX Runtime and torch release the GIL while they
    compute, so on two cores scoring runs at about the model's own speed."""
    if not isinstance(model.predictor, Predictor):
        for chunk, media_root in todo.chunks:
            yield chunk, None, score_chunk(model, chunk, source, media_root)
        return
    predictor = model.predictor

    def prepare_next() -> tuple[InputChunk, list, Summaries | None] | None:
        item = next(todo.chunks, None)
        if item is None:
            return None
        chunk, media_root = item
        with rows_of_file(chunk, source):
            batches = predictor.prepare_frame(chunk.frame, source=source, image_root=media_root)
        return chunk, batches, batch_summaries(predictor, batches) if summarize else None

    with ThreadPoolExecutor(1, thread_name_prefix="msa-score-prepare") as pool:
        ahead = pool.submit(prepare_next)
        while (prepared := ahead.result()) is not None:
            ahead = pool.submit(prepare_next)
            chunk, batches, summaries = prepared
            yield chunk, summaries, predictor.run(batches)


def _write(
    output: Path,
    scoring: ScoredBy,
    model: LoadedModel,
    todo: _Rows,
    source: Path,
    progress: bool,
    sample: DriftSample | None,
) -> tuple[int, tuple[str, ...]]:
    """Score each chunk and append it to a parquet file staged beside `output`, each chunk's rows offered to the
    drift `sample`; the number of rows written and the input's columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, writer = 0, None
    columns: tuple[str, ...] = ()
    recorded = {k: v for k, v in asdict(scoring).items() if k != "rows"}
    bar = tqdm(total=todo.total, desc="score", unit="row", disable=None if progress else True)
    with bar, staged_output(output, "the scores") as sink:
        for chunk, summaries, predictions in _scored(model, todo, source, summarize=sample is not None):
            if sample is not None and summaries is not None:
                sample.add(summaries, prediction_values(model.predictor, predictions))
            if "id" in chunk.frame.columns:  # as text: JSONL ids may be numbers in one chunk and words in the next
                predictions.insert(0, "id", chunk.frame["id"].astype("string").to_numpy())
            predictions["model_version"] = pd.array([scoring.model_version] * len(predictions), dtype="string")
            predictions["run_id"] = pd.array([scoring.run_id] * len(predictions), dtype="string")
            table = pa.Table.from_pandas(predictions, preserve_index=False)
            if writer is None:
                schema = table.schema.with_metadata({SCORED_BY: json.dumps(recorded)})
                writer, columns = pq.ParquetWriter(sink, schema), tuple(map(str, chunk.frame.columns))
            writer.write_table(table.cast(writer.schema))
            rows += len(predictions)
            bar.update(len(predictions))
        if writer is None:
            raise DataError(source, "has no rows: nothing to score")
        writer.close()
    return rows, columns
