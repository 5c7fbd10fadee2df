"""Bad settings: `msa` names the file, the key and the rule in one line, exits 1, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hardening import guarded, msa

REPO = Path(__file__).resolve().parents[3]

CASES = [  # (id, params.yaml text, what the one line says)
    ("empty-file", "", "the file is empty"),
    ("only-comments", "# all defaults, I thought\n", "the file is empty"),
    ("not-yaml", "train: [epochs: 3\n", "not valid YAML"),
    ("top-level-list", "- train\n- epochs\n", "expected a mapping of sections"),
    ("unknown-section", "trainer: {epochs: 3}\n", "unknown key 'trainer' (did you mean 'train'?)"),
    ("misspelled-key", "train: {epoch: 3}\n", "unknown key 'train.epoch' (did you mean 'epochs'?)"),
    ("boolean-epochs", "train: {epochs: true}\n", "train.epochs: Value error, expected a number, got a boolean"),
    ("boolean-lr", "train: {lr: false}\n", "train.lr: Value error, expected a number, got a boolean"),
    ("boolean-optional-int", "featurize: {sequence_max_len: yes}\n", "expected a number, got a boolean"),
    ("text-epochs", "train: {epochs: ten}\n", "train.epochs: Input should be a valid integer"),
    ("zero-epochs", "train: {epochs: 0}\n", "train.epochs: Input should be greater than or equal to 1"),
    ("negative-lr", "train: {lr: -0.1}\n", "train.lr: Input should be greater than 0"),
    ("dropout-one", "model: {dropout: 1.0}\n", "model.dropout: Input should be less than 1"),
    ("min-over-max", "validate: {text_min_chars: 10, text_max_chars: 5}\n", "text_min_chars must not exceed"),
    ("negative-loss-weight", "train: {loss_weights: {fusion: -1}}\n", "loss_weights must not be negative"),
    ("unknown-head-weight", "train: {loss_weights: {bert: 1}}\n", "train.loss_weights.bert.[key]"),
    ("unknown-precision", "train: {precision: fp8}\n", "train.precision: Input should be 'auto', 'fp32'"),
    ("repeated-splits", "evaluate: {splits: [test, test]}\n", "splits must not repeat"),
    ("no-variants", "compress: {variants: []}\n", "compress.variants: Tuple should have at least 1 item"),
    ("sparsity-one", "compress: {sparsity: 1}\n", "compress.sparsity: Input should be less than 1"),
    ("negative-margin", "register: {margin: -1}\n", "register.margin: Input should be greater than or equal to 0"),
    ("unknown-training-mode", "pipeline: {training: gpu}\n", "pipeline.training: Input should be 'local'"),
    ("zero-max-rows", "serve: {max_rows: 0}\n", "serve.max_rows: Input should be greater than or equal to 1"),
    ("boolean-max-frames", "serve: {max_frames: true}\n", "serve.max_frames: Value error, expected a number"),
    ("section-not-mapping", "train: 3\n", "train: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["validate", "featurize"])
def test_a_bad_setting_is_named_and_nothing_runs(guarded_project: Path, command: str, text: str, message: str) -> None:
    project = guarded_project
    (project / "bad.yaml").write_text(text)
    before = guarded(project)
    outcome = msa(command, "--params", "bad.yaml")
    assert outcome.code == 1, outcome
    assert outcome.error.startswith("error: bad.yaml: "), outcome.stderr
    assert message in outcome.stderr, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert (
        guarded(project) == before and not (project / "reports").exists() and not (project / "data/features").exists()
    )


def test_a_missing_params_file_says_where_it_was_looked_for(guarded_project: Path) -> None:
    outcome = msa("train", "--params", "nowhere.yaml")
    assert outcome.code == 1 and "nowhere.yaml: no such file" in outcome.stderr


def test_the_repository_params_are_valid() -> None:
    from components.core.config import load_params

    assert load_params(REPO / "params.yaml").serve.max_rows >= 1  # the table fails for its own reasons only


@pytest.mark.parametrize("how", ["params", "option"])
@pytest.mark.parametrize("command", ["validate", "featurize"])
def test_data_raw_naming_a_file_is_refused_in_one_line(guarded_project: Path, command: str, how: str) -> None:
    project = guarded_project
    (project / "notes.txt").write_text("not a dataset")
    if how == "params":
        (project / "file.yaml").write_text("data: {raw: notes.txt}\n")
        args = ("--params", "file.yaml")
    else:
        args = ("--data", "notes.txt")
    before = guarded(project)
    outcome = msa(command, *args)
    assert outcome.code == 1, outcome
    assert outcome.error == (
        "error: notes.txt: is a file, not a dataset directory: name the directory that holds manifest.yaml and "
        "samples.parquet"
    ), outcome.stderr
    assert guarded(project) == before and not (project / "reports").exists()
