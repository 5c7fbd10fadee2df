"""`dvc plots show` writes a page that renders with no network: .dvc/config names the repository's own page, with
the Vega libraries inlined at the versions DVC's default page loads from a CDN."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dvc_render.vega import VegaRenderer

REPO = Path(__file__).resolve().parents[3]
SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc\s*=", re.IGNORECASE)


def template() -> Path:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    return REPO / ".dvc" / config["plots"]["html_template"]  # relative to .dvc/, as DVC reads it


def test_the_page_inlines_the_vega_libraries_dvc_would_load_from_a_cdn():
    page = template().read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # no place for DVC's CDN <script src> tags
    assert not SCRIPT_SRC.search(page)
    cdn = dict(re.findall(r"npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS))  # what this DVC's default page loads
    assert set(cdn) == {"vega", "vega-lite", "vega-embed"}
    for name, version in cdn.items():
        assert f"/* {name}@{version} build/{name}.min.js (npm)" in page, f"{name} {version} is not the one inlined"
    assert "//# sourceMappingURL" not in page  # no request for a map file


def test_dvc_plots_show_writes_a_page_with_no_network_script(tmp_path):
    (tmp_path / ".dvc").mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-f", "-q"], cwd=tmp_path, check=True)
    shutil.copytree(template().parent, tmp_path / ".dvc" / template().parent.name)
    with (tmp_path / ".dvc" / "config").open("a") as config:
        config.write(f"[plots]\n    html_template = {template().relative_to(REPO / '.dvc').as_posix()}\n")
    (tmp_path / "curve.csv").write_text("epoch,loss\n1,0.9\n2,0.5\n")
    (tmp_path / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: epoch\n      y: loss\n")
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "vegaEmbed('#" in page and "curve.csv" in page, done.stdout + done.stderr
    assert not SCRIPT_SRC.search(page) and "cdn.jsdelivr.net" not in page
