"""The README's demo numbers are the committed metrics': a retrained model with a README left behind fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `header` (header first, separator dropped)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|-: "):
            rows.append([cell.strip().strip("*") for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("page", ["README.md", "docs/concepts/model.md"])
def test_demo_heads_are_the_committed_metrics(page):
    metrics = json.loads((REPO / "metrics/evaluate.json").read_text())
    heads, maes = table((REPO / page).read_text(), "| head | lstm |")
    for head, mae in zip(heads[1:], maes[1:], strict=True):
        assert float(mae) == round(metrics["test"][head]["mae"], 3), head


def test_demo_fusion_is_the_committed_metrics():
    readme = (REPO / "README.md").read_text()
    metrics = json.loads((REPO / "metrics/evaluate.json").read_text())
    fusion, valid = metrics["test"]["fusion"], metrics["valid"]["fusion"]
    sentence = r"Acc-2 ([\d.]+), F1 ([\d.]+), Acc-7 ([\d.]+) and Pearson r ([\d.]+) on test \(Acc-2 ([\d.]+)"
    said = re.search(sentence, readme)
    assert said, "README lost its fusion sentence"
    expected = [100 * fusion["acc2"], 100 * fusion["f1"], 100 * fusion["acc7"], fusion["corr"], 100 * valid["acc2"]]
    for text, value in zip(said.groups(), expected, strict=True):
        assert float(text) == round(value, len(text.split(".")[1])), said.group(0)


def test_compressed_variants_are_the_committed_metrics():
    readme = (REPO / "README.md").read_text()
    compress = json.loads((REPO / "metrics/compress.json").read_text())
    rows = table(readme, "| variant |")[1:]
    assert {row[0] for row in rows} == set(compress)
    for name, smaller, change, bounds, kept in rows:  # not the speed-ups: timings of the machine that ran them
        assert float(smaller.rstrip("x")) == round(compress[name]["smaller"], 2), name
        assert float(change) == round(compress[name]["change"], 2), name
        low, high = (float(bound) for bound in bounds.split(","))
        assert (low, high) == (round(compress[name]["low"], 2), round(compress[name]["high"], 2)), name
        assert kept == ("yes" if compress[name]["kept"] else "no"), name


def test_real_text_numbers_are_the_committed_benchmark():
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    results = json.loads((REPO / "bench/results/mosi_text.json").read_text())
    (fusion,) = [m for m in results["mean_over_seeds"] if m["config"] == "example" and m["head"] == "fusion"]
    sentence = (
        r"over (\d) seeds, its fused head scores Acc-2 ([\d.]+) ± ([\d.]+) and MAE ([\d.]+) ± ([\d.]+), and loses "
        r"([\d.]+) points of Acc-2 with 30% of the words deleted, ([\d.]+) with 30% replaced"
    )
    said = re.search(sentence, readme)
    assert said, "README lost its real-text sentence"
    expected = [
        len(fusion["seeds"]),
        100 * fusion["test_acc2"],
        100 * fusion["test_acc2_std"],
        fusion["test_mae"],
        fusion["test_mae_std"],
        fusion["drop_text_word_deletion"],
        fusion["drop_text_word_replacement"],
    ]
    for text, value in zip(said.groups(), expected, strict=True):
        places = len(text.split(".")[1]) if "." in text else 0
        assert float(text) == round(value, places), said.group(0)
