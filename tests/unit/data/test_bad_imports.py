"""Bad input to the importers and the dataset writers: one line naming the file, row and rule, exit 1, and nothing
changed, neither the project's data, models and tracking database nor the directories the command was pointed at."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from tests.hardening import Case, fingerprint, gif, guarded, msa, png

GOOD_CSV = "id,text,image,label\np1,great day,imgs/a.png,1.5\np2,awful day,imgs/b.png,-2\np3,fine,,0.5\n"
IMAGES = {"d/imgs/a.png": png(), "d/imgs/b.png": png(color=(1, 2, 3))}
TSV = "text\tlabel\n" + "".join(f"utterance {i}\t{(-1) ** i * 0.5}\n" for i in range(12))
REVERSED = "--label-min must be below --label-max; got --label-min 3 and --label-max -3"


def csv_case(id: str, csv: str | bytes, message: str, *extra: str, code: int = 1, **kwargs) -> Case:
    files = {**IMAGES, "d/posts.csv": csv, **kwargs.pop("files", {})}
    args = ("data", "import", "csv", "d/posts.csv", "--image-root", "d", "--out", "out", *extra)
    return Case(id, args, code, message, files=files, **kwargs)


def tsv_case(id: str, tsv: str | bytes, message: str, *extra: str, code: int = 1) -> Case:
    return Case(
        id, ("data", "import", "tsv", "t/train.tsv", "--out", "out", *extra), code, message, {"t/train.tsv": tsv}
    )


CASES = [
    # the CSV importer: columns, rows, labels
    csv_case("csv-no-label-column", "id,text,image\np1,x,\n", "missing column 'label'"),
    csv_case("csv-empty-file", "", "missing column 'id'"),
    csv_case(
        "csv-extra-field",
        "id,text,image,label\np1,a, b,imgs/a.png,1\n",
        "row 1: expected 4 fields (id, text, image, label), found 5",
    ),
    csv_case("csv-missing-field", "id,text,image,label\np1,abc,1\n", "expected 4 fields"),
    csv_case("csv-bad-utf8", b"id,text,image,label\np1,caf\xe9,,1\n", "line 2: byte 0xe9 is not valid UTF-8"),
    csv_case("csv-mixed-labels", GOOD_CSV + "p4,meh,,zero\n", "label 'zero' is not a number, but 3 other labels are"),
    csv_case("csv-one-class", "id,text,image,label\np1,a,,pos\np2,b,,pos\n", "needs at least 2 classes"),
    csv_case(
        "csv-regression-text-label", GOOD_CSV + "p4,x,,high\n", "label 'high' is not a number", "--task", "regression"
    ),
    csv_case("csv-unknown-task", GOOD_CSV, "'ordinal'", "--task", "ordinal", code=2),
    csv_case(
        "csv-fractions-sum-to-one",
        GOOD_CSV,
        "split fractions must be between 0 and 1",
        "--valid-frac",
        "0.6",
        "--test-frac",
        "0.5",
    ),
    csv_case("csv-negative-fraction", GOOD_CSV, "split fractions must be between 0 and 1", "--valid-frac", "-0.1"),
    csv_case("csv-label-range-reversed", GOOD_CSV, REVERSED, "--label-min", "3", "--label-max", "-3"),
    # the CSV importer: ids unique, splits written exactly as the contract names them
    csv_case(
        "csv-duplicate-id",
        GOOD_CSV + "p4,x,,1\np2,again,,1\n",
        "posts.csv, row 5 (id p2): same id as row 2: ids must be unique",
    ),
    csv_case(
        "csv-split-not-exact",
        "id,text,image,label,split\np1,a,,1,train\np2,b,,2,TRAIN \n",
        "posts.csv, row 2 (id p2): split 'TRAIN ' is not one of train, valid, test (lower case, no spaces)",
    ),
    csv_case(
        "csv-split-empty", "id,text,image,label,split\np1,a,,1,\np2,b,,2,test\n", "row 1 (id p1): split '' is not"
    ),
    # the CSV importer: image paths stay inside --image-root and name images
    csv_case(
        "csv-image-dotdot",
        "id,text,image,label\np1,a,../secret.png,1\np2,b,,2\n",
        "outside --image-root",
        files={"secret.png": png()},
    ),
    csv_case("csv-image-absolute", "id,text,image,label\np1,a,/etc/hostname,1\np2,b,,2\n", "outside --image-root"),
    csv_case(
        "csv-image-symlink-out",
        "id,text,image,label\np1,a,imgs/link.png,1\np2,b,,2\n",
        "outside --image-root",
        links={"d/imgs/link.png": "/etc/hostname"},
    ),
    csv_case(
        "csv-image-symlink-to-text",
        "id,text,image,label\np1,a,imgs/l.png,1\np2,b,,2\n",
        "unsupported suffix",
        files={"d/notes.txt": "not an image"},
        links={"d/imgs/l.png": "../notes.txt"},
    ),
    csv_case(
        "csv-image-gif",
        "id,text,image,label\np1,a,imgs/c.gif,1\np2,b,,2\n",
        "unsupported suffix",
        files={"d/imgs/c.gif": gif()},
    ),
    csv_case("csv-image-missing", "id,text,image,label\np1,a,imgs/none.png,1\np2,b,,2\n", "image file not found"),
    csv_case(
        "csv-image-directory",
        "id,text,image,label\np1,a,imgs/dir.png,1\np2,b,,2\n",
        "image file not found",
        files={"d/imgs/dir.png/x": "x"},
    ),
    # the TSV importer
    tsv_case("tsv-wrong-header", "sentence\tscore\nhi\t1\n", "line 1: expected the header 'text<TAB>label'"),
    tsv_case("tsv-three-fields", "text\tlabel\nhi\t1\textra\n", "line 2: expected 2 tab-separated fields"),
    tsv_case("tsv-label-not-number", "text\tlabel\nhi\tpositive\n", "line 2: label 'positive' is not a number"),
    tsv_case("tsv-bad-utf8", b"text\tlabel\nna\xefve\t1\n", "line 2: byte 0xef is not valid UTF-8"),
    tsv_case("tsv-fractions", TSV, "split fractions must be between 0 and 1", "--test-frac", "1.5"),
    tsv_case("tsv-label-range-reversed", TSV, REVERSED, "--label-min", "3", "--label-max", "-3"),
    tsv_case(
        "tsv-label-range-empty", TSV, "--label-min must be below --label-max", "--label-min", "1", "--label-max=1"
    ),
    tsv_case("tsv-label-range-nan", TSV, "--label-min and --label-max must be finite numbers", "--label-max", "nan"),
    tsv_case("tsv-header-only", "text\tlabel\n", "t/train.tsv: no rows after the header: nothing to import"),
    Case(
        "tsv-valid-header-only",
        ("data", "import", "tsv", "t/train.tsv", "--valid", "t/valid.tsv", "--out", "out"),
        1,
        "t/valid.tsv: no rows after the header: nothing to import",
        {"t/train.tsv": TSV, "t/valid.tsv": "text\tlabel\n"},
    ),
    Case("tsv-missing-file", ("data", "import", "tsv", "nothere.tsv", "--out", "out"), 1, "cannot read the file"),
    # the MMSA importer: pickle only when trusted
    Case(
        "mmsa-untrusted",
        ("data", "import", "mmsa", "m.pkl", "--out", "out"),
        1,
        "--trust-pickle",
        {"m.pkl": pickle.dumps({"train": {}})},
    ),
    Case(
        "mmsa-not-a-pickle",
        ("data", "import", "mmsa", "m.pkl", "--trust-pickle", "--out", "out"),
        1,
        "m.pkl",
        {"m.pkl": "not a pickle"},
    ),
    Case(
        "mmsa-label-range-reversed",
        ("data", "import", "mmsa", "m.pkl", "--trust-pickle", "--label-min", "1", "--label-max", "-1", "--out", "out"),
        1,
        "--label-min must be below --label-max; got --label-min 1 and --label-max -1",
        {"m.pkl": pickle.dumps({})},
    ),
    Case(
        "mmsa-not-a-dict",
        ("data", "import", "mmsa", "m.pkl", "--trust-pickle", "--out", "out"),
        1,
        "expected a dict with keys",
        {"m.pkl": pickle.dumps([1, 2])},
    ),
    # writers replace only a directory the project wrote (a dataset, by its manifest.yaml) or an empty one
    csv_case(
        "csv-out-is-the-input-dir", GOOD_CSV, "holds files this project did not write (no manifest.yaml)", "--out", "d"
    ),
    csv_case("csv-out-is-a-file", GOOD_CSV, "is a file, not a directory", "--out", "d/posts.csv"),
    tsv_case("tsv-out-is-the-project", TSV, "holds files this project did not write", "--out", "."),
    Case(
        "demo-out-foreign",
        ("data", "demo", "--size", "30", "--out", "photos"),
        1,
        "refusing to replace it",
        {"photos/holiday.jpg": b"\xff\xd8 my photo"},
    ),
    Case(
        "demo-out-file",
        ("data", "demo", "--size", "30", "--out", "notes.txt"),
        1,
        "is a file",
        {"notes.txt": "keep me"},
    ),
    Case(
        "demo-out-link-to-foreign",
        ("data", "demo", "--size", "30", "--out", "link"),
        1,
        "refusing to replace it",
        {"photos/a.jpg": b"\xff\xd8"},
        links={"link": "photos"},
    ),
    Case(
        "mmsa-out-foreign",
        ("data", "import", "mmsa", "m.pkl", "--out", "photos"),
        1,
        "refusing to replace it",
        {"m.pkl": pickle.dumps({}), "photos/a.jpg": b"\xff\xd8"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_1_and_changes_nothing(case: Case, guarded_project: Path) -> None:
    project = guarded_project
    case.materialize(project)
    before = guarded(project) | fingerprint(*(project / name for name in ("d", "photos", "notes.txt", "link")))
    outcome = msa(*case.args)
    assert outcome.code == case.code, outcome
    assert case.message in outcome.stderr, outcome.stderr
    assert case.code == 2 or len(outcome.error.splitlines()) == 1, f"one line, got:\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert not (project / "out").exists()
    after = guarded(project) | fingerprint(*(project / name for name in ("d", "photos", "notes.txt", "link")))
    assert after == before


def test_a_long_text_imports_and_validation_names_it(guarded_project: Path) -> None:
    project = guarded_project
    """Over Python's csv field limit (131072 characters): imported as it is, for validation's rule to judge."""
    long = "word " * 30_000
    (project / "t").mkdir()
    (project / "t" / "train.tsv").write_text(TSV + f"{long}\t1\n")
    Case("images", (), files=IMAGES).materialize(project)
    (project / "d" / "posts.csv").write_text(GOOD_CSV + f'p9,"{long}",,1\n')
    assert msa("data", "import", "csv", "d/posts.csv", "--image-root", "d", "--out", "csv-ds").code == 0
    assert msa("data", "import", "tsv", "t/train.tsv", "--out", "tsv-ds").code == 0
    outcome = msa("validate", "--data", "tsv-ds")
    assert outcome.code == 1 and "text length within [1, 2000] chars" in outcome.stderr


def test_a_dataset_the_project_wrote_is_replaced(guarded_project: Path) -> None:
    assert msa("data", "demo", "--size", "30", "--out", "data/raw").code == 0
    assert msa("data", "demo", "--size", "40", "--out", "data/raw").code == 0
    assert "40 samples" in msa("data", "demo", "--size", "40", "--out", "data/raw").stdout
