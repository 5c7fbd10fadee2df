"""Lineage hashes: what changes them (data files, settings that change a result, the code featurize and train run)
and what does not (`pipeline` settings, paths, devices, timeouts, docstrings, comments, other modules, files other
than .py, caches; for the data hash, where the dataset is); `module_closure`; `Lineage.matches`."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from components.core.config import Params
from components.core.hashing import module_closure
from components.training import lineage as lineage_module
from components.training.lineage import TRAINED_BY, Lineage, lineage

PACKAGE = lineage_module.CODE_ROOT


def settings(raw: Path, **sections: dict) -> Params:
    return Params.model_validate({"data": {"raw": str(raw)}} | sections)


@pytest.fixture
def raw(make_dataset) -> Path:
    return make_dataset()


@pytest.fixture
def code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the components package that `lineage` hashes instead of the real one."""
    copy = tmp_path / "code" / "components"
    shutil.copytree(lineage_module.CODE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(lineage_module, "CODE_ROOT", copy)
    return copy


def edit(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text, f"{file.name} no longer has {old!r}: pick another place to edit"
    file.write_text(text.replace(old, new, 1))


def append_code(file: Path) -> None:
    file.write_text(file.read_text() + "\nEDITED = 1\n")


def test_stable_and_the_data_hash_independent_of_where_the_dataset_lies(raw, tmp_path):
    first = lineage(settings(raw))
    assert lineage(settings(raw)) == first
    moved = shutil.copytree(raw, tmp_path / "elsewhere" / "tiny")
    assert lineage(settings(moved)).data == first.data
    assert all(len(value) == 16 for value in first.tags().values())


@pytest.mark.parametrize("name", ["samples.parquet", "manifest.yaml", "images/s03.png", "sequences"])
def test_a_changed_data_file_changes_only_the_data_hash(raw, name):
    before = lineage(settings(raw))
    target = raw / name
    if target.is_dir():  # a file nobody reads still is part of the dataset's content
        target = target / "extra.bin"
        target.write_bytes(b"\0")
    else:
        target.write_bytes(target.read_bytes() + b"\n")
    after = lineage(settings(raw))
    assert after.data != before.data
    assert (after.params, after.code) == (before.params, before.code)


def test_a_renamed_data_file_changes_the_data_hash(raw):
    before = lineage(settings(raw)).data
    (raw / "images" / "s03.png").rename(raw / "images" / "s03-renamed.png")
    assert lineage(settings(raw)).data != before


@pytest.mark.parametrize(
    "sections",
    [
        {"train": {"lr": 0.01}},
        {"train": {"epochs": 31}},
        {"model": {"hidden": 32}},
        {"featurize": {"max_tokens": 32}},
        {"featurize": {"batch_size": 7}},  # a batch is padded to its longest text: the bits differ
        {"train": {"threads": 2}},  # a sum over 2 threads rounds differently
        {"validate": {"text_max_chars": 1000}},
        {"evaluate": {"splits": ["test"]}},
        {"compress": {"sparsity": 0.3}},
        {"register": {"margin": 0.01}},
    ],
    ids=lambda s: ".".join([*s, *next(iter(s.values()))]),
)
def test_a_changed_setting_changes_only_the_params_hash(raw, sections):
    before, after = lineage(settings(raw)), lineage(settings(raw, **sections))
    assert after.params != before.params
    assert (after.data, after.code) == (before.data, before.code)


@pytest.mark.parametrize(
    "pipeline",
    [
        {"training": "deployment"},
        {"train_deployment": "train/elsewhere"},
        {"registry_lock": "another-lock"},
        {"retries": 0},
        {"retry_delay": 10},
        {"timeouts": {"train": 60, "register": 5}},
    ],
    ids=lambda s: next(iter(s)),
)
def test_pipeline_settings_do_not_change_the_lineage(raw, pipeline):
    assert lineage(settings(raw, pipeline=pipeline)) == lineage(settings(raw))


@pytest.mark.parametrize(
    "sections",
    [
        {"featurize": {"workers": 3, "device": "cpu", "out": "elsewhere/features"}},
        {"train": {"device": "cpu", "out": "elsewhere/models"}},
        {"evaluate": {"device": "cpu", "report": "r.json", "headline": "h.json", "plots": "p", "figures": "f"}},
        {"compress": {"out": "c", "report": "c.json", "headline": "ch.json"}},
        {"validate": {"report": "v.json", "data_docs": "docs"}},
        {"register": {"retries": 0, "timeout": 5}},
    ],
    ids=lambda s: next(iter(s)),
)
def test_paths_devices_and_timeouts_do_not_change_the_lineage(raw, sections):
    """config.RUNTIME_SETTINGS: `msa run` retrains for them no more than DVC reruns a stage."""
    assert lineage(settings(raw, **sections)) == lineage(settings(raw))


def test_a_copy_of_the_package_hashes_as_the_package_itself(raw, code, monkeypatch):
    copied = lineage(settings(raw)).code
    monkeypatch.setattr(lineage_module, "CODE_ROOT", PACKAGE)
    assert lineage(settings(raw)).code == copied


def test_code_hash_ignores_docstrings_comments_and_files_other_than_python(raw, code):
    before = lineage(settings(raw))
    (code / "notes.txt").write_text("not code")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"compiled")
    training = code / "training" / "train.py"
    edit(training, ast.get_docstring(ast.parse(training.read_text()), clean=False), "Reworded.\n# a comment")
    edit(code / "models" / "spec.py", "class ModelSpec(Section):\n", 'class ModelSpec(Section):\n    """New."""\n')
    assert lineage(settings(raw)) == before

    append_code(training)
    edited = lineage(settings(raw))
    assert edited.code != before.code
    assert (edited.data, edited.params) == (before.data, before.params)


@pytest.mark.parametrize("module", ["tracking/runs.py", "data/demo.py", "serving/pyfunc.py"])
def test_code_hash_ignores_code_that_training_does_not_run(raw, code, module):
    before = lineage(settings(raw)).code
    append_code(code / module)
    assert lineage(settings(raw)).code == before


@pytest.mark.parametrize(
    "module", ["models/spec.py", "features/featurize.py", "features/contract.py", "core/config.py"]
)
def test_code_hash_covers_what_training_imports(raw, code, module):
    before = lineage(settings(raw)).code
    append_code(code / module)
    assert lineage(settings(raw)).code != before


def test_a_new_module_in_a_subpackage_changes_the_code_hash(raw, code):
    """components.models loads its modules by name on first use: a new one may be among them."""
    before = lineage(settings(raw)).code
    (code / "models" / "new_head.py").write_text("HEAD = 1\n")
    assert lineage(settings(raw)).code != before


def test_the_trained_closure_has_the_models_and_not_the_tracking():
    closure = module_closure(*TRAINED_BY)
    assert {
        "components/training/train.py",
        "components/features/featurize.py",
        "components/models/multitask.py",
    } <= set(closure)
    assert closure == sorted(closure)
    for other in ["tracking/runs", "data/demo", "serving/pyfunc", "evaluation/evaluate", "compression/compress"]:
        assert f"components/{other}.py" not in closure


def test_module_closure_follows_every_kind_of_import(tmp_path):
    files = {
        "__init__.py": "",
        "main.py": "import os\nfrom pkg import plain\n\ndef later():\n    from pkg.sub import deep\n",
        "plain.py": "from .relative import x\n",
        "relative.py": "x = 1\n",
        "sub/__init__.py": "from importlib import import_module\nload = lambda n: import_module(f'pkg.sub.{n}')\n",
        "sub/deep.py": "",
        "sub/lazy.py": "",
        "unused.py": "import pkg.main\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    expected = ["__init__.py", "main.py", "plain.py", "relative.py", "sub/__init__.py", "sub/deep.py", "sub/lazy.py"]
    assert module_closure("pkg.main", root=tmp_path / "pkg") == [f"pkg/{name}" for name in expected]


def test_matches_needs_every_hash_equal():
    ours = Lineage(data="d" * 16, params="p" * 16, code="c" * 16)
    tags = ours.tags()
    assert tags == {"data_hash": "d" * 16, "params_hash": "p" * 16, "code_hash": "c" * 16}
    assert ours.matches(tags)
    assert ours.matches(tags | {"git_commit": "abc", "dataset": "tiny"}), "other tags do not matter"
    for key in tags:
        assert not ours.matches(tags | {key: "0" * 16}), f"a different {key}"
        assert not ours.matches({k: v for k, v in tags.items() if k != key}), f"no {key}: a version from before"
    assert not ours.matches({})


def test_a_folder_that_is_not_a_dataset_is_refused_before_it_is_hashed(tmp_path, monkeypatch):
    """A large folder named as data.raw by mistake is refused at once, not hashed whole first."""
    from components.core.errors import DataError

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8" * 1000)
    monkeypatch.setattr(lineage_module, "tree_digest", lambda *args, **kwargs: pytest.fail("hashed before checked"))
    with pytest.raises(DataError, match=r"photos/manifest.yaml: missing: every dataset directory needs a manifest"):
        lineage(settings(photos))
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(DataError, match=r"notes.txt: is a file, not a dataset directory"):
        lineage(settings(tmp_path / "notes.txt"))
