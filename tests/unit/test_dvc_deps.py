"""dvc.yaml names, as deps of each `msa <stage>` stage, every components module the command runs: a module left
out would let `dvc repro` keep a stage's outputs after an edit that changes them.

Strict on purpose: errors.py, atomic.py and the packages' __init__ are listed too, as they decide when a stage fails
and how it writes its files, and the list stays short enough to read."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from components.lineage import CODE_ROOT, module_closure

REPO = CODE_ROOT.parent
CLI = REPO / "flows" / "cli.py"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
COMMANDS = {name: match[1] for name, stage in STAGES.items() if (match := re.fullmatch(r"msa (\w+)", stage["cmd"]))}


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
    assert set(COMMANDS.values()) >= {"validate", "featurize", "train", "evaluate", "compress"}


def test_the_commands_call_their_stages_components():
    assert command_modules("train") >= {"components.training"}
    assert command_modules("featurize") >= {"components.featurize"}, "imported at the top of cli.py under an alias"


@pytest.mark.parametrize("stage", sorted(COMMANDS))
def test_stage_deps_cover_the_code_its_command_runs(stage):
    deps = STAGES[stage]["deps"]
    missing = [file for file in module_closure(*command_modules(COMMANDS[stage])) if not covered(file, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} runs {missing} but does not depend on them: add them to its deps"
