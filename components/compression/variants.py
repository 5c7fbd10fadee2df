"""A compressed variant's files: its weights as written (`serialize`; the ONNX variants' from one export of the
baseline, `onnx_payloads`), its directory with its card (`write_variant`), and loading it back (`load_compressed`).

`<out>/<variant>/` holds model.json (the card) and the weights: int8 as a torch state dict read back with
`torch.load(weights_only=True)`, pruned models as safetensors, ONNX variants as `model.onnx`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from components.compression.onnx_model import ONNX_WEIGHTS, OnnxModel, export_onnx, quantize_onnx
from components.compression.quantize import known_deprecations, quantize_int8
from components.compression.report import VariantReport
from components.core.atomic import write_json
from components.core.config import ONNX_VARIANTS, CompressVariant
from components.core.errors import TrainingError
from components.core.hashing import file_sha256
from components.models import MultiTaskModel
from components.models.spec import ModelSpec
from components.models.store import CARD, INT8_WEIGHTS, WEIGHTS, ModelCard

__all__ = ["load_compressed", "onnx_payloads", "serialize", "variant_format", "write_variant"]


def onnx_payloads(
    baseline: MultiTaskModel,
    example: dict[str, torch.Tensor],
    names: tuple[str, ...],
    calibration: Iterable[Mapping[str, np.ndarray]] = (),
) -> dict[str, bytes]:
    """The ONNX files of the ONNX variants in `names`, from one export of the baseline; onnx_int8's activation
    scales are calibrated on `calibration` (batch feeds of train rows)."""
    wanted = [n for n in names if n in ONNX_VARIANTS]
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory(prefix="msa-onnx-") as tmp:
        fp32 = export_onnx(baseline, example, Path(tmp) / "fp32.onnx")
        files = {"onnx_fp32": fp32}
        if "onnx_int8" in wanted:
            files["onnx_int8"] = quantize_onnx(fp32, Path(tmp) / "int8.onnx", calibration)
        return {n: files[n].read_bytes() for n in wanted}


def serialize(name: str, model: nn.Module) -> tuple[str, bytes]:
    """(file name, bytes) of a torch model's weights as written to disk: their length is the variant's size."""
    state = model.state_dict()
    if name == "int8":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return INT8_WEIGHTS, buffer.getvalue()
    return WEIGHTS, save_safetensors({k: v.contiguous() for k, v in state.items()})


def variant_format(name: CompressVariant) -> str:
    """How a variant's weights are stored: int8 (torch.ao state dict), onnx, or dense (safetensors)."""
    return "onnx" if name in ONNX_VARIANTS else "int8" if name == "int8" else "dense"


def write_variant(
    directory: Path,
    name: CompressVariant,
    spec: ModelSpec,
    card: ModelCard,
    source: str,
    payload: tuple[str, bytes],
    variant: VariantReport,
) -> None:
    """The variant's weights and its card in `directory` (inside compress's staging directory: atomic as a whole)."""
    directory.mkdir()
    (directory / payload[0]).write_bytes(payload[1])
    variant_card = {
        "variant": name,
        "format": variant_format(name),
        "spec": spec.model_dump(mode="json"),
        "model_digest": source,  # the trained model it was made from: packaging refuses a stale variant
        "sha256": hashlib.sha256(payload[1]).hexdigest(),  # of the weights file: every reader checks it
        "featurizer_key": card.featurizer_key,
        "dataset": card.dataset.model_dump(),
        "sparsity": variant.sparsity,
        "finetune_epochs": variant.finetune_epochs,
        "metrics": variant.metrics,
    }
    write_json(directory / CARD, variant_card, nan_as_null=True)


def load_compressed(path: str | Path, spec: ModelSpec | None = None) -> MultiTaskModel | OnnxModel:
    """A variant `compress` wrote, rebuilt from its card (or from `spec`, e.g. with the text encoder's config moved);
    weights load without unpickling arbitrary objects."""
    path = Path(path)
    try:
        card = json.loads((path / CARD).read_text())
        spec = spec or ModelSpec.model_validate(card["spec"])
        weights = path / (
            ONNX_WEIGHTS if card["format"] == "onnx" else INT8_WEIGHTS if card["format"] == "int8" else WEIGHTS
        )
        if "sha256" in card and file_sha256(weights) != card["sha256"]:
            raise TrainingError(
                f"{weights}: its bytes differ from what compress recorded (damaged or replaced): run `msa compress`"
            )
        if card["format"] == "onnx":
            return OnnxModel(path / ONNX_WEIGHTS, spec)
        model = MultiTaskModel(spec, pretrained=False, standalone=True)
        if card["format"] == "int8":
            model = quantize_int8(model)
            with known_deprecations():
                state = torch.load(path / INT8_WEIGHTS, map_location="cpu", weights_only=True)
        else:
            state = load_safetensors((path / WEIGHTS).read_bytes())
        model.load_state_dict(state)
    except TrainingError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise TrainingError(
            f"{path}: no readable compressed model ({type(e).__name__}: {e}); run `msa compress`"
        ) from None
    return model.eval()
