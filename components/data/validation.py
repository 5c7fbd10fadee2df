"""The validate stage: the data contract of `components.data.dataset` as one Great Expectations suite.

`validate_dataset` reads the canonical dataset, builds one validation frame (the samples plus derived check
columns computed here by small pure functions: per-id split count, image decode result, sequence check, content
leakage count), runs ONE GX checkpoint over it, and writes `reports/validation.json`, the same report as one
self-contained page `reports/validation.html` (readable offline: GX's Data Docs load their assets from CDNs), and
the GX Data Docs site.
Every expectation carries a human rule name (`meta["rule"]`), which the summary and the report use.

Things GX cannot see in a table (image files, sequence arrays, content shared across splits) become derived
columns whose value is "ok" or the reason, so a failure names the sample id and says what is wrong with it.

GX is imported lazily (it takes seconds), with analytics off (no network) and progress bars off.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.atomic import replace_directory, write_json, write_text
from components.core.config import ValidateParams
from components.data.dataset import (
    CLIP_COLUMNS,
    SPLITS,
    Manifest,
    SequenceArray,
    SequenceSpec,
    clip_path_problem,
    image_path_problem,
    is_null,
    read_dataset,
)

REQUIRED_COLUMNS = ("id", "split", "text", "label", "image", "seq_index")
DATA_DOCS_INDEX = "index.html"  # GX's site entry page: also what shows that a Data Docs directory is ours to replace
OK = "ok"
# Derived columns; their values are reasons written for people, shown unquoted in the summary.
ID_SPLITS, IMAGE_CHECK, SEQUENCE_CHECK, CLIP_CHECK, LEAKAGE_SPLITS = (
    "id_split_count",
    "image_check",
    "sequence_check",
    "clip_check",
    "leakage_split_count",
)
REASON_COLUMNS, COUNT_COLUMNS = (IMAGE_CHECK, SEQUENCE_CHECK, CLIP_CHECK), (ID_SPLITS, LEAKAGE_SPLITS)
_SITE = "validation"
_SHOWN_VALUE_CHARS = 60


# ---------------------------------------------------------------------------------------------------------------
# Public result types


@dataclass(frozen=True)
class Check:
    """One expectation that was evaluated."""

    rule: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None  # rows that broke it (may be > 0 on success when `mostly` tolerates them)


@dataclass(frozen=True)
class Failure:
    """A failed expectation with the offending rows (`examples`: each {"id": ..., "value": ...})."""

    rule: str
    expectation: str
    column: str | None
    unexpected_count: int | None
    examples: list[dict] = field(default_factory=list)
    message: str = ""  # human detail: what was observed, e.g. "missing column(s): label" or "2 rows, e.g. s01, s01"


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    dataset: str
    version: str
    n_samples: int
    checks: list[Check]
    failures: list[Failure]
    data_docs: Path | None = None  # index.html of the GX Data Docs site
    html: Path | None = None  # the same report as one self-contained page: readable offline (validate.report .html)

    @property
    def evaluated(self) -> int:
        return len(self.checks)

    def summary(self) -> str:
        head = f"Validation of '{self.dataset}' v{self.version}"
        if self.success:
            lines = [f"{head} passed: {self.evaluated} expectations on {self.n_samples} samples"]
        else:
            lines = [f"{head} failed: {len(self.failures)} of {self.evaluated} expectations"]
            lines += [f"  ✗ {f.rule}{f' [{f.column}]' if f.column else ''}: {f.message}" for f in self.failures]
        for check in self.checks:
            if check.success and check.unexpected_count:
                lines.append(f"  ! {check.rule} [{check.column}]: {_rows(check.unexpected_count)} within tolerance")
        if self.html is not None:
            lines.append(f"  report: {self.html} (every rule, offline)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return _jsonable(
            {
                "success": self.success,
                "dataset": self.dataset,
                "version": self.version,
                "n_samples": self.n_samples,
                "evaluated": self.evaluated,
                "failed": len(self.failures),
                "failures": [vars(f) for f in self.failures],
                "expectations": [vars(c) for c in self.checks],
                "data_docs": str(self.data_docs) if self.data_docs else None,
                "html": str(self.html) if self.html else None,
            }
        )


# ---------------------------------------------------------------------------------------------------------------
# The stage


def validate_dataset(path: Path, params: ValidateParams) -> ValidationReport:
    """Validate the dataset at `path`; write the JSON report and the Data Docs site; never raise on failure.

    A `DataError` from files that cannot be read at all (manifest, parquet, safetensors) propagates.
    """
    dataset = read_dataset(path)
    root = Path(path)
    manifest, samples = dataset.manifest, dataset.samples
    frame = build_frame(root, manifest, samples, dataset.sequences)
    rules = plan_expectations(manifest, frame, dataset.sequences, params)
    suite = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{manifest.name}-v{manifest.version}")  # names Data Docs files
    with replace_directory(params.data_docs, marker=DATA_DOCS_INDEX) as staging:
        results = _run_checkpoint(frame, rules, suite, staging, partial_count=max(params.examples, 20))
    planned = {rule.rule: i for i, rule in enumerate(rules)}  # GX groups results by column; report them as planned
    results.sort(key=lambda r: planned.get((r.expectation_config.meta or {}).get("rule"), len(planned)))
    report = _report(manifest, len(samples), results, params.examples, Path(params.data_docs) / DATA_DOCS_INDEX)
    report = replace(report, html=html_path(params.report))
    data = report.to_dict()
    write_json(params.report, data)
    # GX's Data Docs load their styles and scripts from CDNs and show a blank page offline: this page is the same
    # report, rendered from the JSON just written, with nothing to fetch.
    write_text(report.html, render_html(data))
    return report


def html_path(report: str | Path) -> Path:
    """Where the offline page of the JSON report at `report` goes: beside it, as .html."""
    return Path(report).with_suffix(".html")


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 80em;
       padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.verdict { font-size: 1.2em; font-weight: 600; padding: 0.4em 0.8em; border-radius: 4px; display: inline-block; }
.pass { background: #e3f4e1; color: #1d5e1a; } .fail { background: #fbe3e1; color: #8a1c12; }
.warn { background: #fff4d6; color: #7a5300; }
table { border-collapse: collapse; width: 100%; margin-top: 1em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px ui-monospace, Menlo, Consolas, monospace; background: #f4f4f4; padding: 0 0.2em; }
ul.examples { margin: 0.2em 0 0; padding-left: 1.2em; } .muted { color: #666; }
"""


def render_html(report: dict) -> str:
    """The JSON validation report as one self-contained HTML page (no external styles, scripts or fonts): the
    verdict, then every rule with pass/fail, its count of offending rows, and for a failure the message and the
    offending ids and values."""
    from html import escape

    def text(value: Any) -> str:
        return escape("" if value is None else str(value))

    failures = {(f["rule"], f["column"]): f for f in report.get("failures", [])}
    rows = []
    for check in report.get("expectations", []):
        failure = failures.get((check["rule"], check["column"]))
        count = check.get("unexpected_count")
        if not check["success"]:
            status, css = "FAIL", "fail"
        elif count:
            status, css = "pass (within tolerance)", "warn"
        else:
            status, css = "pass", "pass"
        detail = ""
        if failure is not None:
            detail = f"<div>{text(failure.get('message'))}</div>"
            shown = failure.get("examples") or []
            if shown:
                values = [(e.get("id"), _value_text(e.get("value"), check["column"])) for e in shown]
                items = "".join(f"<li>id <code>{text(i)}</code>: <code>{text(v)}</code></li>" for i, v in values)
                detail += f'<ul class="examples">{items}</ul>'
        rows.append(
            f'<tr><td><span class="verdict {css}" style="font-size:0.9em">{status}</span></td>'
            f"<td>{text(check['rule'])}</td><td>{text(check['column'])}</td>"
            f'<td class="n">{"" if count is None else count}</td><td>{detail}</td>'
            f'<td class="muted"><code>{text(check["expectation"])}</code></td></tr>'
        )
    passed = report.get("success")
    evaluated, failed = report.get("evaluated", 0), report.get("failed", 0)
    verdict = (
        f"passed: {evaluated} expectations on {report.get('n_samples')} samples"
        if passed
        else f"FAILED: {failed} of {evaluated} expectations"
    )
    title = f"Validation of {report.get('dataset')} v{report.get('version')}"
    docs = report.get("data_docs")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{text(title)}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{text(title)}</h1>\n"
        f'<p class="verdict {"pass" if passed else "fail"}">{text(verdict)}</p>\n'
        '<p class="muted">Written by <code>msa validate</code> from the JSON report beside this page (the same '
        "rules, in the order they ran). A rule may pass with offending rows where it tolerates some (its "
        "<code>mostly</code>)."
        + (f" Great Expectations' own Data Docs: <code>{text(docs)}</code> (they need a network)." if docs else "")
        + "</p>\n<table>\n<thead><tr><th>result</th><th>rule</th><th>column</th><th>offending rows</th>"
        "<th>what was found (ids and values)</th><th>expectation</th></tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# Derived columns (pure functions of the samples, images and sequences)


def build_frame(
    root: Path, manifest: Manifest, samples: pd.DataFrame, sequences: Mapping[str, SequenceArray]
) -> pd.DataFrame:
    """The samples plus the derived check columns, in the form GX checks.

    String columns become `object`: GX compares a pandas 3 `str` dtype with no type name it knows, while for
    object columns it checks each value's Python type, which also names the rows holding a wrong type.
    """
    frame = samples.reset_index(drop=True).copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.StringDtype):
            frame[column] = frame[column].astype(object)
    n = len(frame)
    has = frame.columns.__contains__
    texts = frame["text"] if has("text") else pd.Series([None] * n, dtype=object)
    image_digests: list[str | None] = [None] * n
    seq_index = _integer_index(frame["seq_index"]) if has("seq_index") else None

    if has("id") and has("split"):
        frame[ID_SPLITS] = splits_per_key(frame["id"], frame["split"])
    if has("image") and manifest.modalities.image is not None:
        checks, image_digests = image_checks(root, frame["image"])
        frame[IMAGE_CHECK] = pd.Series(checks, dtype=object)
    specs = manifest.modalities.sequences
    if specs and seq_index is not None:
        frame[SEQUENCE_CHECK] = pd.Series(sequence_checks(seq_index, specs, sequences), dtype=object)
    clip_digests: list[str | None] = [None] * n
    if manifest.modalities.clips:
        checks, clip_digests = clip_checks(root, manifest, frame)
        frame[CLIP_CHECK] = pd.Series(checks, dtype=object)
    if has("split"):
        keys = content_keys(texts, image_digests, seq_index, specs, sequences, clip_digests)
        frame[LEAKAGE_SPLITS] = splits_per_key(pd.Series(keys, dtype=object), frame["split"])
    return frame


def splits_per_key(keys: pd.Series, splits: pd.Series) -> pd.Series:
    """For each row, how many distinct splits hold a row with the same key (null where the key is null)."""
    counts = pd.DataFrame({"key": keys.to_numpy(), "split": splits.to_numpy()}).groupby("key", dropna=True)["split"]
    per_row = counts.transform("nunique").astype("Int64").set_axis(keys.index)
    return per_row.mask(per_row == 0)  # only null splits: "split present" reports those rows


def normalise_text(text: str) -> str:
    """Casefolded, whitespace collapsed: what counts as "the same text" for leakage."""
    return " ".join(text.casefold().split())


def image_checks(root: Path, images: pd.Series) -> tuple[list[str | None], list[str | None]]:
    """Per row: "ok" or why the image is unusable, and the SHA-256 of its bytes (None where null or unreadable).

    Images are decoded fully (`load()`), not just `verify()`-ed, so truncated files fail here and not in
    featurize. Paths must stay inside the dataset root (see `image_path_problem`).
    """
    from components.data.images import ImageProblem, open_image  # Pillow: only when a dataset has images

    cache: dict[str, tuple[str, str | None]] = {}

    def check(value: str) -> tuple[str, str | None]:
        if problem := image_path_problem(value):
            return problem, None
        try:
            data = (root / value).read_bytes()
        except FileNotFoundError:
            return f"missing file {value}", None
        except OSError as e:
            return f"cannot read {value}: {e.strerror or e}", None
        try:
            open_image(data)
        except ImageProblem as e:
            return f"cannot decode {value}: {e}", None
        return OK, hashlib.sha256(data).hexdigest()

    checks: list[str | None] = []
    digests: list[str | None] = []
    for value in images:
        if is_null(value):
            checks.append(None)
            digests.append(None)
            continue
        if not isinstance(value, str):
            checks.append(f"not a path: {value!r}")
            digests.append(None)
            continue
        if value not in cache:
            cache[value] = check(value)
        result, digest = cache[value]
        checks.append(result)
        digests.append(digest)
    return checks, digests


def clip_checks(root: Path, manifest: Manifest, frame: pd.DataFrame) -> tuple[list[str | None], list[str | None]]:
    """Per row: "ok" or why its clips are unusable (a path outside audio/ or video/, a missing file, a wrong format,
    over the manifest's `clip_bounds`, not decoding to the end, a required clip absent), and a SHA-256 over its
    clips' bytes; None where a row has no clip and needs none."""
    from components.data.media import ClipProblem, NoAudioStream, check_clip, read_clip  # PyAV: only with clips

    clips = manifest.modalities.clips
    bounds = manifest.clips
    columns = {c: frame[c].tolist() if c in frame.columns else [None] * len(frame) for c in CLIP_COLUMNS}
    checks: list[str | None] = []
    digests: list[str | None] = []
    for i in range(len(frame)):
        audio, video = columns["audio"][i], columns["video"][i]
        problems, digest = [], hashlib.sha256()
        needs = {"audio": "audio" in clips and is_null(audio) and is_null(video), "video": "vision" in clips}
        for modality, spec in clips.items():
            if not spec.allow_missing and (is_null(video) if modality == "vision" else needs["audio"]):
                problems.append(f"no {'video' if modality == 'vision' else 'audio or video'} clip for {modality}")
        for column, value in (("audio", audio), ("video", video)):
            if is_null(value):
                continue
            if not isinstance(value, str):
                problems.append(f"not a path: {value!r}")
                continue
            if problem := clip_path_problem(value, column):
                problems.append(problem)
                continue
            if not (root / value).exists():
                problems.append(f"missing file {value}")
                continue
            try:
                data = read_clip(root / value, bounds.max_bytes)
                soundtrack = column == "video" and "audio" in clips and is_null(audio)
                check_clip(data, column, bounds, soundtrack=soundtrack)
            except NoAudioStream:
                if not clips["audio"].allow_missing:
                    problems.append(f"{value}: no soundtrack, and no audio clip for audio")
            except ClipProblem as e:
                problems.append(f"{value}: {e}")
                continue
            digest.update(hashlib.sha256(data).digest())
        present = not (is_null(audio) and is_null(video))
        checks.append("; ".join(problems) if problems else (OK if present else None))
        digests.append(digest.hexdigest() if present and not problems else None)
    return checks, digests


def sequence_problems(modality: str, spec: SequenceSpec, array: SequenceArray) -> str | None:
    """Why the arrays of one modality do not fit the manifest as a whole (checked once, not per row)."""
    features, lengths = array.features, array.lengths
    if features.ndim != 3 or features.shape[1:] != (spec.max_len, spec.dim):
        return (
            f"{modality} features have shape {list(features.shape)}, "
            f"manifest expects [N, max_len={spec.max_len}, dim={spec.dim}]"
        )
    if not np.issubdtype(features.dtype, np.floating):
        return f"{modality} features are {features.dtype}, expected float"
    if lengths.shape != (features.shape[0],):
        return f"{modality} lengths have shape {list(lengths.shape)}, expected [{features.shape[0]}] (one per row)"
    if not np.issubdtype(lengths.dtype, np.integer):
        return f"{modality} lengths are {lengths.dtype}, expected integers"
    return None


def sequence_checks(
    seq_index: tuple[np.ndarray, np.ndarray], specs: Mapping[str, SequenceSpec], sequences: Mapping[str, SequenceArray]
) -> list[str | None]:
    """Per row: "ok" or the reasons its sequences are unusable; None where `seq_index` is null.

    `seq_index` is (int64 values, present mask). Shapes are checked once per modality; row range, lengths and
    finiteness are vectorised over the rows of each array.
    """
    index, present = seq_index
    reasons: list[list[str]] = [[] for _ in range(len(index))]

    def flag(mask: np.ndarray, message: Any) -> None:
        for i in np.flatnonzero(mask):
            reasons[i].append(message(i) if callable(message) else message)

    for modality, spec in specs.items():
        array = sequences[modality]
        problem = sequence_problems(modality, spec, array)
        if problem:
            flag(present, problem)
            continue
        rows = array.features.shape[0]
        out_of_range = present & ((index < 0) | (index >= rows))
        flag(out_of_range, lambda i, m=modality, r=rows: f"row {index[i]} out of range: {m} has {r} rows")
        inside = present & ~out_of_range
        if not inside.any():
            continue
        at = np.where(inside, index, 0)
        lengths = array.lengths[at]
        bad_length = inside & ((lengths < 0) | (lengths > spec.max_len))
        flag(bad_length, lambda i, m=modality, s=spec, ln=lengths: f"{m} length {ln[i]} out of [0, {s.max_len}]")
        flag(inside & np.isnan(array.features).any(axis=(1, 2))[at], f"{modality} features contain NaN")
        flag(inside & np.isinf(array.features).any(axis=(1, 2))[at], f"{modality} features contain inf")
    return [("; ".join(r) if r else OK) if present[i] else None for i, r in enumerate(reasons)]


def content_keys(
    texts: pd.Series,
    image_digests: Sequence[str | None],
    seq_index: tuple[np.ndarray, np.ndarray] | None,
    specs: Mapping[str, SequenceSpec],
    sequences: Mapping[str, SequenceArray],
    clip_digests: Sequence[str | None] = (),
) -> list[str | None]:
    """Per row: a hash of its content (normalised text, image bytes, its sequence rows, its clips' bytes); None
    with no content.

    Rows with equal keys hold the same sample, whatever their ids: in different splits, that is leakage.
    """
    usable = {m: sequences[m] for m in specs if m in sequences and sequence_problems(m, specs[m], sequences[m]) is None}
    keys: list[str | None] = []
    for i, text in enumerate(texts):
        parts: list[bytes] = []
        if isinstance(text, str):
            parts.append(b"text:" + normalise_text(text).encode("utf-8"))
        if image_digests[i] is not None:
            parts.append(b"image:" + image_digests[i].encode("ascii"))
        if i < len(clip_digests) and clip_digests[i] is not None:
            parts.append(b"clips:" + clip_digests[i].encode("ascii"))
        row = int(seq_index[0][i]) if seq_index is not None and seq_index[1][i] else -1
        for modality, array in sorted(usable.items()):
            if 0 <= row < array.features.shape[0]:
                length = int(array.lengths[row])
                values = array.features[row, :length] if 0 <= length <= array.features.shape[1] else array.features[row]
                parts.append(modality.encode("ascii") + b":" + np.ascontiguousarray(values).tobytes())
        if not parts:
            keys.append(None)
            continue
        digest = hashlib.sha256()
        for part in parts:  # length-prefixed, so the boundaries between parts cannot shift
            digest.update(len(part).to_bytes(8, "little") + part)
        keys.append(digest.hexdigest())
    return keys


# ---------------------------------------------------------------------------------------------------------------
# The suite, as plain data (GX-free, so it can be planned and tested without importing GX)


@dataclass(frozen=True)
class Rule:
    rule: str
    expectation: str  # a class name in great_expectations.expectations
    kwargs: dict
    problem: str | None = None  # what a failure means, when the rule name alone does not say it

    @property
    def note(self) -> str:
        """Shown beside the expectation in Data Docs."""
        return f"Rule: {self.rule}" + (f" (a failure means: {self.problem})" if self.problem else "")


def plan_expectations(
    manifest: Manifest, frame: pd.DataFrame, sequences: Mapping[str, SequenceArray], params: ValidateParams
) -> list[Rule]:
    """The expectations for this manifest, only on columns that exist (a missing one is reported once)."""
    has = frame.columns.__contains__
    modalities = manifest.modalities
    label = manifest.label
    clip_columns = list(CLIP_COLUMNS) if modalities.clips else []
    required = {"column_set": [*REQUIRED_COLUMNS, *clip_columns], "exact_match": False}
    rules = [Rule("required columns present", "ExpectTableColumnsToMatchSet", required)]

    def add(column: str, rule: str, expectation: str, problem: str | None = None, **kwargs: Any) -> None:
        if has(column):
            rules.append(Rule(rule, expectation, {"column": column, **kwargs}, problem))

    # Types. Value rules below need the right type to be meaningful, so they run only where it holds.
    string_types = ["str"]
    for column in ("id", "split", "text", "image", *clip_columns):
        add(column, f"{column} is a string", "ExpectColumnValuesToBeInTypeList", type_list=string_types)
    if label.kind == "regression":
        add("label", "label is a float (regression)", "ExpectColumnValuesToBeInTypeList", type_list=_FLOATS)
    else:
        add("label", "label is a string (classification)", "ExpectColumnValuesToBeInTypeList", type_list=string_types)
    add("seq_index", "seq_index is an integer", "ExpectColumnValuesToBeInTypeList", type_list=_INTEGERS)

    # Ids and splits.
    add("id", "ids present", "ExpectColumnValuesToNotBeNull")
    add("id", "unique ids", "ExpectColumnValuesToBeUnique")
    add("split", "splits present", "ExpectColumnValuesToNotBeNull")
    add("split", "split is train, valid or test", "ExpectColumnValuesToBeInSet", value_set=list(SPLITS))
    add("split", "all splits present", "ExpectColumnDistinctValuesToContainSet", value_set=list(SPLITS))
    add(ID_SPLITS, "splits disjoint", "ExpectColumnValuesToBeInSet", "id in several splits", value_set=[1])

    # Labels.
    add("label", "labels present", "ExpectColumnValuesToNotBeNull")
    if label.kind == "regression":
        if has("label") and pd.api.types.is_numeric_dtype(frame["label"]):
            rng = f"[{label.min:g}, {label.max:g}]"
            add(
                "label",
                f"label within {rng}",
                "ExpectColumnValuesToBeBetween",
                min_value=label.min,
                max_value=label.max,
            )
    else:
        add("label", "label is a known class", "ExpectColumnValuesToBeInSet", "unknown class", value_set=label.classes)

    # Text.
    if modalities.text is not None:
        add("text", "text present", "ExpectColumnValuesToNotBeNull")
        if has("text") and _all_strings(frame["text"]):
            add("text", "text not blank", "ExpectColumnValuesToMatchRegex", "blank text", regex=r"\S")
            add(
                "text",
                f"text length within [{params.text_min_chars}, {params.text_max_chars}] chars",
                "ExpectColumnValueLengthsToBeBetween",
                min_value=params.text_min_chars,
                max_value=params.text_max_chars,
            )

    # Images.
    if modalities.image is not None:
        if not modalities.image.allow_missing:
            add("image", "image present", "ExpectColumnValuesToNotBeNull")
        add(IMAGE_CHECK, "images exist and decode", "ExpectColumnValuesToBeInSet", value_set=[OK])
    else:
        add("image", "no image without an image modality", "ExpectColumnValuesToBeNull")

    # Sequences (audio and vision share `seq_index`).
    specs = modalities.sequences
    if specs:
        if not all(spec.allow_missing for spec in specs.values()):
            add("seq_index", "seq_index present", "ExpectColumnValuesToNotBeNull")
        if has("seq_index") and pd.api.types.is_integer_dtype(frame["seq_index"]):
            rows = min(sequences[m].features.shape[0] if sequences[m].features.ndim else 0 for m in specs)
            add(
                "seq_index",
                f"seq_index within [0, {rows - 1}] (rows of the sequence arrays)",
                "ExpectColumnValuesToBeBetween",
                min_value=0,
                max_value=rows - 1,
            )
            add("seq_index", "seq_index unique", "ExpectColumnValuesToBeUnique", "rows shared by several samples")
        add(SEQUENCE_CHECK, "sequences fit the manifest and are finite", "ExpectColumnValuesToBeInSet", value_set=[OK])
    else:
        add("seq_index", "no seq_index without audio or vision", "ExpectColumnValuesToBeNull")

    # Clips: each present, inside the dataset, decodable, within the manifest's bounds.
    if modalities.clips:
        bounds = manifest.clips
        add(
            CLIP_CHECK,
            f"clips exist and decode within clip_bounds (up to {bounds.max_seconds:g} s each)",
            "ExpectColumnValuesToBeInSet",
            value_set=[OK],
        )
    else:
        for column in CLIP_COLUMNS:
            add(column, f"no {column} clip without a modality from clips", "ExpectColumnValuesToBeNull")

    # Leakage: the same content in several splits.
    add(
        LEAKAGE_SPLITS,
        "no content shared across splits",
        "ExpectColumnValuesToBeInSet",
        "same content in several splits (leakage)",
        value_set=[1],
        mostly=1.0 - params.leakage_tolerance,
    )
    assert len({rule.rule for rule in rules}) == len(rules), "rule names identify expectations: keep them unique"
    return rules


_FLOATS = ["float64", "float32", "float"]
_INTEGERS = ["Int64Dtype", "int64", "int"]


# ---------------------------------------------------------------------------------------------------------------
# Running GX


def _run_checkpoint(frame: pd.DataFrame, rules: list[Rule], suite_name: str, docs: Path, partial_count: int) -> list:
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # before the import: no usage statistics, no network
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.add_data_docs_site(
        site_name=_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())},
        },
    )
    batch = (
        context.data_sources.add_pandas("dataset")
        .add_dataframe_asset("samples")
        .add_batch_definition_whole_dataframe("all samples")
    )
    expectations = [
        getattr(gxe, rule.expectation)(
            **rule.kwargs, meta={"rule": rule.rule, "problem": rule.problem}, notes=rule.note
        )
        for rule in rules
    ]
    # Built whole and added once: `suite.add_expectation` re-saves the suite each time (~20 ms per expectation).
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="validate", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[_SITE])],
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": partial_count,
                "unexpected_index_column_names": ["id"] if "id" in frame.columns else [],
                "return_unexpected_index_query": False,
            },
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = result.run_results.values()
    return list(validation.results)


def _report(manifest: Manifest, n_samples: int, results: list, examples: int, docs: Path) -> ValidationReport:
    checks: list[Check] = []
    failures: list[Failure] = []
    for result in results:
        config = result.expectation_config
        meta = config.meta or {}
        rule = meta.get("rule", config.type)
        column = config.kwargs.get("column")
        details = result.result or {}
        count = details.get("unexpected_count")
        checks.append(Check(rule, config.type, column, bool(result.success), count))
        if result.success:
            continue
        shown = _examples(details, column, examples)
        failures.append(
            Failure(
                rule=rule,
                expectation=config.type,
                column=column,
                unexpected_count=count,
                examples=shown,
                message=_message(result, column, meta.get("problem"), shown),
            )
        )
    return ValidationReport(
        success=not failures,
        dataset=manifest.name,
        version=manifest.version,
        n_samples=n_samples,
        checks=checks,
        failures=failures,
        data_docs=docs,
    )


def _examples(details: dict, column: str | None, limit: int) -> list[dict]:
    rows = details.get("partial_unexpected_index_list") or []
    values = details.get("partial_unexpected_list") or []
    shown = []
    for i, row in enumerate(rows[:limit]):
        if isinstance(row, dict):
            sample_id = row.get("id")
            value = row.get(column, values[i] if i < len(values) else None)
        else:  # no id column: GX gives the row index
            sample_id, value = None, values[i] if i < len(values) else None
        shown.append(_jsonable({"id": sample_id, "value": value}))
    return shown


def _message(result: Any, column: str | None, problem: str | None, shown: list[dict]) -> str:
    details = result.result or {}
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return f"could not be evaluated: {info.get('exception_message')}"
    kind = result.expectation_config.type
    kwargs = result.expectation_config.kwargs
    if kind == "expect_table_columns_to_match_set":
        missing = (details.get("details") or {}).get("mismatched", {}).get("missing") or []
        return f"missing column(s): {', '.join(map(str, missing))}"
    if kind == "expect_column_distinct_values_to_contain_set":
        missing = details.get("partial_missing_list") or details.get("details", {}).get("missing") or []
        return f"missing: {', '.join(map(str, missing))}" if missing else f"observed {details.get('observed_value')}"
    count = details.get("unexpected_count")
    if count is None:  # an aggregate expectation: say what GX observed
        expected = kwargs.get("type_list")
        suffix = f", expected {' or '.join(expected)}" if expected else ""
        return f"observed {details.get('observed_value')}{suffix}"
    head = f"{problem}: " if problem else ""
    return f"{head}{_rows(count)}, e.g. {_examples_text(shown, column)}"


def _examples_text(shown: list[dict], column: str | None) -> str:
    """ "s01, s01" for the id column, else ids grouped by value: "s00, s11: 2; s04: 7.5"."""
    if column == "id":
        return ", ".join(_id_text(e["id"]) for e in shown)
    groups: dict[str, list[str]] = {}
    for example in shown:
        groups.setdefault(_value_text(example["value"], column), []).append(_id_text(example["id"]))
    return "; ".join(f"{', '.join(ids)}: {value}" for value, ids in groups.items())


def _id_text(sample_id: Any) -> str:
    return "(no id)" if sample_id is None else str(sample_id)


def _value_text(value: Any, column: str | None) -> str:
    if column in COUNT_COLUMNS and isinstance(value, int):
        return f"in {value} splits"
    if isinstance(value, str) and column in REASON_COLUMNS:
        return value
    if isinstance(value, str):
        return repr(value if len(value) <= _SHOWN_VALUE_CHARS else value[:_SHOWN_VALUE_CHARS] + "…")
    return str(value)


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def _integer_index(column: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """`seq_index` as (int64 values, present mask), or None when it is not an integer column."""
    if not pd.api.types.is_integer_dtype(column):
        return None
    column = column.astype("Int64")
    return column.fillna(0).to_numpy(dtype=np.int64), column.notna().to_numpy()


def _all_strings(column: pd.Series) -> bool:
    return all(isinstance(v, str) for v in column if not is_null(v))


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN/inf as "nan"/"inf" (strict JSON has no such numbers, and an
    inf label shown as None would hide what is wrong), pandas NA as None, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
