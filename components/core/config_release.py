"""The params.yaml sections of the stages after training: scoring (`evaluate`, `robustness`), compression
(`compress`), the registry's gate (`register`), serving bounds (`serve`), drift watched in scored batches
(`drift`) and the orchestration of the whole pipeline (`pipeline`).

`components.core.config` assembles them into `Params` and is where callers import them from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.core.config_sections import THREADS_HELP, Section

__all__ = [
    "ONNX_VARIANTS",
    "CompressParams",
    "CompressVariant",
    "DriftParams",
    "EvaluateParams",
    "Perturbation",
    "PipelineParams",
    "RegisterParams",
    "RobustnessGate",
    "RobustnessParams",
    "ServeParams",
    "StageTimeouts",
]


class EvaluateParams(Section):
    headline: Path = Field(
        Path("metrics/evaluate.json"), description="DVC metrics, committed to git: what `dvc exp show` compares"
    )
    report: Path = Field(Path("reports/evaluation.json"), description="every metric of every head on every split")
    seeds: Path = Field(
        Path("reports/seeds.json"), description="every metric's mean and std over train.seeds, and each seed's"
    )
    plots: Path = Field(Path("metrics/plots"), description="plot data for `dvc plots`, committed to git")
    figures: Path = Field(Path("reports/figures"), description="the PNGs: predictions, confusion, training curves")
    splits: tuple[Literal["valid", "test"], ...] = Field(
        ("valid", "test"), min_length=1, description="splits to score; plots show test, or valid without test"
    )
    device: str = Field("auto", description="auto (cuda, mps, cpu), or a torch device string")
    threads: int = Field(1, ge=1, description=THREADS_HELP)

    @field_validator("splits")
    @classmethod
    def _splits_unique(cls, splits: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(splits)) != len(splits):
            raise ValueError("splits must not repeat")
        return splits

    @model_validator(mode="after")
    def _plot_directories_apart(self) -> EvaluateParams:
        """Each is replaced as a whole: one inside the other would be wiped by it."""
        plots, figures = self.plots.resolve(), self.figures.resolve()
        if plots == figures or plots in figures.parents or figures in plots.parents:
            raise ValueError("plots and figures must be separate directories, neither inside the other")
        return self


Perturbation = Literal[
    "text_word_deletion",
    "text_word_replacement",
    "text_typos",
    "text_sentence_shuffle",
    "image_blur",
    "image_noise",
    "image_occlusion",
    "audio_noise",
    "audio_frame_drop",
    "audio_mute",
    "vision_noise",
    "vision_frame_drop",
    "vision_mute",
    "missing_text",
    "missing_image",
    "missing_audio",
    "missing_vision",
]


def _default_perturbations() -> dict[Perturbation, tuple[float, ...]]:
    text, share = (0.1, 0.3, 0.5), (0.25, 0.5, 1.0)
    noise, frame_drop = (0.25, 0.5, 1.0), (0.25, 0.5, 0.75)
    return {
        "text_word_deletion": text,
        "text_word_replacement": text,
        "text_typos": text,
        "text_sentence_shuffle": share,
        "image_blur": (0.02, 0.05, 0.1),
        "image_noise": (0.05, 0.1, 0.2),
        "image_occlusion": (0.25, 0.5, 0.75),
        "audio_noise": noise,
        "audio_frame_drop": frame_drop,
        "audio_mute": share,
        "vision_noise": noise,
        "vision_frame_drop": frame_drop,
        "vision_mute": share,
        "missing_text": share,
        "missing_image": share,
        "missing_audio": share,
        "missing_vision": share,
    }


class RobustnessParams(Section):
    """Every head scored on one split under perturbed inputs (components.evaluation.perturbations says what each
    severity means); severity 0, the clean score, is always included."""

    report: Path = Field(Path("reports/robustness.json"), description="every head's metrics per perturbation")
    plots: Path = Field(Path("metrics/robustness"), description="plot data for `dvc plots`, committed to git")
    figure: Path = Field(Path("reports/robustness.png"), description="metric against severity, a line per head")
    split: Literal["valid", "test"] = Field("test", description="the split perturbed and scored")
    metric: str | None = Field(None, description="the metric plotted and gated on; null: acc2 (accuracy if classes)")
    seed: int = Field(0, ge=0, description="seeds every perturbation (per sample: the same draws at every severity)")
    perturbations: dict[Perturbation, tuple[float, ...]] = Field(
        default_factory=_default_perturbations, description="perturbation -> severities"
    )
    device: str = Field("auto", description="auto (cuda, mps, cpu), or a torch device string")
    threads: int = Field(1, ge=1, description=THREADS_HELP)

    @field_validator("perturbations")
    @classmethod
    def _severities(cls, perturbations: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
        for name, severities in perturbations.items():
            keys = {f"{s:g}" for s in severities}  # how the report and MLflow's metric names write them
            if not severities or any(not 0 < s <= 1 for s in severities) or len(keys) != len(severities):
                raise ValueError(f"{name}: severities must be distinct numbers in (0, 1], got {list(severities)}")
        return {name: tuple(sorted(severities)) for name, severities in perturbations.items()}


class RobustnessGate(Section):
    """The gate's robustness condition: under one perturbation, the challenger's score minus the champion's (in
    robustness.metric, of the monitored head) may go down to -`max_drop` points, no lower."""

    perturbation: Perturbation = Field(description="the perturbation both models are scored under")
    severity: float = Field(gt=0, le=1, description="its severity (one robustness.perturbations lists)")
    max_drop: float = Field(ge=0, description="largest loss allowed, in percentage points")


CompressVariant = Literal["int8", "prune_unstructured", "prune_structured", "onnx_fp32", "onnx_int8"]
ONNX_VARIANTS = ("onnx_fp32", "onnx_int8")


class CompressParams(Section):
    out: Path = Field(Path("models/compressed"), description="one directory per kept variant")
    headline: Path = Field(
        Path("metrics/compress.json"),
        description="DVC metrics per variant: times smaller and faster, metric change (variant - uncompressed)",
    )
    report: Path = Field(Path("reports/compression.json"), description="every measurement of every variant")
    variants: tuple[CompressVariant, ...] = Field(
        ("int8", "prune_unstructured", "prune_structured", "onnx_fp32", "onnx_int8"),
        min_length=1,
        description="variants to build and measure",
    )
    metric: str | None = Field(
        None, description="test metric of the monitored head the tolerance applies to; null: acc2 or accuracy"
    )
    tolerance: float = Field(1.0, ge=0, description="largest metric loss, in percentage points, of a kept variant")
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1,
        description="a variant is kept when its loss is within tolerance at this confidence: the one-sided bound "
        "of a paired bootstrap over the test rows, not the loss measured once",
    )
    resamples: int = Field(1000, ge=100, description="resamples of the test rows in the paired bootstrap")
    batch_tolerance: float = Field(
        1e-3,
        ge=0,
        description="largest change of a kept variant's outputs when a row is scored alone rather than in a batch: "
        "above it (dynamic int8: activation scales of the whole batch) a served row does not score what was measured",
    )
    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction of the trained weights that pruning zeroes")
    finetune_epochs: int = Field(2, ge=0, description="epochs of fine-tuning after pruning, masks held; 0: none")
    latency_runs: int = Field(50, ge=1, description="single-sample forward passes timed per variant")
    throughput_batch: int = Field(64, ge=1, description="batch size of the throughput measurement")
    threads: int = Field(1, ge=1, description=f"{THREADS_HELP}; ONNX Runtime's too, while timing")


class RegisterParams(Section):
    model_name: str | None = Field(None, description="registered model name; null: the dataset name")
    experiment: str | None = Field(None, description="MLflow experiment; null: the dataset name")
    margin: float = Field(
        0.0, ge=0, description="how much better, in the primary metric, a challenger must score than the champion"
    )
    retries: int = Field(3, ge=0, description="retries of each request to a tracking server before giving up")
    timeout: int = Field(30, ge=1, description="seconds per request to a tracking server")
    variant: Literal["auto", "baseline"] | CompressVariant = Field(
        "auto",
        description="what the registered model serves: auto, the fastest at batch 1 of the uncompressed model and "
        "the variants compress kept; baseline, the uncompressed torch model; or a kept variant by name",
    )
    robustness: RobustnessGate | None = Field(
        None, description="null: the gate compares clean test scores only; else also this perturbed score"
    )


class ServeParams(Section):
    """Bounds of every input the served model decodes. They are packaged with the model, so `mlflow models serve`
    and `msa predict` enforce the bounds it was registered with; a row over one is refused (400), never cut."""

    max_rows: int = Field(256, ge=1, description="rows per request to the served model")
    max_text_chars: int = Field(
        2000, ge=1, description="longer text is refused, not truncated: a score must describe the text that was sent"
    )
    max_image_bytes: int = Field(
        4_000_000, ge=1, description="per image file; the base64 text of one may be 4/3 of this"
    )
    max_image_pixels: int = Field(
        4_194_304, ge=1, description="width x height, read from the image header before anything is decoded"
    )
    max_frames: int = Field(1000, ge=1, description="frames per audio or vision sequence")
    max_clip_bytes: int = Field(
        8_000_000, ge=1, description="per audio or video clip (audio_base64, video_base64); base64 text may be 4/3"
    )
    max_clip_seconds: float = Field(
        60.0, gt=0, description="per clip, from its header before decoding, and enforced again while decoding"
    )
    max_explain_rows: int = Field(
        16,
        ge=0,
        description="rows of one request that may ask for an explanation (each costs up to 5 + explain_words rows)",
    )
    explain_words: int = Field(
        32, ge=0, description="words an explanation tries leaving out, the first ones: one more model row each"
    )
    max_request_bytes: int = Field(
        64_000_000,
        ge=1,
        description="one request body to `msa serve`, refused (413) while it arrives; its JSON, CSV or Parquet is "
        "then measured (rows, depth) before MLflow parses it",
    )

    @property
    def max_base64_chars(self) -> int:
        return 4 * -(-self.max_image_bytes // 3)

    @property
    def max_clip_base64_chars(self) -> int:
        return 4 * -(-self.max_clip_bytes // 3)


class DriftParams(Section):
    """What registration samples of the training data into the package (the drift reference) and how `msa score`
    compares each scored batch with it (components/monitoring/)."""

    level: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="the chance that a batch drawn like the training data is called drifted: every test of every "
        "modality and the predictions share it (Bonferroni)",
    )
    reference_rows: int = Field(
        1000, ge=20, description="train rows (inputs) and held-out rows (predictions) the package keeps as reference"
    )
    sample_rows: int = Field(
        1000, ge=20, description="rows of a scored batch compared with the reference: a uniform sample of it"
    )
    min_rows: int = Field(50, ge=2, description="a batch with fewer rows gets no verdict (too few to tell)")
    permutations: int = Field(
        2000, ge=20, description="of the text test (MMD): its smallest p-value is 1 / (permutations + 1)"
    )
    seed: int = Field(0, description="of the reference's and the batch's samples and the permutations")

    @model_validator(mode="after")
    def _permutations_resolve_the_level(self) -> DriftParams:
        """With five modalities compared, each is drifted below level / 5: the text test's smallest p-value must
        be well under that (a quarter), or the strongest drift could not be told from none."""
        needed = math.ceil(4 * 5 / self.level) - 1
        if self.permutations < needed:
            raise ValueError(f"drift.permutations must be at least {needed} at drift.level {self.level:g}")
        return self


class StageTimeouts(Section):
    """Seconds a pipeline task may run before Prefect fails it (generous: a timeout is for hung runs)."""

    # `validate` and `register` would shadow BaseModel.validate and ABC.register: trailing underscores, YAML keys kept
    validate_: int = Field(1800, ge=1, alias="validate", description="seconds")
    featurize: int = Field(3600, ge=1, description="seconds")
    train: int = Field(86400, ge=1, description="seconds")
    evaluate: int = Field(3600, ge=1, description="seconds")
    robustness: int = Field(3600, ge=1, description="seconds")
    compress: int = Field(7200, ge=1, description="seconds")
    register_: int = Field(1800, ge=1, alias="register", description="includes waiting for the registry lock")


class PipelineParams(Section):
    training: Literal["local", "deployment"] = Field(
        "local", description="local: in the pipeline's process; deployment: run_deployment(train_deployment), awaited"
    )
    train_deployment: str = Field("train/train-gpu", description="<flow>/<deployment> of the training flow")
    registry_lock: str = Field(
        "msa-registry", description="Prefect global concurrency limit (one slot) held while checking and registering"
    )
    train_attempts: int = Field(
        3, ge=1, description="dispatches of the training deployment before giving up on workers that were lost"
    )
    train_silence: float = Field(
        300, gt=0, description="seconds without a heartbeat from dispatched training before its worker counts as lost"
    )
    retries: int = Field(3, ge=0, description="retries of the tasks that talk to the tracking server")
    retry_delay: float = Field(2.0, ge=0, description="seconds before the first retry; doubled after each")
    timeouts: StageTimeouts = StageTimeouts()
