"""Typed view of `params.yaml`, the single source of every tunable (read by the CLI, DVC and Prefect alike).

The facade of params.yaml: callers import every section from here. The sections themselves live by stage in
`components.core.config_sections` (the `Section` base and the stages up to training) and
`components.core.config_release` (the stages after training); this module assembles them into `Params`, loads
and explains params.yaml, applies overrides (`tune`, `--seeds`), and says which settings are runtime only.

Every model forbids unknown keys: a misspelled key is an error that names it, suggests the closest valid key
and lists the valid ones, instead of being silently ignored while the default is used.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from components.core.config_release import (
    ONNX_VARIANTS,
    CompressParams,
    CompressVariant,
    DriftParams,
    EvaluateParams,
    Perturbation,
    PipelineParams,
    RegisterParams,
    RobustnessGate,
    RobustnessParams,
    ServeParams,
    StageTimeouts,
)
from components.core.config_sections import (
    DEFAULT_TEXT_MODEL,
    TEXT_MODELS,
    THREADS_HELP,
    AudioClipParams,
    AugmentParams,
    Choice,
    DataParams,
    DemoParams,
    FeaturizeParams,
    Head,
    Modality,
    ModelParams,
    PrunerParams,
    SearchDimension,
    Section,
    TextCNNParams,
    TextModel,
    TrainParams,
    TuneParams,
    ValidateParams,
    VideoClipParams,
)
from components.core.errors import ConfigError  # raised here, and imported from here by callers of load_params
from components.core.textfiles import yaml_problem

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_TEXT_MODEL",
    "NOT_TUNABLE",
    "ONNX_VARIANTS",
    "RUNTIME_SETTINGS",
    "TEXT_MODELS",
    "THREADS_HELP",
    "TUNABLE_SECTIONS",
    "AudioClipParams",
    "AugmentParams",
    "Choice",
    "CompressParams",
    "CompressVariant",
    "ConfigError",
    "DataParams",
    "DemoParams",
    "DriftParams",
    "EvaluateParams",
    "FeaturizeParams",
    "Head",
    "Modality",
    "ModelParams",
    "Params",
    "Perturbation",
    "PipelineParams",
    "PrunerParams",
    "RegisterParams",
    "RobustnessGate",
    "RobustnessParams",
    "SearchDimension",
    "Section",
    "ServeParams",
    "StageTimeouts",
    "TextCNNParams",
    "TextModel",
    "TrainParams",
    "TuneParams",
    "ValidateParams",
    "VideoClipParams",
    "load_params",
    "result_settings",
    "runtime_keys",
    "with_overrides",
    "with_seeds",
]

DEFAULT_PARAMS = Path("params.yaml")


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
    drift: DriftParams = DriftParams()
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
# either. tests/unit/project/test_dvc_deps.py holds dvc.yaml to this set.
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
        "drift",  # the reference registration packages and how scoring compares batches: no stage's output
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
        node: object = data
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
        annotation = model.model_fields[name].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)  # the path runs through nested models
        model = annotation
    return [f.alias or name for name, f in model.model_fields.items()]
