"""The docs site builds strictly (every nav page present, every link and anchor valid), reads offline (nothing
fetched from another host), and its generated reference pages cover every command and every setting.

The site is built once per module (about 3 s) with mkdocs.yml as it is, into a temporary directory."""

from __future__ import annotations

import logging
import re
import typing
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort
from pydantic import BaseModel

from components.core.config import Params
from components.evaluation.metrics import classification_metrics, primary_metric, regression_metrics
from flows.cli import app

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("mkdocs").addHandler(handler)
    try:
        config = load_config(str(ROOT / "mkdocs.yml"), site_dir=str(out), strict=True)
        build(config)  # strict: any warning (a page missing, a broken link or anchor) aborts it
    except Abort as e:
        pytest.fail(f"{e}\n" + "\n".join(warnings), pytrace=False)
    finally:
        logging.getLogger("mkdocs").removeHandler(handler)
    return out


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _ids(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


def test_site_builds_strict_with_every_nav_page(site: Path) -> None:
    for page in ("index", "reference/cli", "reference/params", "reference/metrics", "benchmarks", "changelog"):
        assert (site / f"{page}.html").is_file(), page
    assert (site / "search" / "search_index.js").is_file()  # the offline plugin: search works from file://
    assert not (site / "hooks").exists()  # the generator is not part of the site


# Anything the browser would fetch on its own: scripts, styles, fonts, images, frames. Plain links (<a href>) are
# for the reader to follow and may point anywhere.
_FETCHED = [
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"<(?:img|iframe|source|video|audio|embed)\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"@import\s+(?:url\()?\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"url\(\s*[\"']?(?:https?:)?//", re.I),
]


def test_site_fetches_nothing_from_other_hosts(site: Path) -> None:
    offenders = []
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css"):
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path.relative_to(site)}: {m.group(0)}" for p in _FETCHED for m in p.finditer(text)]
    assert not offenders, offenders
    assert not list(site.rglob("*.woff*")), "web fonts in the site: theme.font must stay false"


def _commands(command, path: tuple[str, ...], parent=None):
    ctx = command.context_class(command, info_name=path[-1], parent=parent)
    yield path, command
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name), ctx)


def test_cli_reference_has_every_command_and_option(site: Path) -> None:
    page = site / "reference" / "cli.html"
    ids, text = _ids(page), page.read_text(encoding="utf-8")
    commands = list(_commands(typer.main.get_command(app), ("msa",)))
    assert len(commands) > 10
    for path, command in commands:
        if command.hidden:
            continue
        assert "-".join(path) in ids, f"no section for `{' '.join(path)}`"
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for opt in (*param.opts, *param.secondary_opts):
                if param.param_type_name == "option":
                    assert f"<code>{opt}</code>" in text, f"`{' '.join(path)}`: no {opt}"


def _settings(model: type[BaseModel], prefix: str):
    """Every setting's dotted YAML key, as the params page anchors them (a dict of sections: key.NAME.field)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{field.alias or name}" if prefix else field.alias or name
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, type(int | None)) and len(args) == 1:
            annotation = args[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield key, True
            yield from _settings(annotation, key)
            continue
        yield key, False
        if typing.get_origin(annotation) is dict:
            value = typing.get_args(annotation)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                yield from _settings(value, f"{key}.NAME")


def test_params_reference_has_every_setting(site: Path) -> None:
    ids = _ids(site / "reference" / "params.html")
    settings = list(_settings(Params, ""))
    assert len(settings) > 100
    missing = [key for key, _ in settings if key not in ids]
    assert not missing, f"settings missing from reference/params: {missing}"


def test_metrics_reference_defines_every_metric(site: Path) -> None:
    ids = _ids(site / "reference" / "metrics.html")
    keys = set(regression_metrics([0.5, -1.0, 2.0], [1.0, -0.5, 0.0]))
    keys |= set(classification_metrics([0, 1, 1], [0, 1, 0], ["negative", "positive"]))
    keys |= {primary_metric(kind)[0] for kind in ("regression", "classification")}
    assert not keys - ids, f"metrics without a definition in reference/metrics: {sorted(keys - ids)}"


def test_benchmarks_page_covers_every_bench_script(site: Path) -> None:
    ids = _ids(site / "benchmarks.html")
    scripts = [p.stem for p in (ROOT / "bench").glob("*.py")]
    assert scripts
    assert not [s for s in scripts if s not in ids]
