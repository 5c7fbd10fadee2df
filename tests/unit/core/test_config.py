from pathlib import Path

import pytest

from components.core.config import ConfigError, EvaluateParams, Params, load_params

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repository_params_load_and_match_defaults_where_unset():
    params = load_params(REPO / "params.yaml")
    assert params.data.raw == Path("data/raw")
    assert params.validation.text_min_chars <= params.validation.text_max_chars


def test_an_empty_file_is_an_error_and_an_empty_mapping_gives_defaults(tmp_path):
    with pytest.raises(ConfigError, match="the file is empty"):
        load_params(write(tmp_path, "\n# nothing\n"))
    assert load_params(write(tmp_path, "{}")) == Params()


def test_misspelled_key_is_named_with_suggestion_and_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, "validate:\n  text_max_char: 10\n"))
    message = str(info.value)
    assert "unknown key 'validate.text_max_char'" in message
    assert "did you mean 'text_max_chars'" in message
    assert "text_min_chars" in message and "leakage_tolerance" in message


def test_unknown_top_level_section_lists_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*valid keys here: data, validate"):
        load_params(write(tmp_path, "trian: {}\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.demo\.size: .*integer.*'many'"):
        load_params(write(tmp_path, "data:\n  demo:\n    size: many\n"))


def test_inconsistent_bounds_rejected(tmp_path):
    with pytest.raises(ConfigError, match="text_min_chars must not exceed text_max_chars"):
        load_params(write(tmp_path, "validate:\n  text_min_chars: 50\n  text_max_chars: 10\n"))


def test_missing_and_unparsable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(write(tmp_path, "- a\n- b\n"))


def test_evaluate_section_defaults_and_splits(tmp_path):
    assert load_params(REPO / "params.yaml").evaluate == EvaluateParams()
    assert load_params(write(tmp_path, "evaluate:\n  splits: [test]\n")).evaluate.splits == ("test",)
    with pytest.raises(ConfigError, match=r"evaluate\.splits: .*must not repeat"):
        load_params(write(tmp_path, "evaluate:\n  splits: [test, test]\n"))
    with pytest.raises(ConfigError, match=r"evaluate\.splits\.0: .*'train'"):
        load_params(write(tmp_path, "evaluate:\n  splits: [train]\n"))


def test_compress_section_defaults_and_variant_names(tmp_path):
    compress = load_params(REPO / "params.yaml").compress
    assert compress.variants == ("int8", "prune_unstructured", "prune_structured", "onnx_fp32", "onnx_int8")
    assert (compress.tolerance, compress.sparsity, compress.metric) == (1.0, 0.5, None)
    with pytest.raises(ConfigError, match=r"compress\.variants\.0"):
        load_params(write(tmp_path, "compress:\n  variants: [fp16]\n"))
