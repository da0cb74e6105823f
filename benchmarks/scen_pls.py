"""B5: PLS features, vectorised NumPy vs the released tool pad-analytics 0.2.2 (bench_pls.py)."""

from __future__ import annotations

import contextlib
import io

from .common import Row, timed
from .context import Context


def run_b5(ctx: Context) -> list[Row]:
    from . import bench_pls

    n = ctx.sizes.pls_cards
    ctx.log(f"B5: PLS features on {n} synthetic cards vs pad-analytics 0.2.2 (bench_pls.py)")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        t = timed(lambda: bench_pls.main(["--cards", str(n), "--out", str(ctx.out)]))
    values = dict(line.split(": ", 1) for line in buf.getvalue().splitlines() if ": " in line)
    fast = float(values["vectorised_ms_per_card_median"])
    tool = float(values["real_tool_ms_per_card_median"])
    ident = values["identical_features"]
    same, total = (int(x) for x in ident.split("/"))
    ratio = tool / fast
    return [Row("B5", f"PLS features, NumPy vs pad-analytics 0.2.2 ({n} cards)",
                f"{fast:.2f} vs {tool:.0f} ms/card; identical {ident}", ">= 40x, identical",
                f"{ratio:.0f}x", ratio >= 40 and same == total,
                {"bench_pls_output": values, "exit_code": t.value,
                 "load": [t.load_before, t.load_after]})]
