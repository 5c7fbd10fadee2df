"""The validation suite as plain data: which expectation checks which column of the validation frame, under which
human rule name.

GX-free, so the suite can be planned and tested without importing GX; `components.data.validation` turns each
`Rule` into a GX expectation. Rules are planned only on columns that exist (a missing one is reported once, by
"required columns present"), and a value rule only where its column has the type that makes it meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from components.core.config import ValidateParams
from components.data.dataset import (
    CLIP_COLUMNS,
    SPLITS,
    ClassificationLabel,
    Manifest,
    Modalities,
    RegressionLabel,
    SequenceArray,
    is_null,
)
from components.data.validation_frame import (
    CLIP_CHECK,
    ID_SPLITS,
    IMAGE_CHECK,
    LEAKAGE_SPLITS,
    OK,
    SEQUENCE_CHECK,
)

__all__ = ["REQUIRED_COLUMNS", "Rule", "plan_expectations"]

REQUIRED_COLUMNS = ("id", "split", "text", "label", "image", "seq_index")
_FLOATS = ["float64", "float32", "float"]
_INTEGERS = ["Int64Dtype", "int64", "int"]


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


@dataclass
class _Plan:
    """The rules planned so far, over one validation frame."""

    frame: pd.DataFrame
    rules: list[Rule] = field(default_factory=list)

    def has(self, column: str) -> bool:
        return column in self.frame.columns

    def add(self, column: str, rule: str, expectation: str, problem: str | None = None, **kwargs: Any) -> None:
        """Plan a rule on `column`, only where the frame has it."""
        if self.has(column):
            self.rules.append(Rule(rule, expectation, {"column": column, **kwargs}, problem))


def plan_expectations(
    manifest: Manifest, frame: pd.DataFrame, sequences: Mapping[str, SequenceArray], params: ValidateParams
) -> list[Rule]:
    """The expectations for this manifest, only on columns that exist (a missing one is reported once)."""
    modalities = manifest.modalities
    clip_columns = list(CLIP_COLUMNS) if modalities.clips else []
    required = {"column_set": [*REQUIRED_COLUMNS, *clip_columns], "exact_match": False}
    plan = _Plan(frame, [Rule("required columns present", "ExpectTableColumnsToMatchSet", required)])
    _plan_types(plan, manifest.label, clip_columns)
    _plan_ids_and_splits(plan)
    _plan_labels(plan, manifest.label)
    _plan_text(plan, modalities, params)
    _plan_images(plan, modalities)
    _plan_sequences(plan, modalities, sequences)
    _plan_clips(plan, manifest)
    # Leakage: the same content in several splits.
    plan.add(
        LEAKAGE_SPLITS,
        "no content shared across splits",
        "ExpectColumnValuesToBeInSet",
        "same content in several splits (leakage)",
        value_set=[1],
        mostly=1.0 - params.leakage_tolerance,
    )
    rules = plan.rules
    assert len({rule.rule for rule in rules}) == len(rules), "rule names identify expectations: keep them unique"
    return rules


def _plan_types(plan: _Plan, label: RegressionLabel | ClassificationLabel, clip_columns: list[str]) -> None:
    """Types. Value rules below need the right type to be meaningful, so they run only where it holds."""
    string_types = ["str"]
    for column in ("id", "split", "text", "image", *clip_columns):
        plan.add(column, f"{column} is a string", "ExpectColumnValuesToBeInTypeList", type_list=string_types)
    if label.kind == "regression":
        plan.add("label", "label is a float (regression)", "ExpectColumnValuesToBeInTypeList", type_list=_FLOATS)
    else:
        plan.add(
            "label", "label is a string (classification)", "ExpectColumnValuesToBeInTypeList", type_list=string_types
        )
    plan.add("seq_index", "seq_index is an integer", "ExpectColumnValuesToBeInTypeList", type_list=_INTEGERS)


def _plan_ids_and_splits(plan: _Plan) -> None:
    plan.add("id", "ids present", "ExpectColumnValuesToNotBeNull")
    plan.add("id", "unique ids", "ExpectColumnValuesToBeUnique")
    plan.add("split", "splits present", "ExpectColumnValuesToNotBeNull")
    plan.add("split", "split is train, valid or test", "ExpectColumnValuesToBeInSet", value_set=list(SPLITS))
    plan.add("split", "all splits present", "ExpectColumnDistinctValuesToContainSet", value_set=list(SPLITS))
    plan.add(ID_SPLITS, "splits disjoint", "ExpectColumnValuesToBeInSet", "id in several splits", value_set=[1])


def _plan_labels(plan: _Plan, label: RegressionLabel | ClassificationLabel) -> None:
    plan.add("label", "labels present", "ExpectColumnValuesToNotBeNull")
    if label.kind == "regression":
        if plan.has("label") and pd.api.types.is_numeric_dtype(plan.frame["label"]):
            rng = f"[{label.min:g}, {label.max:g}]"
            plan.add(
                "label",
                f"label within {rng}",
                "ExpectColumnValuesToBeBetween",
                min_value=label.min,
                max_value=label.max,
            )
    else:
        plan.add(
            "label", "label is a known class", "ExpectColumnValuesToBeInSet", "unknown class", value_set=label.classes
        )


def _plan_text(plan: _Plan, modalities: Modalities, params: ValidateParams) -> None:
    if modalities.text is None:
        return
    plan.add("text", "text present", "ExpectColumnValuesToNotBeNull")
    if plan.has("text") and _all_strings(plan.frame["text"]):
        plan.add("text", "text not blank", "ExpectColumnValuesToMatchRegex", "blank text", regex=r"\S")
        plan.add(
            "text",
            f"text length within [{params.text_min_chars}, {params.text_max_chars}] chars",
            "ExpectColumnValueLengthsToBeBetween",
            min_value=params.text_min_chars,
            max_value=params.text_max_chars,
        )


def _plan_images(plan: _Plan, modalities: Modalities) -> None:
    if modalities.image is not None:
        if not modalities.image.allow_missing:
            plan.add("image", "image present", "ExpectColumnValuesToNotBeNull")
        plan.add(IMAGE_CHECK, "images exist and decode", "ExpectColumnValuesToBeInSet", value_set=[OK])
    else:
        plan.add("image", "no image without an image modality", "ExpectColumnValuesToBeNull")


def _plan_sequences(plan: _Plan, modalities: Modalities, sequences: Mapping[str, SequenceArray]) -> None:
    """Sequences (audio and vision share `seq_index`)."""
    specs = modalities.sequences
    if not specs:
        plan.add("seq_index", "no seq_index without audio or vision", "ExpectColumnValuesToBeNull")
        return
    if not all(spec.allow_missing for spec in specs.values()):
        plan.add("seq_index", "seq_index present", "ExpectColumnValuesToNotBeNull")
    if plan.has("seq_index") and pd.api.types.is_integer_dtype(plan.frame["seq_index"]):
        rows = min(sequences[m].features.shape[0] if sequences[m].features.ndim else 0 for m in specs)
        plan.add(
            "seq_index",
            f"seq_index within [0, {rows - 1}] (rows of the sequence arrays)",
            "ExpectColumnValuesToBeBetween",
            min_value=0,
            max_value=rows - 1,
        )
        plan.add("seq_index", "seq_index unique", "ExpectColumnValuesToBeUnique", "rows shared by several samples")
    plan.add(SEQUENCE_CHECK, "sequences fit the manifest and are finite", "ExpectColumnValuesToBeInSet", value_set=[OK])


def _plan_clips(plan: _Plan, manifest: Manifest) -> None:
    """Clips: each present, inside the dataset, decodable, within the manifest's bounds."""
    if manifest.modalities.clips:
        bounds = manifest.clips
        plan.add(
            CLIP_CHECK,
            f"clips exist and decode within clip_bounds (up to {bounds.max_seconds:g} s each)",
            "ExpectColumnValuesToBeInSet",
            value_set=[OK],
        )
    else:
        for column in CLIP_COLUMNS:
            plan.add(column, f"no {column} clip without a modality from clips", "ExpectColumnValuesToBeNull")


def _all_strings(column: pd.Series) -> bool:
    return all(isinstance(v, str) for v in column if not is_null(v))
