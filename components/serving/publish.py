"""Publishing the served model: its signed package, its input signature and example, and the MLflow pyfunc model
logged into a run (`LOADER_MODULE` as its loader, the pinned pip requirements), which the registry makes a version of.

Light to import: the signature is asked for by code that must not load torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.data.dataset import SEQUENCE_MODALITIES

if TYPE_CHECKING:
    import pandas as pd

    from components.core.config import DriftParams, ServeParams
    from components.data.dataset import Dataset
    from components.features.contract import FeaturizerState
    from components.models.spec import ModelSpec
    from components.serving.package import Evidence

__all__ = [
    "CLIP_REQUIREMENTS",
    "PIP_REQUIREMENTS",
    "input_example",
    "logged_model",
    "model_signature",
    "pip_requirements",
    "signed_package",
]

PIP_REQUIREMENTS = (
    "torch",
    "transformers",
    "safetensors",
    "onnxruntime",
    "numpy",
    "pandas",
    "pillow",
    "pydantic",
    "pyyaml",
)
CLIP_REQUIREMENTS = ("av", "librosa", "threadpoolctl")  # a model that extracts features from clips


def signed_package(
    model_dir: Path,
    features: Path,
    dest: Path,
    limits: ServeParams,
    variant: str | Path | None,
    evidence: Evidence,
    reference: tuple[Dataset, DriftParams],
) -> Path:
    """The serving package of the model in `model_dir` (or of its compressed `variant`) at `dest`, with the gate's
    `evidence` and the drift reference of the `reference` dataset it was trained on, signed."""
    from components.monitoring.reference import write_reference
    from components.serving import signing
    from components.serving.monitored import drift_reference
    from components.serving.package import package_model, write_evidence
    from components.serving.predictor import Predictor

    package = package_model(model_dir, features, dest, limits, variant=variant)
    write_evidence(package, evidence)
    dataset, settings = reference
    write_reference(package, drift_reference(Predictor(package), dataset, settings))
    signing.sign(package)  # last: the signature covers every file the package holds
    return package


def input_example(dataset: Dataset, limits: ServeParams) -> pd.DataFrame:
    """Two rows of the test split as a request to the served model, their files inline."""
    from components.serving.values import raw_frame

    example = raw_frame(dataset, "test", limit=2, inline_images=True).drop(columns=["id", "label"])
    # An example the served model would refuse is no example: clips over the serving bound stay out of it.
    too_big = [
        c
        for c in ("audio_base64", "video_base64")
        if c in example and _longest(example[c]) > limits.max_clip_base64_chars
    ]
    return example.drop(columns=too_big)


def model_signature(spec: ModelSpec, state: FeaturizerState | None = None) -> Any:
    """Inputs: the raw columns of the model's modalities (text required), and `explain`; outputs: score and class,
    and an explanation where a row asks. A modality `state` (the featurizer's) says was extracted from clips takes
    clip files instead of frames."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Map, Object, Property, Schema, TensorSpec

    from components.serving.explain import EXPLAIN

    columns: list[ColSpec | TensorSpec] = []
    if spec.text is not None:
        columns.append(ColSpec(DataType.string, "text"))
    if spec.image is not None:
        columns += [
            ColSpec(DataType.string, "image", required=False),
            ColSpec(DataType.string, "image_base64", required=False),
        ]
    # Frames are typed as optional strings, not Array(Array(double)): MLflow's enforcement of that builds a Series
    # per frame (~130 us each, twice), so an oversized request would cost a minute before the model could refuse it.
    # MLflow passes an object column of a string type through unchecked and unconverted, so JSON lists of frames
    # reach the model as sent, and CSV (which MLflow reads with the signature's pandas types: `Any` has none) carries
    # them as JSON text. `Predictor` checks the frames' count and shape itself, before converting a number.
    clips = set(state.clip_modalities) if state is not None else set()
    for m in SEQUENCE_MODALITIES:
        if getattr(spec, m) is not None and m not in clips:
            columns.append(ColSpec(DataType.string, m, required=False))
    # Clips: vision from a video; audio from an audio clip, or from a video's soundtrack.
    for column in (["audio"] if "audio" in clips else []) + (["video"] if clips else []):
        columns += [
            ColSpec(DataType.string, column, required=False),
            ColSpec(DataType.string, f"{column}_base64", required=False),
        ]
    # Whether the row asks for an explanation (true, or "true" in CSV). Typed string for the frames' reason: MLflow's
    # JSON parser casts a boolean column to bool, and a row that left it out then reads as true; a string column's
    # values reach the model as sent.
    columns.append(ColSpec(DataType.string, EXPLAIN, required=False))
    word = Object([Property("word", DataType.string), Property("effect", DataType.double)])
    outputs = Schema(
        [
            ColSpec(DataType.double, "score"),
            ColSpec(DataType.string, "class"),
            ColSpec(Map(DataType.double), "modality_shares", required=False),
            ColSpec(Array(word), "top_words", required=False),
        ]
    )
    return ModelSignature(inputs=Schema(columns), outputs=outputs)


def pip_requirements(*, clips: bool = False) -> list[str]:
    """What the logged model needs installed, pinned to this environment's versions (no local version labels)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in PIP_REQUIREMENTS + (CLIP_REQUIREMENTS if clips else ()):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


@contextmanager
def logged_model(
    run_id: str, name: str, package: Path, signature: Any, example: pd.DataFrame, *, clips: bool
) -> Iterator[Any]:
    """The package logged as the pyfunc model `name` into run `run_id`: its `ModelInfo`. The run stays the active
    one for the block (log_model logs into the active run), and ends with it: FAILED when the block raises."""
    import mlflow

    from components.serving.pyfunc import LOADER_MODULE

    with mlflow.start_run(run_id=run_id):
        yield mlflow.pyfunc.log_model(
            name=name,
            loader_module=LOADER_MODULE,  # the installed package's code: none travels with the model
            data_path=str(package),
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(clips=clips),
        )


def _longest(column: pd.Series) -> int:
    return max((len(value) for value in column if isinstance(value, str)), default=0)
