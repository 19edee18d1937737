"""Small HTML builders for self-contained reports: every text is escaped, every image inlined.

The page references nothing outside itself (no URL, no external CSS or JS), so it can be
mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .3rem .7rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
img { max-width: 100%; height: auto; display: block; margin: .6rem 0; }
pre { background: #f7f7f7; border: 1px solid #e4e4e4; padding: .8rem; overflow-x: auto;
      font-size: .85rem; }
p.note { color: #777; font-style: italic; }
""".strip()


def format_value(value: Any) -> str:
    """A number or text as a short, readable string (`—` for missing values)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.1f}"


def format_bytes(num: float | None) -> str:
    """A byte count with a binary unit, e.g. `1.50 MiB`."""
    if num is None:
        return "—"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while abs(num) >= 1024 and power < len(units) - 1:
        num /= 1024
        power += 1
    return f"{num:,.0f} B" if power == 0 else f"{num:,.2f} {units[power]}"


def format_seconds(seconds: float | None) -> str:
    """A duration, e.g. `42.0 s` or `3 min 05 s`."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def _cell(value: Any) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    css = ' class="num"' if numeric else ""
    return f"<td{css}>{escape(format_value(value))}</td>"


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """An HTML table; numbers are formatted and right-aligned, everything is escaped."""
    head = ""
    if header:
        head = "<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def mapping_table(values: Mapping[str, Any], header: Sequence[str] = ("name", "value")) -> str:
    """A two-column table of a mapping; nested mappings become dotted keys (`a.b`)."""
    return table(flatten(values).items(), header)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | Mapping) else value
    return flat


def image(png: bytes, alt: str) -> str:
    """An `<img>` whose PNG is inlined as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def pre_json(value: Any) -> str:
    """A JSON value pretty-printed in a `<pre>`."""
    return f"<pre>{escape(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


def note(text: str) -> str:
    """A muted one-line remark, e.g. that a section's data was not recorded."""
    return f'<p class="note">{escape(text)}</p>'


def section(title: str, body: str) -> str:
    """A titled part of the page; `body` is HTML that is already escaped."""
    return f"<section><h2>{escape(title)}</h2>\n{body}\n</section>"


def page(title: str, body: str) -> str:
    """A complete HTML document with inline CSS; `body` is already-escaped HTML."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
