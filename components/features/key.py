"""The content key of the features: a hash of what featurize computes them from (the dataset's files, the text
model's files, the settings that change a feature, the contract's version). Featurize records it in the state
(`FeaturizerState.key`) and keeps its output while the key matches; the registry compares it before it trusts the
features on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.core.config import FeaturizeParams, runtime_keys
from components.core.hashing import tree_digest
from components.data.dataset import Manifest, read_manifest
from components.features.contract import FEATURES, FEATURIZER_VERSION, sha256_or_none, state_or_none
from components.features.text_model import resolve_text_model

__all__ = ["CLIP_SETTINGS", "NOT_IN_KEY", "content_key", "input_key", "is_current"]

# Settings that decide only where features go and how fast they are computed, not what they are.
NOT_IN_KEY = runtime_keys("featurize")
CLIP_SETTINGS = {"audio": "audio_clips", "vision": "video_clips"}  # the modality's clip extraction settings


def input_key(raw: str | Path, params: FeaturizeParams) -> str:
    """The content hash `featurize` keys its output on: dataset files, text model files, settings, code version."""
    text = read_manifest(raw).modalities.text
    return content_key(Path(raw), params, resolve_text_model(params.text_model) if text else None)


def is_current(out: str | Path, key: str) -> bool:
    """Whether `out` holds the features of the inputs hashed to `key`, byte for byte as they were written."""
    existing = state_or_none(Path(out))
    return (
        existing is not None
        and existing.key == key
        and sha256_or_none(Path(out) / FEATURES) == existing.features_sha256
    )


def content_key(raw: Path, params: FeaturizeParams, text_path: Path | None, manifest: Manifest | None = None) -> str:
    digest = hashlib.sha256(f"featurizer {FEATURIZER_VERSION}\n".encode())
    clips = (manifest or read_manifest(raw)).modalities.clips
    # Extraction settings count only where clips are extracted: they change nothing else.
    unused = {name for modality, name in CLIP_SETTINGS.items() if modality not in clips}
    settings = params.model_dump(mode="json", exclude=NOT_IN_KEY | unused)
    if clips:  # the extraction code and the decoders' and librosa's versions decide the frames too
        from importlib.metadata import version

        from components.data.media import EXTRACTOR_VERSION

        settings["extractor"] = [EXTRACTOR_VERSION, version("av"), version("librosa")]
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for label, root in (("dataset", raw), ("text model", text_path)):
        if root is not None:
            digest.update(f"\n{label}\n".encode())
            tree_digest(root, digest=digest)
    return digest.hexdigest()
