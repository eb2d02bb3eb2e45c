"""Small HTML helpers shared by every report section: escaping, number formatting, tables."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd


def esc(text: Any) -> str:
    """HTML-escaped text (quotes included)."""
    return html.escape("" if text is None else str(text), quote=True)


def fmt(value: Any) -> str:
    """Numbers with sensible precision and thousands separators; '—' for missing values."""
    if value is None or value is pd.NA or (isinstance(value, numbers.Real) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if value.is_integer() and abs(value) >= 100:
            return f"{value:,.0f}"
        magnitude = abs(value)
        digits = 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
        return f"{value:,.{digits}f}"
    return str(value)


def table(
    frame: pd.DataFrame, *, caption: str = "", classes: Mapping[int, str] | None = None, numeric: bool = True
) -> str:
    """An escaped HTML table of a DataFrame; `classes` maps row position -> CSS class (e.g. 'bad')."""
    head = "".join(f"<th>{esc(column)}</th>" for column in frame.columns)
    body = []
    for position, row in enumerate(frame.itertuples(index=False)):
        css = (classes or {}).get(position)
        cells = "".join(
            f'<td class="num">{esc(fmt(v))}</td>' if numeric and _is_number(v) else f"<td>{esc(fmt(v))}</td>"
            for v in row
        )
        body.append(f'<tr class="{esc(css)}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    caption_html = f"<caption>{esc(caption)}</caption>" if caption else ""
    # Wide tables (aiperf's many metrics, server metrics) scroll inside their section.
    return (
        f'<div class="scroll"><table>{caption_html}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def key_values(pairs: Mapping[str, Any]) -> str:
    """A two-column definition table (configuration and the like)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs.items())
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def note(text: str, kind: str = "info") -> str:
    """A highlighted paragraph: kind is info, warn or bad."""
    return f'<p class="note {esc(kind)}">{esc(text)}</p>'
