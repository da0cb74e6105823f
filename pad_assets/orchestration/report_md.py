"""The comparison report as Markdown that works inside the Dagster UI.

``ComparisonReport.to_markdown()`` links its figures and CSV tables as files next to
``report.md``; in the UI those relative links load nothing. Here every figure becomes an
inline data URI and every CSV link is dropped (the same tables are inline in the Markdown
and as table metadata entries), so the entry has no dead links.
"""

from __future__ import annotations

import base64
import re
from typing import Any

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")
_CSV = re.compile(r"\[[^\]]*\]\([^)\s]+\.csv\)")


def report_markdown(report: Any) -> str:
    figures: dict[str, bytes] = report.figures

    def image(m: re.Match[str]) -> str:
        data = figures.get(m.group(2))
        if data is None:
            return f"*(figure {m.group(2)} not rendered)*"
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(data).decode()})"

    text = _IMAGE.sub(image, report.to_markdown())
    text = _CSV.sub("", text)
    text = re.sub(r"\(list in \)|; list in \)", ")", text)
    lines = [ln for ln in text.splitlines() if ln.strip(" ·") or not ln]
    return "\n".join(ln.rstrip(" ·") for ln in lines)
