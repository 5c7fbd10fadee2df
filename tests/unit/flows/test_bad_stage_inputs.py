"""Bad input to featurize and the stages after it: a damaged dataset, a damaged features cache, a device this
machine lacks. One line naming the file and the rule, exit 1, and data/raw, models/ and mlflow.db unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from components.features.contract import FEATURES
from tests.conftest import tiny_dataset
from tests.hardening import fingerprint, gif, guarded, msa, png_claiming


def image(name: str, content: bytes) -> Callable:
    def edit(samples, sequences, images):
        images[name] = content

    return edit


def damage(relative: str, content: bytes | None = None, *, truncate: int | None = None) -> Callable[[Path], None]:
    def apply(raw: Path) -> None:
        path = raw / relative
        if content is None and truncate is None:
            path.unlink()
        elif truncate is not None:
            path.write_bytes(path.read_bytes()[:truncate])
        else:
            path.write_bytes(content)

    return apply


# (id, dataset edit, file damage after writing, settings, message)
DATASET_CASES = [
    (
        "image-bomb",
        image("images/s03.png", png_claiming(20_000, 20_000)),
        None,
        {},
        "images/s03.png (id s03): image has more than the 89478485 pixels allowed",
    ),
    ("image-header-only", image("images/s04.png", png_claiming(8, 8)[:40]), None, {}, "(id s04): not a PNG or JPEG"),
    (
        "image-truncated",
        image("images/s08.png", png_claiming(64, 64)[:-20]),
        None,
        {},
        "(id s08): image does not decode",
    ),
    ("image-is-text", image("images/s05.png", b"just some text"), None, {}, "(id s05): not a PNG or JPEG image"),
    ("image-is-gif", image("images/s06.png", gif()), None, {}, "(id s06): not a PNG or JPEG image"),
    ("image-missing", None, damage("images/s07.png"), {}, "cannot read the image"),
    ("no-manifest", None, damage("manifest.yaml"), {}, "missing: every dataset directory needs a manifest.yaml"),
    ("manifest-not-yaml", None, damage("manifest.yaml", b"name: [x\n"), {}, "manifest.yaml: not valid YAML"),
    ("samples-not-parquet", None, damage("samples.parquet", b"PAR1 nope"), {}, "not a readable parquet file"),
    (
        "sequences-truncated",
        None,
        damage("sequences/audio.safetensors", truncate=50),
        {},
        "audio.safetensors: not a readable safetensors file",
    ),
    ("device-cuda", None, None, {"featurize": {"device": "cuda"}}, "CUDA is not available on this machine"),
    ("device-unknown", None, None, {"featurize": {"device": "tpu"}}, "'tpu' is not a torch device"),
]


@pytest.fixture
def project(tmp_path: Path, tiny_text_model: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    def make(edit: Callable | None = None, **sections: dict) -> Path:
        root = tmp_path / "project"
        tiny_dataset(root / "data", edit=edit, name="raw")
        settings = {
            "featurize": {"text_model": str(tiny_text_model), "image_size": 8},
            "model": {"hidden": 8, "textcnn": {"feature_maps": 4}},
            "train": {"epochs": 1, "batch_size": 4},
        }
        for name, values in sections.items():
            settings[name] = settings.get(name, {}) | values
        (root / "params.yaml").write_text(yaml.safe_dump(settings))
        (root / "models").mkdir(exist_ok=True)
        (root / "mlflow.db").write_bytes(b"SQLite format 3\x00")
        monkeypatch.chdir(root)
        return root

    return make


def assert_refused(outcome, message: str) -> None:
    assert outcome.code == 1, outcome
    assert message in outcome.stderr, outcome.stderr
    assert len(outcome.error.splitlines()) == 1 and "Traceback" not in outcome.stderr, outcome.stderr


@pytest.mark.parametrize(
    ("edit", "after", "settings", "message"), [c[1:] for c in DATASET_CASES], ids=[c[0] for c in DATASET_CASES]
)
def test_featurize_refuses_a_damaged_dataset(project, edit, after, settings, message) -> None:
    root = project(edit, **settings)
    if after is not None:
        after(root / "data" / "raw")
    before = guarded(root)
    assert_refused(msa("featurize"), message)
    assert guarded(root) == before and not (root / "data" / "features").exists()


@pytest.fixture
def featurized(project) -> Path:
    root = project()
    assert msa("featurize").code == 0
    return root


def test_a_damaged_features_file_is_rebuilt_not_kept(featurized: Path) -> None:
    features = featurized / "data" / "features" / FEATURES
    assert "unchanged inputs, kept" in msa("featurize").stdout
    intact = features.read_bytes()
    features.write_bytes(intact[: len(intact) // 2])  # as `truncate -s` leaves it
    before = guarded(featurized)
    differ = f"{features.relative_to(featurized)}: its bytes differ from what featurize recorded in featurizer.json"
    assert_refused(msa("train"), differ)
    assert guarded(featurized) == before
    flipped = bytearray(intact)
    flipped[-1] ^= 0x01  # one bit of the last tensor: still a readable file, with another number in it
    features.write_bytes(bytes(flipped))
    assert_refused(msa("train"), differ)
    assert guarded(featurized) == before
    outcome = msa("featurize")
    assert outcome.code == 0 and "wrote" in outcome.stdout and features.read_bytes() == intact


@pytest.mark.parametrize(
    ("command", "settings", "message"),
    [
        ("train", {"train": {"device": "cuda"}}, "train.device: device 'cuda' requested but CUDA is not available"),
        ("train", {"train": {"device": "cuda:3"}}, "CUDA is not available"),
        ("evaluate", {}, "models/trained/model.json: no readable model card"),
        ("compress", {}, "models/trained/model.json: no readable model card"),
    ],
    ids=["train-cuda", "train-cuda-3", "evaluate-no-model", "compress-no-model"],
)
def test_later_stages_name_what_is_missing_or_impossible(featurized, command, settings, message) -> None:
    params = yaml.safe_load((featurized / "params.yaml").read_text())
    for name, values in settings.items():
        params[name] = params.get(name, {}) | values
    (featurized / "params.yaml").write_text(yaml.safe_dump(params))
    before = guarded(featurized)
    assert_refused(msa(command), message)
    assert guarded(featurized) == before


def test_train_without_features_says_what_to_run(project) -> None:
    project()
    assert_refused(msa("train"), "run `msa featurize` first")


def test_a_deleted_featurizer_state_says_what_rewrites_the_features(featurized: Path) -> None:
    """featurizer.json gone, features.safetensors left: `msa featurize` alone cannot replace a directory without it
    (nor `dvc repro`: the stage's output persists), so every reader says to remove the directory first, and featurize
    says so before its work."""
    import shutil

    features = featurized / "data" / "features"
    (features / "featurizer.json").unlink()
    before = guarded(featurized) | fingerprint(features)
    message = (
        "error: data/features/featurizer.json: missing beside the other files in data/features: remove data/features, "
        "then run `msa featurize` (or `dvc repro`) to write it again"
    )
    for command in ("train", "featurize"):
        outcome = msa(command)
        assert_refused(outcome, message)
        assert outcome.error == message
    assert guarded(featurized) | fingerprint(features) == before
    shutil.rmtree(features)  # as the message says
    outcome = msa("featurize")
    assert outcome.code == 0 and "wrote" in outcome.stdout and (features / "featurizer.json").is_file()
