import json

import pytest

from components.core.atomic import replace_directory, write_json
from components.core.errors import DataError


def test_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "reports" / "r.json"
    write_json(target, {"a": 1})
    write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_write_json_refuses_nan_and_keeps_old_content(tmp_path):
    target = tmp_path / "r.json"
    write_json(target, {"ok": True})
    with pytest.raises(ValueError):
        write_json(target, {"x": float("nan")})
    assert json.loads(target.read_text()) == {"ok": True}
    assert len(list(tmp_path.iterdir())) == 1


def test_replace_directory_swaps_in_new_content(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "ours.txt").write_text("old")
    (target / "old.txt").write_text("old")
    with replace_directory(target, marker="ours.txt") as staging:
        (staging / "ours.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["ours.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_replace_directory_failure_keeps_old_and_cleans_staging(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (target / "ours.txt").write_text("old")
    with pytest.raises(RuntimeError), replace_directory(target, marker="ours.txt") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.mark.parametrize("foreign", ["dir", "file", "link"])
def test_replace_directory_refuses_what_the_project_did_not_write(tmp_path, foreign):
    target = tmp_path / "photos"
    if foreign == "file":
        target.write_text("not a directory")
    elif foreign == "link":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "a.png").write_bytes(b"x")
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
        (target / "a.png").write_bytes(b"x")
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(DataError, match="refusing to replace it"), replace_directory(target, marker="ours.txt") as s:
        (s / "ours.txt").write_text("new")
    assert sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before


def test_replace_directory_takes_an_empty_directory(tmp_path):
    (tmp_path / "new").mkdir()
    with replace_directory(tmp_path / "new", marker="ours.txt") as staging:
        (staging / "ours.txt").write_text("new")
    assert (tmp_path / "new" / "ours.txt").read_text() == "new"


def test_write_json_is_strict_unless_undefined_values_may_be_null(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"acc2": float("nan")})
    assert not (tmp_path / "m.json").exists()
    write_json(
        tmp_path / "m.json", {"test": {"acc2": float("nan"), "mae": 0.5}, "curve": [float("inf")]}, nan_as_null=True
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {"test": {"acc2": None, "mae": 0.5}, "curve": [None]}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_take_the_users_umask_not_mkstemps_0600(tmp_path, monkeypatch, umask):
    import stat

    import components.core.atomic as atomic

    monkeypatch.setattr(atomic, "FILE_MODE", 0o666 & ~umask)
    write_json(tmp_path / "r.json", {"a": 1})
    atomic.write_text(tmp_path / "params.tuned.yaml", "x: 1\n")
    for name in ("r.json", "params.tuned.yaml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_umask_is_read_without_changing_it():
    import os

    import components.core.atomic as atomic

    mask = os.umask(0o022)
    os.umask(mask)
    assert atomic._read_umask() == mask
    probe = os.umask(mask)
    assert probe == mask  # still the same after reading it
    assert atomic.FILE_MODE == 0o666 & ~atomic.UMASK


def test_a_process_with_umask_027_writes_0640(tmp_path):
    import os
    import stat
    import subprocess
    import sys

    code = "import sys; from components.core.atomic import write_text; write_text(sys.argv[1], 'x')"
    target = tmp_path / "tuned.yaml"
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, preexec_fn=lambda: os.umask(0o027))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
