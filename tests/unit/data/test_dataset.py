import numpy as np
import pandas as pd
import pytest

from components.core.errors import DataError
from components.data.dataset import (
    ClassificationLabel,
    Manifest,
    Modalities,
    RegressionLabel,
    TextSpec,
    carve_splits,
    read_dataset,
    write_dataset,
)


def text_only(n: int = 6) -> tuple[Manifest, pd.DataFrame]:
    manifest = Manifest(name="t", label=RegressionLabel(), modalities=Modalities(text=TextSpec()))
    samples = pd.DataFrame(
        {
            "id": [f"x{i}" for i in range(n)],
            "split": (["train", "valid", "test"] * n)[:n],
            "text": ["hello"] * n,
            "label": np.linspace(-1, 1, n),
        }
    )
    return manifest, samples


def test_round_trip_keeps_rows_types_and_sequences(make_dataset):
    dataset = read_dataset(make_dataset())
    samples = dataset.samples
    assert list(samples.columns) == ["id", "split", "text", "label", "image", "seq_index"]
    assert str(samples["seq_index"].dtype) == "Int64" and samples["label"].dtype == np.float64
    assert dataset.manifest.modalities.present == ["text", "image", "audio", "vision"]
    assert dataset.sequences["audio"].features.shape == (12, 4, 3)
    assert dataset.image_path(samples["image"][0]).is_file()


def test_missing_columns_are_written_as_nulls(tmp_path):
    manifest, samples = text_only()
    dataset = read_dataset(write_dataset(tmp_path / "d", manifest, samples))
    assert dataset.samples["image"].isna().all() and dataset.samples["seq_index"].isna().all()


def test_classification_labels_are_strings(tmp_path):
    manifest, samples = text_only()
    manifest = manifest.model_copy(update={"label": ClassificationLabel(classes=["neg", "pos"])})
    samples["label"] = ["neg", "pos"] * 3
    assert read_dataset(write_dataset(tmp_path / "d", manifest, samples)).samples["label"].tolist()[:2] == [
        "neg",
        "pos",
    ]


@pytest.mark.parametrize("key", ["../evil.png", "/abs/x.png", "images/../../x.png", "other/x.png", "images"])
def test_image_keys_must_stay_inside_images(tmp_path, key):
    manifest, samples = text_only()
    with pytest.raises(ValueError, match="inside images/"):
        write_dataset(tmp_path / "d", manifest, samples, images={key: b"x"})
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []


def test_manifest_problems_name_the_file_and_field(make_dataset):
    root = make_dataset()
    manifest = root / "manifest.yaml"
    manifest.write_text("name: x\nlabel: {kind: regression, min: 3, max: -3}\nmodalities: {text: {}}\n")
    with pytest.raises(DataError, match=r"manifest\.yaml: manifest does not match the schema: .*label range is empty"):
        read_dataset(root)
    manifest.write_text("name: x\nlabel: {kind: regression}\nmodalities: {}\n")
    with pytest.raises(DataError, match="declare at least one modality"):
        read_dataset(root)
    manifest.write_text("name: x\nlabel: {kind: ordinal}\nmodalities: {text: {}}\n")
    with pytest.raises(DataError, match="label"):
        read_dataset(root)
    manifest.write_text("name: [x\n")
    with pytest.raises(DataError, match="not valid YAML"):
        read_dataset(root)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("manifest.yaml", "manifest.yaml: missing"),
        ("samples.parquet", "samples.parquet: missing"),
        ("sequences/vision.safetensors", "vision.safetensors: missing: the manifest declares the vision modality"),
    ],
)
def test_missing_files_are_named(make_dataset, remove, message):
    root = make_dataset()
    (root / remove).unlink()
    with pytest.raises(DataError, match=message):
        read_dataset(root)


def test_unreadable_files_are_named(make_dataset, tmp_path):
    root = make_dataset()
    (root / "sequences/audio.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match=r"audio.safetensors: not a readable safetensors file"):
        read_dataset(root)
    with pytest.raises(DataError, match="no dataset directory"):
        read_dataset(tmp_path / "nowhere")


def test_carve_splits_is_seeded_and_sized():
    first = carve_splits(100, seed=3, fractions={"valid": 0.1, "test": 0.2})
    assert first == carve_splits(100, seed=3, fractions={"valid": 0.1, "test": 0.2})
    assert first != carve_splits(100, seed=4, fractions={"valid": 0.1, "test": 0.2})
    assert (first.count("train"), first.count("valid"), first.count("test")) == (70, 10, 20)
    with pytest.raises(ValueError, match="leave rows for train"):
        carve_splits(10, seed=0, fractions={"valid": 0.5, "test": 0.5})
