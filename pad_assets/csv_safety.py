"""CSV cells that a spreadsheet will not run: text from a registry or server is data.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``). OWASP's
advice (CSV Injection): prefix such cells with a single quote, so they show as text. Only
text cells are changed: numbers (a negative energy) are written as numbers. The HTML and
Markdown reports escape separately.
"""

from __future__ import annotations

from typing import TypeVar

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

T = TypeVar("T")


def escape_cell(value: T) -> T | str:
    """``value`` with a leading ``'`` if it is text a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def escape_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text cell (and text column/index label) escaped."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(escape_cell)
    out.columns = out.columns.map(escape_cell)
    out.index = out.index.map(escape_cell)
    return out
