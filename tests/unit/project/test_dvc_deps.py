"""dvc.yaml names, as deps of each `msa <stage>` stage, every components module the command runs: a module left
out would let `dvc repro` keep a stage's outputs after an edit that changes them. And as its params, every setting
of its sections that changes a result, and none that only says where files go or how fast work runs.

Strict on purpose: errors.py, atomic.py and the packages' __init__ are listed too, as they decide when a stage fails
and how it writes its files, and the list stays short enough to read."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from components.core.config import RUNTIME_SETTINGS, Params, TrainParams
from components.core.hashing import CODE_ROOT, module_closure

REPO = CODE_ROOT.parent
CLI = REPO / "flows" / "cli.py"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGE_COMMAND = re.compile(r"python -m flows.cli (\w+)")
COMMANDS = {name: match[1] for name, stage in STAGES.items() if (match := STAGE_COMMAND.fullmatch(stage["cmd"]))}
# The params.yaml sections each stage reads, beyond which it lists single keys (compress fine-tunes like train).
SECTIONS = {
    "validate": ["validate"],
    "featurize": ["featurize"],
    "train": ["model", "train"],
    "evaluate": ["evaluate"],
    "robustness": ["robustness"],
    "compress": ["compress"],
}
DEFAULTS = Params().model_dump(mode="json", by_alias=True)


def command_modules(command: str) -> set[str]:
    """The components modules `msa <command>` calls: imported in its function, or imported at the top of cli.py
    and named in it."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    top = {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    function = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == command), None)
    assert function is not None, f"flows/cli.py has no function for `msa {command}`"
    local = {node.module for node in ast.walk(function) if isinstance(node, ast.ImportFrom)}
    named = {top[node.id] for node in ast.walk(function) if isinstance(node, ast.Name) and node.id in top}
    return {module for module in local | named if module and module.startswith("components.")}


def covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(f"{dep.rstrip('/')}/") for dep in deps)


def test_every_msa_stage_is_checked():
    assert set(COMMANDS.values()) >= {"validate", "featurize", "train", "evaluate", "robustness", "compress"}


def test_the_commands_call_their_stages_components():
    assert command_modules("train") >= {"components.training.train"}
    assert command_modules("featurize") >= {"components.features.featurize"}, (
        "imported at the top of cli.py under an alias"
    )


@pytest.mark.parametrize("stage", sorted(COMMANDS))
def test_stage_deps_cover_the_code_its_command_runs(stage):
    deps = STAGES[stage]["deps"]
    missing = [file for file in module_closure(*command_modules(COMMANDS[stage])) if not covered(file, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not depend on them: add them to its deps"


def settings(section: str) -> set[str]:
    """The section's keys, a nested section (model.textcnn) as one key."""
    return {f"{section}.{key}" for key in DEFAULTS[section]}


def listed(stage: str) -> set[str]:
    """The stage's params, a whole section (`model`) spelled out as its keys."""
    keys = set()
    for key in STAGES[stage]["params"]:
        keys |= settings(key) if key in DEFAULTS else {key}
    return keys


@pytest.mark.parametrize("stage", sorted(SECTIONS))
def test_stage_params_are_every_setting_that_changes_its_results(stage):
    own = set().union(*(settings(section) for section in SECTIONS[stage])) - RUNTIME_SETTINGS
    assert not own - listed(stage), f"dvc.yaml stage {stage!r} ignores {sorted(own - listed(stage))}"


@pytest.mark.parametrize("stage", sorted(SECTIONS))
def test_paths_devices_and_batch_sizes_rerun_nothing(stage):
    runtime = {key for key in listed(stage) if key in RUNTIME_SETTINGS or key.split(".")[0] in RUNTIME_SETTINGS}
    assert not runtime, f"dvc.yaml stage {stage!r} reruns for {sorted(runtime)}, which change no result"
    assert {"featurize.device", "featurize.workers", "train.device", "evaluate.device"} <= RUNTIME_SETTINGS


def test_runtime_settings_name_real_settings():
    for key in RUNTIME_SETTINGS:
        section = DEFAULTS
        for part in key.split("."):
            assert part in section, f"config.RUNTIME_SETTINGS names {key!r}, which params.yaml does not have"
            section = section[part]


def test_the_model_artifact_is_what_train_writes():
    (artifact,) = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"].values()
    assert artifact["type"] == "model" and artifact["path"] == str(TrainParams().out)
