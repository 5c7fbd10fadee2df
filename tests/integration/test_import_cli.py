"""Each importer through the real `msa` command, then `msa validate` on what it wrote."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import png_bytes
from tests.unit.data.test_importers import mmsa_split, write_pickle, write_tsv

pytestmark = pytest.mark.integration


def test_mmsa_import_then_validate(project, msa, tmp_path):
    data = {"train": mmsa_split(6, 5, 0), "valid": mmsa_split(3, 5, 1), "test": mmsa_split(3, 5, 2)}
    data["valid"]["audio"][1, 2, 0] = -np.inf  # as in real MOSI audio features
    pickle_file = write_pickle(tmp_path / "mosi.pkl", data)

    msa("data", "import", "mmsa", str(pickle_file), "--trust-pickle", "--out", "data/mosi", cwd=project)
    failed = msa("validate", "--data", "data/mosi", cwd=project, check=False)
    assert failed.returncode == 1 and "vid1$_$1: audio features contain inf" in failed.stderr

    importing = ["data", "import", "mmsa", str(pickle_file), "--trust-pickle", "--zero-nonfinite", "--out", "data/mosi"]
    msa(*importing, cwd=project)
    assert "passed" in msa("validate", "--data", "data/mosi", cwd=project).stdout


def test_csv_import_then_validate(project, msa, tmp_path):
    images = tmp_path / "posts" / "img"
    images.mkdir(parents=True)
    lines = ["id,text,image,label"]
    for i in range(20):
        (images / f"{i}.png").write_bytes(png_bytes((10 * i, 80, 120)))
        lines.append(f"p{i},post number {i},img/{i}.png,{'positive' if i % 2 else 'negative'}")
    (tmp_path / "posts.csv").write_text("\n".join(lines) + "\n")

    source = ["csv", str(tmp_path / "posts.csv"), "--image-root", str(tmp_path / "posts")]
    splits = ["--valid-frac", "0.2", "--test-frac", "0.2", "--out", "data/posts"]
    result = msa("data", "import", *source, *splits, cwd=project)
    assert "20 samples (train 12, valid 4, test 4); modalities: text, image" in result.stdout
    assert "passed" in msa("validate", "--data", "data/posts", cwd=project).stdout


def test_tsv_import_then_validate(project, msa, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", [(f"line {i}", str(i % 7 - 3)) for i in range(30)])
    valid = write_tsv(tmp_path / "dev.tsv", [(f"dev line {i}", "0.5") for i in range(5)])
    result = msa("data", "import", "tsv", str(train), "--valid", str(valid), "--out", "data/t", cwd=project)
    assert "35 samples (train 27, valid 5, test 3); modalities: text" in result.stdout
    assert "passed" in msa("validate", "--data", "data/t", cwd=project).stdout
