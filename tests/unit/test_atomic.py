import json

import pytest

from components.atomic import replace_directory, write_json


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
    (target / "old.txt").write_text("old")
    with replace_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_replace_directory_failure_keeps_old_and_cleans_staging(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), replace_directory(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_write_json_is_strict_unless_undefined_values_may_be_null(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"acc2": float("nan")})
    assert not (tmp_path / "m.json").exists()
    write_json(
        tmp_path / "m.json", {"test": {"acc2": float("nan"), "mae": 0.5}, "curve": [float("inf")]}, nan_as_null=True
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {"test": {"acc2": None, "mae": 0.5}, "curve": [None]}
