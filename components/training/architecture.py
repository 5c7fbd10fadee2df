"""The architecture training builds (`build_spec`): which encoders and heads, for these features and settings."""

from __future__ import annotations

from components.core.config import TEXT_MODELS, ConfigError, Head, ModelParams, TrainParams
from components.features.contract import FeaturizerState
from components.models.spec import ImageSpec, LabelSpec, ModelSpec, SequenceSpec, TextSpec

__all__ = ["build_spec"]


def build_spec(state: FeaturizerState, model: ModelParams, train: TrainParams) -> ModelSpec:
    """The architecture for these features and settings; a setting the data cannot satisfy is a ConfigError."""
    available = [m for m in ("text", "image", "audio", "vision") if getattr(state, m) is not None]
    wanted = list(train.modalities or available)
    missing = [m for m in wanted if m not in available]
    if missing:
        raise ConfigError(
            f"train.modalities asks for {missing}, but dataset {state.dataset!r} has only {available} "
            "(remove them, or set train.modalities: null to use every modality the dataset has)"
        )
    encoders: list[Head] = [
        *(model.text_models if "text" in wanted else ()),
        *(m for m in ("image", "audio", "vision") if m in wanted),
    ]
    heads: list[Head] = [*encoders, "fusion"]
    if train.single_task == "fusion":
        heads = ["fusion"]
    elif train.single_task is not None:
        if train.single_task not in encoders:
            raise ConfigError(
                f"train.single_task is {train.single_task!r}, but the heads available for dataset "
                f"{state.dataset!r} with these settings are {heads}"
            )
        encoders = heads = [train.single_task]
    text = None
    text_models = tuple(m for m in encoders if m in TEXT_MODELS)
    if text_models:
        assert state.text is not None  # text sub-models are built only when the dataset has text (checked above)
        if train.text_encoder == "frozen" and not state.text.token_states:
            raise ConfigError("train.text_encoder 'frozen' needs precomputed states: set featurize.token_states: true")
        text = TextSpec(
            mode=train.text_encoder, encoder=state.text.model, hidden_size=state.text.hidden_size, models=text_models
        )
    image = state.image if "image" in encoders else None
    sequences = {m: getattr(state, m) for m in ("audio", "vision") if m in encoders}
    return ModelSpec(
        label=LabelSpec(kind=state.label_kind, classes=state.classes),
        text=text,
        image=ImageSpec(size=image.size, mean=image.mean, std=image.std) if image else None,
        **{m: SequenceSpec(dim=s.dim, max_len=s.max_len) for m, s in sequences.items()},
        heads=tuple(heads),
        params=model,
    )
