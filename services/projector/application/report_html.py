"""The HTML page of a reconciliation report, rendered once from the stored JSON report (so the two
cannot disagree): server-side Jinja2, inline styles, no script, nothing loaded from elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import orjson

_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parents[1] / "templates"),
                            autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


_PAGES.filters["pretty"] = _pretty


def render_report(report: dict[str, Any], sha256: str) -> str:
    """The page of `report` (as stored in reconciliation_reports.report); `sha256` is the report's hash."""
    categories: dict[str, list[dict[str, Any]]] = {}
    for d in report["discrepancies"]:
        categories.setdefault(d["category"], []).append(d)
    return _PAGES.get_template("reconciliation/report.html.j2").render(r=report, sha256=sha256,
                                                                       categories=categories)
