import hashlib
from pathlib import Path

import numpy as np
import pytest

from components.data.dataset import read_dataset
from components.data.demo import generate_demo


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "raw", size=120, seed=7)


def test_same_arguments_give_byte_identical_files(demo, tmp_path):
    again = generate_demo(tmp_path / "again", size=120, seed=7)
    assert digest(again) == digest(demo)
    other = generate_demo(tmp_path / "other", size=120, seed=8)
    assert digest(other)["samples.parquet"] != digest(demo)["samples.parquet"]


def test_layout_and_contract(demo):
    dataset = read_dataset(demo)
    manifest, samples = dataset.manifest, dataset.samples
    assert manifest.synthetic and "SYNTHETIC" in manifest.description
    assert manifest.modalities.present == ["text", "image", "audio", "vision"]
    assert len(samples) == 120 and samples["id"].is_unique
    assert samples["split"].value_counts().to_dict() == {"train": 84, "valid": 18, "test": 18}
    assert samples["label"].between(-3, 3).all()
    assert all((demo / p).is_file() for p in samples["image"])
    for name, seq in dataset.sequences.items():
        spec = manifest.modalities.sequences[name]
        assert seq.features.shape == (120, spec.max_len, spec.dim)
        assert np.isfinite(seq.features).all()
        assert ((seq.lengths >= 1) & (seq.lengths <= spec.max_len)).all()
        padding = np.arange(spec.max_len)[None, :] >= seq.lengths[:, None]
        assert not seq.features[padding].any(), f"{name} padding must be zeros"


def test_sarcastic_wording_is_used_for_both_signs(demo):
    """The label must need more than the words: the same sarcasm-shaped text appears with both signs."""
    samples = read_dataset(demo).samples
    sarcastic = samples[samples["text"].str.contains("Oh great|Yeah,|Wow,", regex=True)]
    assert (sarcastic["label"] > 0).any() and (sarcastic["label"] < 0).any()


def test_rejects_sizes_too_small_for_three_splits(tmp_path):
    with pytest.raises(ValueError, match="at least 30"):
        generate_demo(tmp_path / "x", size=10)
    assert not (tmp_path / "x").exists()
