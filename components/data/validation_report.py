"""The validation report: its types, how GX's results become it, and its two forms, the JSON written as the
validate stage's output and one self-contained HTML page rendered from that JSON.

Every expectation carries a human rule name (`meta["rule"]`), which the summary and the report use. GX-free: the
results are read by attribute, so this module does not import GX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.dataset import Manifest
from components.data.validation_frame import COUNT_COLUMNS, REASON_COLUMNS

__all__ = ["Check", "Failure", "ValidationReport", "render_html", "report_from_results"]

_SHOWN_VALUE_CHARS = 60


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


def report_from_results(
    manifest: Manifest, n_samples: int, results: list, examples: int, docs: Path
) -> ValidationReport:
    """The report of GX's expectation results (in the order given), showing up to `examples` offending rows per
    failure; `docs` is the Data Docs entry page."""
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
