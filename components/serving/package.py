"""The serving package: its format, the input bounds it enforces and the gate's evidence signed into it.

`package_model` turns what `featurize`, `train` and `compress` wrote into one self-contained directory: the model
in its standalone form (the frozen transformer inside, so no precomputed token states are needed), or a compressed
variant of it (`variant/`, e.g. the ONNX Runtime int8 model: then the torch weights stay out), its spec, the
featurizer state (tokenizer settings, image and sequence statistics of the train split) and the tokenizer. That
directory is the MLflow pyfunc's data (`components.serving.pyfunc`), read as JSON, safetensors, ONNX and
weights-only torch files: no pickle anywhere in the model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import Field

from components.core.atomic import replace_directory, write_json
from components.core.config import Section, ServeParams
from components.core.errors import DataError
from components.data.dataset import ClipBounds, Dataset
from components.data.images import DATASET_MAX_PIXELS
from components.features.contract import STATE, load_tokenizer, read_state
from components.features.text_model import resolve_text_model
from components.models.store import CARD, WEIGHTS

__all__ = [
    "EVIDENCE",
    "LIMITS",
    "TEXT",
    "VARIANT",
    "Bounds",
    "Evidence",
    "dataset_bounds",
    "package_model",
    "read_evidence",
    "read_limits",
    "write_evidence",
]

TEXT = "text"  # tokenizer and transformer config, inside the package
LIMITS = "limits.json"  # the input bounds (params.yaml's `serve`) the package enforces
EVIDENCE = "evidence.json"  # the gate's evidence (`Evidence`), signed with the package
VARIANT = "variant"  # the compressed variant the package serves, as compress wrote it; absent: the torch model


def package_model(
    model_dir: str | Path,
    features: str | Path,
    dest: str | Path,
    limits: ServeParams | None = None,
    variant: str | Path | None = None,
) -> Path:
    """Write the self-contained serving package for the model in `model_dir`, trained on `features`, enforcing
    `limits` on every input it is given; with `variant` (a directory `compress` wrote from this very model), the
    package runs that variant instead of the uncompressed model."""
    from safetensors.torch import save_file

    from components.models.store import digest, load_trained, read_card

    model_dir, dest = Path(model_dir), Path(dest)
    state = read_state(features)
    card = read_card(model_dir)
    if card.featurizer_key != state.key:
        raise DataError(
            Path(features),
            f"features changed since the model in {model_dir} was trained on them: run `msa train` (or `dvc repro`)",
        )
    if variant is not None:
        variant = Path(variant)
        try:
            made_from = json.loads((variant / CARD).read_text()).get("model_digest")
        except (OSError, ValueError) as e:
            rule = f"no readable compressed variant ({type(e).__name__}): run `msa compress`"
            raise DataError(variant, rule) from None
        if made_from != digest(model_dir):
            raise DataError(variant, f"was compressed from another model than {model_dir}: run `msa compress`")
    spec = card.spec
    with replace_directory(dest, marker=CARD) as staging:
        if spec.text is not None:
            from transformers import AutoConfig

            source = resolve_text_model(spec.text.encoder)
            load_tokenizer(source).save_pretrained(staging / TEXT)
            AutoConfig.from_pretrained(source, local_files_only=True).save_pretrained(staging / TEXT)
            spec = spec.model_copy(update={"text": spec.text.model_copy(update={"encoder": TEXT})})
        if variant is None:
            model = load_trained(model_dir, standalone=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staging / WEIGHTS)
        else:
            shutil.copytree(variant, staging / VARIANT)
        # The trained weights' digest describes another file than the package's: the signature covers these.
        packaged = card.model_copy(update={"spec": spec, "weights_sha256": ""})
        write_json(staging / CARD, packaged.model_dump(mode="json"))
        write_json(staging / STATE, state.model_dump(mode="json", exclude={"ids", "features_sha256"}))
        write_json(staging / LIMITS, (limits or ServeParams()).model_dump(mode="json"))
    return dest


def read_limits(root: Path) -> ServeParams:
    """The package's input bounds; one packaged before bounds were gets today's defaults, never no bounds."""
    file = root / LIMITS
    return ServeParams.model_validate_json(file.read_bytes()) if file.is_file() else ServeParams()


@dataclass(frozen=True)
class Bounds:
    """What one call may decode: the package's serve limits (for strangers' requests), or a validated dataset's own
    rules (`dataset_bounds`)."""

    limits: ServeParams
    clips: ClipBounds


def dataset_bounds(dataset: Dataset, frame: pd.DataFrame, packaged: ServeParams) -> Bounds:
    """Bounds for the rows of a dataset that passed validation (the champion re-scored on a new test split): its
    clips under its own `clip_bounds` (which validation enforced, sample rates and frame size included), every
    other bound the packaged one or the dataset's where that is wider. A 10-minute interview is a fine test
    sample, and a request the server refuses."""
    manifest = dataset.manifest
    longest = max((len(t) for t in frame.get("text", ()) if isinstance(t, str)), default=0)
    max_len = max((s.max_len for s in (manifest.modalities.audio, manifest.modalities.vision) if s), default=0)
    clips = manifest.clips
    limits = packaged.model_copy(
        update={
            "max_text_chars": max(packaged.max_text_chars, longest),
            "max_image_bytes": 2**62,  # validation bounds an image's pixels, not its bytes
            "max_image_pixels": max(packaged.max_image_pixels, DATASET_MAX_PIXELS),
            "max_frames": max(packaged.max_frames, max_len),
            "max_clip_bytes": max(packaged.max_clip_bytes, clips.max_bytes),
            "max_clip_seconds": max(packaged.max_clip_seconds, clips.max_seconds),
        }
    )
    return Bounds(
        limits, clips.model_copy(update={"max_bytes": limits.max_clip_bytes, "max_seconds": limits.max_clip_seconds})
    )


class Evidence(Section):
    """What registration measured and signed into the package (`evidence.json`): the gate reads a champion's score
    from here, never from a tag anyone with registry access can edit."""

    run_id: str
    metric: str  # "<split> <head> <metric>"
    score: float
    test_split: str  # the fingerprint of the test split the score was measured on
    variant: str
    dataset: str
    dataset_version: str
    data_hash: str
    params_hash: str
    code_hash: str
    robustness: str = "none"  # what the robust scores were measured on (registry.robustness_tag)
    # robust_<perturbation>_<severity>_<metric> of the served head
    robust: dict[str, float] = Field(default_factory=dict)


def write_evidence(package: Path, evidence: Evidence) -> None:
    write_json(package / EVIDENCE, evidence.model_dump(mode="json"))


def read_evidence(package: Path) -> Evidence | None:
    """The package's evidence; None for a package registered before evidence was signed into it."""
    try:
        return Evidence.model_validate_json((package / EVIDENCE).read_bytes())
    except (OSError, ValueError):
        return None
