"""The validate stage: the data contract of `components.data.dataset` as one Great Expectations suite.

`validate_dataset` reads the canonical dataset, builds one validation frame (the samples plus derived check
columns, `components.data.validation_frame`), plans the suite over it (`components.data.expectations`), runs ONE
GX checkpoint, and writes `reports/validation.json`, the same report as one self-contained page
`reports/validation.html` (readable offline: GX's Data Docs load their assets from CDNs; both forms are
`components.data.validation_report`'s), and the GX Data Docs site. This module owns the stage and the one place
that talks to GX; callers import the stage's names from here.

GX is imported lazily (it takes seconds), with analytics off (no network) and progress bars off.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd

from components.core.atomic import replace_directory, write_json, write_text
from components.core.config import ValidateParams
from components.data.dataset import read_dataset
from components.data.expectations import Rule, plan_expectations
from components.data.validation_frame import build_frame
from components.data.validation_report import (
    Check,
    Failure,
    ValidationReport,
    render_html,
    report_from_results,
)

__all__ = [
    "DATA_DOCS_INDEX",
    "Check",
    "Failure",
    "ValidationReport",
    "build_frame",
    "html_path",
    "plan_expectations",
    "render_html",
    "validate_dataset",
]

DATA_DOCS_INDEX = "index.html"  # GX's site entry page: also what shows that a Data Docs directory is ours to replace
_SITE = "validation"


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
    # GX groups results by column; report them as planned
    planned: dict[str | None, int] = {rule.rule: i for i, rule in enumerate(rules)}
    results.sort(key=lambda r: planned.get((r.expectation_config.meta or {}).get("rule"), len(planned)))
    index = Path(params.data_docs) / DATA_DOCS_INDEX
    report = report_from_results(manifest, len(samples), results, params.examples, index)
    html = html_path(params.report)
    report = replace(report, html=html)
    data = report.to_dict()
    write_json(params.report, data)
    # GX's Data Docs load their styles and scripts from CDNs and show a blank page offline: this page is the same
    # report, rendered from the JSON just written, with nothing to fetch.
    write_text(html, render_html(data))
    return report


def html_path(report: str | Path) -> Path:
    """Where the offline page of the JSON report at `report` goes: beside it, as .html."""
    return Path(report).with_suffix(".html")


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
