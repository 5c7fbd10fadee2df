"""Importers: each outside format lands in the canonical dataset, and each kind of bad input is a DataError that
names the file, the row or line, and the rule; a failed import leaves nothing behind and nothing damaged."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from components.core.errors import DataError
from components.data.dataset import read_dataset
from components.data.importers import import_image_text_csv, import_mmsa, import_text_tsv
from tests.conftest import png_bytes

MOSI_TEXT = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "mosi-text"


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ---------------------------------------------------------------- MMSA pickle


def mmsa_split(n: int, steps: int, seed: int, lengths: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    split = {
        "raw_text": np.array([f"utterance {seed}-{i}" for i in range(n)], dtype=object),
        "audio": rng.normal(size=(n, steps, 5)).astype(np.float32),
        "vision": rng.normal(size=(n, steps, 7)).astype(np.float32),
        "regression_labels": np.linspace(-3, 3, n).astype(np.float32),
        "id": np.array([f"vid{seed}$_${i}" for i in range(n)], dtype=object),
        "text_bert": np.zeros((n, 3, steps)),  # ignored
        "classification_labels": np.zeros(n),  # ignored
    }
    if lengths:
        split["audio_lengths"] = [steps - i % 2 for i in range(n)]
        split["vision_lengths"] = [steps] * n
    return split


def write_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


@pytest.fixture
def mmsa_file(tmp_path: Path) -> Path:
    data = {"train": mmsa_split(4, 6, 0), "valid": mmsa_split(2, 6, 1), "test": mmsa_split(3, 4, 2, lengths=False)}
    data["train"]["audio"][0, 0, 0] = -np.inf
    return write_pickle(tmp_path / "mosi_aligned.pkl", data)


def test_mmsa_happy_path(mmsa_file: Path, tmp_path: Path) -> None:
    ds = read_dataset(import_mmsa(mmsa_file, tmp_path / "out", trust_pickle=True))
    assert ds.manifest.name == "mosi_aligned" and ds.manifest.source == "mosi_aligned.pkl"
    assert ds.manifest.label.kind == "regression" and (ds.manifest.label.min, ds.manifest.label.max) == (-3, 3)
    assert ds.manifest.modalities.present == ["text", "audio", "vision"]
    assert (ds.manifest.modalities.audio.dim, ds.manifest.modalities.audio.max_len) == (5, 6)
    assert ds.manifest.modalities.vision.dim == 7
    s = ds.samples
    assert list(s["split"]) == ["train"] * 4 + ["valid"] * 2 + ["test"] * 3
    assert list(s["seq_index"]) == list(range(9))
    assert s["id"][4] == "vid1$_$0" and s["text"][0] == "utterance 0-0" and s["image"].isna().all()
    np.testing.assert_allclose(s["label"][:4], np.linspace(-3, 3, 4), rtol=1e-6)
    audio = ds.sequences["audio"]
    assert audio.features.shape == (9, 6, 5) and ds.sequences["vision"].features.shape == (9, 6, 7)
    assert list(audio.lengths) == [6, 5, 6, 5, 6, 5, 4, 4, 4]  # test split has no lengths: full T = 4
    assert np.isneginf(audio.features[0, 0, 0])  # kept by default for validation to report
    assert (audio.features[6:, 4:] == 0).all()  # test split padded from T=4 to T=6


def test_mmsa_zero_nonfinite(mmsa_file: Path, tmp_path: Path) -> None:
    ds = read_dataset(import_mmsa(mmsa_file, tmp_path / "out", trust_pickle=True, zero_nonfinite=True, name="m"))
    assert ds.manifest.name == "m"
    assert np.isfinite(ds.sequences["audio"].features).all() and ds.sequences["audio"].features[0, 0, 0] == 0


def test_mmsa_refuses_untrusted_pickle_without_opening_it(tmp_path: Path) -> None:
    missing = tmp_path / "never_opened.pkl"  # does not exist: the refusal must come before any open()
    with pytest.raises(DataError, match="arbitrary code") as err:
        import_mmsa(missing, tmp_path / "out", trust_pickle=False)
    assert "never_opened.pkl" in str(err.value) and "--trust-pickle" in str(err.value)
    assert_no_leftovers(tmp_path / "out")


def test_mmsa_truncated_pickle(mmsa_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.pkl"
    bad.write_bytes(mmsa_file.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        import_mmsa(bad, tmp_path / "out", trust_pickle=True)
    assert "cut.pkl" in str(err.value)
    assert_no_leftovers(tmp_path / "out")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("valid"), "missing split 'valid'"),
        (lambda d: d["test"].pop("vision"), "split 'test': missing key"),
        (lambda d: d["train"].update(id=d["train"]["id"][:3]), "split 'train': arrays disagree"),
        (lambda d: d["valid"].update(audio=np.zeros((2, 6))), "split 'valid': 'audio' should be"),
    ],
)
def test_mmsa_wrong_structure(tmp_path: Path, edit, message: str) -> None:
    data = {"train": mmsa_split(4, 6, 0), "valid": mmsa_split(2, 6, 1), "test": mmsa_split(3, 6, 2)}
    edit(data)
    path = write_pickle(tmp_path / "broken.pkl", data)
    with pytest.raises(DataError, match=message) as err:
        import_mmsa(path, tmp_path / "out", trust_pickle=True)
    assert str(err.value).startswith(str(path))
    assert_no_leftovers(tmp_path / "out")


# ---------------------------------------------------------------- image-text CSV


@pytest.fixture
def posts(tmp_path: Path) -> Path:
    root = tmp_path / "posts"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        (root / "img" / f"{i}.png").write_bytes(png_bytes((40 * i, 80, 120)))
    (root / "img" / "3.JPG").write_bytes(b"not decoded here")  # validation decodes images, the importer copies
    return root


def write_csv(root: Path, lines: list[str], name: str = "posts.csv") -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CSV_LINES = [
    "id,text,image,label,split",
    "a1,great day,img/0.png,positive,train",
    'a/2,"so, bad",img/1.png,negative,train',
    "a3,meh,,neutral,valid",
    "a4,fine,img/2.png,positive,test",
    "a5,snap,img/3.JPG,negative,test",
]


def test_image_text_classification(posts: Path, tmp_path: Path) -> None:
    out = import_image_text_csv(write_csv(posts, CSV_LINES), tmp_path / "out", image_root=posts)
    ds = read_dataset(out)
    assert ds.manifest.name == "posts" and ds.manifest.source == "posts.csv"
    assert ds.manifest.label.kind == "classification"
    assert ds.manifest.label.classes == ["negative", "neutral", "positive"]
    assert ds.manifest.modalities.present == ["text", "image"] and ds.manifest.modalities.image.allow_missing
    s = ds.samples
    assert list(s["id"]) == ["a1", "a/2", "a3", "a4", "a5"]
    assert list(s["split"]) == ["train", "train", "valid", "test", "test"]
    assert s["text"][1] == "so, bad" and s["label"][2] == "neutral"
    assert list(s["image"].fillna("-")) == ["images/a1.png", "images/a_2.png", "-", "images/a4.png", "images/a5.jpg"]
    assert s["seq_index"].isna().all()
    assert ds.image_path("images/a_2.png").read_bytes() == (posts / "img" / "1.png").read_bytes()
    assert ds.image_path("images/a5.jpg").read_bytes() == b"not decoded here"


def test_image_text_given_classes_keep_unknown_labels(posts: Path, tmp_path: Path) -> None:
    path = write_csv(posts, CSV_LINES)
    ds = read_dataset(import_image_text_csv(path, tmp_path / "out", image_root=posts, classes=["negative", "positive"]))
    assert ds.manifest.label.classes == ["negative", "positive"]
    assert ds.samples["label"][2] == "neutral"  # validation reports it as an unknown class


def test_image_text_regression_and_seeded_split(posts: Path, tmp_path: Path) -> None:
    lines = ["id,text,image,label"] + [f"p{i},post {i},img/{i % 3}.png,{i / 10 - 1}" for i in range(20)]
    path = write_csv(posts, lines)
    first = read_dataset(import_image_text_csv(path, tmp_path / "a", image_root=posts, seed=3))
    again = read_dataset(import_image_text_csv(path, tmp_path / "b", image_root=posts, seed=3))
    other = read_dataset(import_image_text_csv(path, tmp_path / "c", image_root=posts, seed=4))
    assert first.manifest.label.kind == "regression" and not first.manifest.modalities.image.allow_missing
    assert first.samples["label"][0] == pytest.approx(-1.0)
    assert first.samples["split"].value_counts().to_dict() == {"train": 16, "valid": 2, "test": 2}
    assert list(first.samples["split"]) == list(again.samples["split"])
    assert list(first.samples["split"]) != list(other.samples["split"])
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_image_text_regression_rejects_text_label(posts: Path, tmp_path: Path) -> None:
    path = write_csv(posts, ["id,text,image,label", "x,hi,img/0.png,0.5", "y,ho,img/1.png,good"])
    with pytest.raises(DataError, match=r"posts.csv, row 2 \(id y\): label 'good' is not a number"):
        import_image_text_csv(path, tmp_path / "out", image_root=posts, task="regression")
    assert_no_leftovers(tmp_path / "out")


def test_image_text_non_utf8(posts: Path, tmp_path: Path) -> None:
    path = posts / "latin1.csv"
    path.write_bytes("id,text,image,label\nx,fine,img/0.png,1\ny,café,img/1.png,2\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: line 3: byte 0xe9 is not valid UTF-8.*re-encode"):
        import_image_text_csv(path, tmp_path / "out", image_root=posts)
    assert_no_leftovers(tmp_path / "out")


def test_image_text_missing_column(posts: Path, tmp_path: Path) -> None:
    path = write_csv(posts, ["id,text,picture,label", "x,hi,img/0.png,1"])
    with pytest.raises(DataError, match=r"missing column 'image'; found columns \['id', 'text', 'picture', 'label'\]"):
        import_image_text_csv(path, tmp_path / "out", image_root=posts)


def test_image_text_missing_image(posts: Path, tmp_path: Path) -> None:
    path = write_csv(posts, ["id,text,image,label", "x,hi,img/0.png,1", "y,ho,img/9.png,2"])
    with pytest.raises(DataError, match=r"posts.csv, row 2 \(id y\): image file not found: .*img/9.png"):
        import_image_text_csv(path, tmp_path / "out", image_root=posts)
    assert_no_leftovers(tmp_path / "out")


def test_image_text_unsupported_suffix(posts: Path, tmp_path: Path) -> None:
    (posts / "img" / "0.gif").write_bytes(b"GIF89a")
    path = write_csv(posts, ["id,text,image,label", "x,hi,img/0.gif,1"])
    with pytest.raises(DataError, match=r"row 1 \(id x\): image 'img/0.gif' has an unsupported suffix"):
        import_image_text_csv(path, tmp_path / "out", image_root=posts)


def test_image_text_ids_alike_in_case_get_their_own_image_and_the_root_must_be_a_directory(
    posts: Path, tmp_path: Path
) -> None:
    path = write_csv(posts, ["id,text,image,label", "Post,hi,img/0.png,1", "post,ho,img/1.png,2"])
    ds = read_dataset(import_image_text_csv(path, tmp_path / "out", image_root=posts))
    assert list(ds.samples["image"]) == ["images/Post.png", "images/post-2.png"]  # one file each on a case-blind disk
    with pytest.raises(DataError, match=r"nowhere: not a directory: --image-root must be"):
        import_image_text_csv(path, tmp_path / "other", image_root=tmp_path / "nowhere")
    assert_no_leftovers(tmp_path / "other")


def test_failed_import_leaves_existing_dataset_intact(posts: Path, tmp_path: Path) -> None:
    out = import_image_text_csv(write_csv(posts, CSV_LINES), tmp_path / "out", image_root=posts)
    before = tree(out)
    broken = write_csv(posts, [*CSV_LINES, "a6,gone,img/missing.png,positive,train"], name="broken.csv")
    with pytest.raises(DataError, match="row 6"):
        import_image_text_csv(broken, out, image_root=posts)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "posts"]  # no staging directory left over


# ---------------------------------------------------------------- text TSV


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


def test_text_tsv_with_valid_file_carves_test(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "train.tsv", [(f'IT WAS "OK" {i} ', str(i / 10 - 1)) for i in range(20)])
    valid = write_tsv(tmp_path / "dev.tsv", [("GOOD", "2.5"), ("BAD", "-2")])
    ds = read_dataset(import_text_tsv(train, tmp_path / "out", valid=valid, test_frac=0.25))
    assert ds.manifest.modalities.present == ["text"] and ds.manifest.label.kind == "regression"
    assert ds.manifest.name == "train" and ds.manifest.source == "train.tsv, dev.tsv"
    s = ds.samples
    assert s["split"].value_counts().to_dict() == {"train": 15, "test": 5, "valid": 2}
    assert s["id"][0] == "train-0000" and list(s["id"][-2:]) == ["valid-0000", "valid-0001"]
    assert s["text"][3] == 'IT WAS "OK" 3 '  # QUOTE_NONE: quotes and spaces kept as written
    assert s["label"][21] == -2.0 and s["image"].isna().all() and s["seq_index"].isna().all()
    assert set(s.loc[s["split"] == "test", "id"].str[:6]) == {"train-"}


def test_text_tsv_seeded_split_is_deterministic(tmp_path: Path) -> None:
    train = write_tsv(tmp_path / "all.tsv", [(f"T{i}", "0") for i in range(30)])
    a = read_dataset(import_text_tsv(train, tmp_path / "a", seed=1)).samples
    b = read_dataset(import_text_tsv(train, tmp_path / "b", seed=1)).samples
    assert a["split"].value_counts().to_dict() == {"train": 24, "valid": 3, "test": 3}
    assert list(a["split"]) == list(b["split"]) and tree(tmp_path / "a") == tree(tmp_path / "b")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text\tlabel\nFINE\t1\nNO LABEL HERE\n", r"bad.tsv: line 3: expected 2 tab-separated fields"),
        (b"text\tlabel\nFINE\t1\nA\tB\tC\n", r"bad.tsv: line 3: expected 2 tab-separated fields .* found 3"),
        (b"text\tlabel\nFINE\t1\nFINE\t1\nODD\thigh\n", r"bad.tsv: line 4: label 'high' is not a number"),
        (b"sentence\tscore\nFINE\t1\n", r"bad.tsv: line 1: expected the header"),
        (b"text\tlabel\nFINE\t1\nCAF\xc9\t1\n", r"bad.tsv: line 3: byte 0xc9 is not valid UTF-8"),
    ],
)
def test_text_tsv_bad_lines(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        import_text_tsv(path, tmp_path / "out")
    assert_no_leftovers(tmp_path / "out")


@pytest.mark.skipif(not MOSI_TEXT.is_dir(), reason="shared MOSI transcripts not present")
def test_text_tsv_real_mosi_transcripts(tmp_path: Path) -> None:
    out = import_text_tsv(MOSI_TEXT / "train.tsv", tmp_path / "mosi", valid=MOSI_TEXT / "dev.tsv", name="mosi-text")
    s = read_dataset(out).samples
    counts = s["split"].value_counts().to_dict()
    assert len(s) == 1284 + 229 and s["id"].is_unique
    assert counts["valid"] == 229 and counts["train"] + counts["test"] == 1284 and counts["test"] == 128
    assert s["label"].between(-3, 3).all() and (s["text"].str.len() > 0).all()
