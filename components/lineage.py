"""What a model was trained from: content hashes of the dataset, the settings and the code.

Registration records them on the run and on the registered version; a retrain whose hashes equal a registered
version's has nothing new to learn, so the pipeline flow skips it. They are content hashes rather than data.dvc's
md5 and the git commit: a dataset regenerated without `dvc add`, or a module edited but not committed, still counts
as a change, and a clone in another directory, or a copy without git, hashes the same.

The code hash covers only the modules that featurize and train import, and each as its syntax tree without
docstrings: editing the tracking code, a docstring or a comment does not ask for a retrain.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from components.config import Params, result_settings
from components.dataset import read_manifest

CODE_ROOT = Path(__file__).parent  # the `components` package
TRAINED_BY = ("components.featurize", "components.training")  # what `msa featurize` and `msa train` call


@dataclass(frozen=True)
class Lineage:
    data: str
    params: str
    code: str

    def tags(self) -> dict[str, str]:
        return {"data_hash": self.data, "params_hash": self.params, "code_hash": self.code}

    def matches(self, tags: Mapping[str, str]) -> bool:
        return all(tags.get(key) == value for key, value in self.tags().items())

    def summary(self) -> str:
        return f"data {self.data}, params {self.params}, code {self.code}"


def lineage(params: Params) -> Lineage:
    # Paths, devices, timeouts and orchestration (config.RUNTIME_SETTINGS) do not change what is trained.
    settings = json.dumps(result_settings(params), sort_keys=True)
    read_manifest(params.data.raw)  # a dataset directory, or refused at once: hashing a folder that is not one is waste
    return Lineage(
        data=tree_digest(params.data.raw).hexdigest()[:16],
        params=hashlib.sha256(settings.encode()).hexdigest()[:16],
        code=trained_code_hash(),
    )


def trained_code_hash() -> str:
    """The hash of the code a trained model depends on: what featurize and train import, docstrings aside."""
    return code_digest(module_closure(*TRAINED_BY, root=CODE_ROOT), CODE_ROOT.parent).hexdigest()[:16]


def tree_digest(root: str | Path, pattern: str = "*", digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed every file under `root` matching `pattern` (relative path, then bytes, in path order) into a sha256."""
    root = Path(root)
    digest = digest or hashlib.sha256()
    for file in sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{file.relative_to(root).as_posix()}\0".encode())
        with file.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest


def file_sha256(file: str | Path) -> str:
    """The sha256 of one file's bytes, hex: what a producer records and its readers check."""
    with Path(file).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def code_digest(files: list[str], repo: Path) -> hashlib._Hash:
    """A sha256 of each file's path and syntax tree without docstrings: comments and docstrings do not count."""
    digest = hashlib.sha256()
    for file in sorted(files):
        tree = _without_docstrings(_parse(repo / file))
        digest.update(f"{file}\0{ast.dump(tree)}\0".encode())
    return digest


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and _docstring(node):
            node.body = node.body[1:]
    return tree


def _docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def module_closure(*modules: str, root: Path = CODE_ROOT) -> list[str]:
    """The files of the package at `root` that importing `modules` runs, them included, relative to root's parent.

    An import counts wherever it is in a file (a function-local one runs when the function does), and importing a
    module runs the __init__ of each package above it.
    """
    files = _module_files(root)
    seen: set[str] = set()
    pending = [*modules]
    while pending:
        for name in _matching(pending.pop(), files):
            if name not in seen:
                seen.add(name)
                pending += _imports(name, files[name])
    return sorted(files[name].relative_to(root.parent).as_posix() for name in seen)


def _module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at `root` (a package is its __init__.py)."""
    files = {}
    for file in root.rglob("*.py"):
        parts = file.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return files


def _matching(pattern: str, files: Mapping[str, Path]) -> list[str]:
    """The modules a dotted name (or a pattern such as components.models.*) stands for, and the packages above them."""
    named = [name for name in files if fnmatchcase(name, pattern)]
    return [package for name in named for package in _with_packages(name) if package in files]


def _with_packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def _imports(module: str, file: Path) -> list[str]:
    """The dotted names `file` imports, statically or by importlib.import_module; most are outside the package."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(_parse(file)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]  # `from a import b`: b may be a module
        elif isinstance(node, ast.Call) and _called(node.func) in {"import_module", "__import__"} and node.args:
            names += _name_pattern(node.args[0])
    return names


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute name of `from {"." * level}{module} import ...` written in `package`."""
    if not level:
        return module or ""
    base = package.rsplit(".", level - 1)[0]
    return f"{base}.{module}" if module else base


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def _name_pattern(arg: ast.expr) -> list[str]:
    """The module a constant names; for an f-string, every module its constant start may lead to (components.models
    loads its torch modules so, on first use)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return [f"{arg.values[0].value}*"]
    return []


def _parse(file: Path, attempts: int = 5) -> ast.Module:
    """`ast.parse` of a source file. On CPython 3.11 the AST constructor keeps its recursion depth in state shared by
    threads, so a parse while another thread parses (a Prefect flow run has several threads) can raise "SystemError:
    AST constructor recursion depth mismatch" (cpython gh-106905): the same source parses on a later try."""
    source = file.read_text(encoding="utf-8")
    for _ in range(attempts - 1):
        with contextlib.suppress(SystemError):
            return ast.parse(source, filename=str(file))
    return ast.parse(source, filename=str(file))
