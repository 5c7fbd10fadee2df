"""The evaluate and robustness stages' reports as typed models: what the stages write through them, and what later
stages (registration, the model card, MLflow payloads) read through them.

    EvaluationReport  evaluate.report (reports/evaluation.json)  {model_digest, split: {head: {metric: value}}}
    SeedSummary       evaluate.seeds (reports/seeds.json)        every metric's mean and std over the seeds trained
    RobustnessReport  robustness.report (reports/robustness.json)

Each `read(path)` refuses a file that does not fit its model with a DataError naming the file; `write(path)` keeps
the JSON's shape and key order exactly as the stages have always written it (NaN as null).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from components.core.reports import Report

if TYPE_CHECKING:
    pass  # Python 3.11; only annotations name it

__all__ = ["EvaluationReport", "HeadScores", "Perturbation", "RobustnessReport", "Scores", "SeedSummary"]

Number = int | float | None  # a metric; null where it is undefined (NaN)
# One head's metrics on one split; class labels add per_class {class: {precision, recall, f1, support}}.
HeadScores = dict[str, Number | dict[str, dict[str, Number]]]
Scores = dict[str, Number]  # one head's metrics under one setting (robustness keeps numbers only)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # a key this stage does not write: not its report


class _Report(Report):
    model_config = ConfigDict(frozen=True)


class EvaluationReport(_Report):
    """{model_digest, split: {head: {metric: value}}}: every head's metrics on each evaluated split (only numbers:
    confusion matrices go to the plot data), and the digest of the model they score (registration refuses a report
    of another model)."""

    rerun = "run `msa evaluate`"

    _unwritten = frozenset({"splits"})
    model_digest: str | None = None
    splits: dict[str, dict[str, HeadScores]]  # split -> head -> metrics, in the order evaluate scored them

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """The file keeps the splits beside model_digest, at the top."""
        if isinstance(data, Mapping) and "splits" not in data:
            splits = {k: v for k, v in data.items() if k != "model_digest"}
            return {"model_digest": data.get("model_digest"), "splits": splits}
        return data

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        return ({} if self.model_digest is None else {"model_digest": self.model_digest}) | self.splits

    def head(self, split: str, head: str) -> HeadScores:
        """`head`'s metrics on `split` ({} when it was not scored there)."""
        return self.splits.get(split, {}).get(head, {})

    def table(self) -> list[dict[str, Any]]:
        """One row per split and head: its scalar metrics rounded to 4 places (what a person scans)."""
        return [
            {"split": split, "head": head} | {k: round(v, 4) for k, v in values.items() if isinstance(v, int | float)}
            for split, heads in self.splits.items()
            for head, values in heads.items()
        ]


class SeedSummary(_Report):
    """The scores over the seeds of a multi-seed training (train.seeds), as MMSA reports results: every seed's
    metrics (`runs`, by seed; one run `single` for one seed) and their mean and std (numpy's, ddof 0)."""

    rerun = "run `msa evaluate`"

    seeds: list[int] | None  # None: one seed
    chosen: int | None  # the seed whose model is train.out
    selected_by: str  # "valid <head> <metric>"
    mean: dict[str, dict[str, dict[str, float | None]]]  # split -> head -> metric
    std: dict[str, dict[str, dict[str, float | None]]]
    runs: dict[str, dict[str, dict[str, HeadScores]]]  # seed -> split -> head -> metrics

    @property
    def several(self) -> bool:
        """Whether several seeds were trained."""
        return bool(self.seeds)


class Perturbation(_Strict):
    """One perturbation: the modality it changes and every head's metrics at each severity ("0.1", "0.25")."""

    modality: str
    severities: dict[str, dict[str, Scores]]


class RobustnessReport(_Report):
    """Every head scored on one split with its inputs perturbed. A head that no sample can be scored on under a
    setting (text heads with every text missing) is absent from that setting's scores."""

    rerun = "run `msa robustness`"

    model_digest: str | None = None
    split: str
    metric: str  # robustness.metric: what the plots show and the gate checks
    head: str  # the monitored head
    seed: int
    samples: int
    clean: dict[str, Scores]  # head -> metrics on the unperturbed split
    perturbations: dict[str, Perturbation] = Field(default_factory=dict)
    skipped: list[str] = Field(default_factory=list)  # the perturbations of modalities the model lacks, and why

    def settings(self) -> Iterator[tuple[str, str, dict[str, Scores]]]:
        """(perturbation, severity, head -> metrics) of every setting scored, in the report's order."""
        for name, entry in self.perturbations.items():
            for severity, scores in entry.severities.items():
                yield name, severity, scores

    def table(self) -> list[dict[str, Any]]:
        """One row per setting: each head's robustness metric in points, to 2 places."""
        return [
            {"perturbation": name, "severity": severity}
            | {
                head: round(100 * value, 2)
                for head, values in heads.items()
                if isinstance(value := values.get(self.metric), int | float)
            }
            for name, severity, heads in self.settings()
        ]
