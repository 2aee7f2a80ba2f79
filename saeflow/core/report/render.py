"""Render report.json as index.html (one self-contained page) and summary.md, from the
Jinja2 templates in ``templates/``. Success and failure reports go through the same code.

HTML: autoescape on, so every value is escaped unless a template marks it safe (only the
JSON data block is, after :func:`script_json`). Markdown: every ``{{ }}`` passes through
:func:`md` (renderers pass raw HTML through, so user text is HTML-escaped as well as made
table-safe). StrictUndefined everywhere: a misspelt field fails the render, not the reader.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup

from saeflow.core.report import view

TEMPLATES = Path(__file__).parent / "templates"
MAX_SUMMARY_FEATURES = 15
# (section id = template sections/<id>.html.j2, navigation title), in page order.
SECTIONS = (
    ("error", "Error"),
    ("run", "Run"),
    ("features", "Top features"),
    ("contrast", "Contrast"),
    ("prompts", "Prompts"),
    ("cards", "Feature cards"),
    ("steering", "Steering"),
    ("first_token", "First-token features"),
    ("cost", "Cost"),
    ("provenance", "Provenance"),
)
# A failed run has produced none of the results; its page says what failed and with what.
FAILED_SECTIONS = ("error", "run", "provenance")


def fmt(value: Any, spec: str | None = None) -> str:
    """A number for reading: 3 significant digits (or ``spec``), "–" for unknown."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec and isinstance(value, int | float):
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def pct(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    return f"{100 * value:.2f}%"


def script_json(value: Any) -> Markup:
    """Compact JSON safe inside ``<script>``: Jinja's dump writes no raw '<', '>', '&'."""
    return htmlsafe_json_dumps(value, ensure_ascii=False, separators=(",", ":"))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def md(value: Any) -> str:
    """Markdown-safe text on one line: HTML-escaped, table and emphasis characters escaped."""
    if isinstance(value, Markup):
        return str(value)
    text = html.escape("" if value is None else str(value), quote=False)
    for char in "|`*_[]":
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def _environment(**options: Any) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        **options,
    )
    env.filters.update(fmt=fmt, pct=pct, script_json=script_json, pretty_json=pretty_json)
    return env


_HTML = _environment(autoescape=True)
_HTML.globals.update(
    prompt_tokens=view.prompt_tokens,
    example_tokens=view.example_tokens,
    histogram_view=view.histogram_view,
)
_MARKDOWN = _environment(autoescape=False, finalize=md)


def sections_for(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    if report.get("status") == "failed":
        return [s for s in SECTIONS if s[0] in FAILED_SECTIONS]
    return [s for s in SECTIONS if s[0] != "error" or report.get("error")]


def render_html(report: Mapping[str, Any]) -> str:
    features = report.get("features") or []
    labels = {int(f["id"]): f.get("label") or "" for f in features}
    feature_max = {int(f["id"]): float(f.get("max_activation") or 0.0) for f in features}
    return _HTML.get_template("page.html.j2").render(
        report=report,
        title=f"saeflow report · {report.get('run_id')}",
        sections=sections_for(report),
        labels=labels,
        feature_max=feature_max,
        data={
            "labels": {str(k): v for k, v in labels.items()},
            "max": {str(int(f["id"])): f.get("max_activation") or 0 for f in features},
        },
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    return _MARKDOWN.get_template("summary.md.j2").render(
        report=report, max_features=MAX_SUMMARY_FEATURES, top=default_view(report)
    )


def default_view(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The features of the default ranking, in its order (every reported one without it)."""
    features = report.get("features") or []
    by_id = {int(f["id"]): f for f in features}
    views = (report.get("ranking") or {}).get("views") or {}
    ids = views.get("specific") or views.get("active") or []
    return [by_id[int(f)] for f in ids if int(f) in by_id] or list(features)
