"""Content hashes: of a file, of a directory tree, and of Python code as its syntax tree without docstrings.

Producers record them and every reader checks them (features, checkpoints, serving packages); the lineage of a
trained model (`components.training.lineage`) is built from them.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["CODE_ROOT", "code_digest", "file_sha256", "module_closure", "tree_digest"]

CODE_ROOT = Path(__file__).parents[1]  # the `components` package


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
        return [f"{arg.values[0].value!s}*"]  # an f-string's constant parts are str
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
