"""B7: peak RSS of a cold ``apply_model`` in a SUBPROCESS, per dataset size.

Each size runs in its own child process on its own fresh cache (peak memory is about
streaming, so nothing is pre-downloaded), against the parent's emulator. Model: the
MobileNetV2 stand-in (id 16), i.e. the realistic interpreter arena. Peak = the child's
``VmHWM`` (its own address space's high-water mark; ``ru_maxrss`` would include the parent's
size, which Linux carries across fork+exec); the parent also polls RSS every 0.1 s (psutil)
for the curve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from .common import Row, fresh_dir
from .context import Context
from .world import REPO

#: The child is killed above this RSS (the measurement then reads "> KILL_ABOVE_MB").
KILL_ABOVE_MB = 12_000


def _run_child(ctx: Context, n: int, patches: list[str]) -> dict[str, Any]:
    import psutil

    cache = fresh_dir(ctx.caches / f"b7_{n}")
    cmd = [sys.executable, "-m", "benchmarks.memory_worker", "--api", ctx.emu.base_url,
           "--registry", ctx.emu.registry_url, "--dataset", ctx.dataset_for(n),
           "--cache", str(cache)]
    for p in patches:
        cmd += ["--patch", p]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    killed: list[float] = []

    def poll() -> None:
        try:
            ps = psutil.Process(proc.pid)
            while not stop.is_set():
                rss = ps.memory_info().rss / 1e6
                samples.append((time.time() - t0, rss))
                if rss > KILL_ABOVE_MB:  # protect colleagues' processes on a shared machine
                    killed.append(rss)
                    proc.kill()
                    return
                stop.wait(0.1)
        except psutil.Error:
            pass

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if killed:
        if not ctx.keep_caches:
            fresh_dir(cache)
        return {"cards": n, "patches": patches, "peak_rss_mb": killed[0], "killed": True,
                "polled_peak_mb": killed[0], "wall_s": time.time() - t0, "ok": None,
                "max_rss_by_decile_mb": [round(r, 1) for _, r in samples[:: max(1, len(samples) // 10)]]}
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed ({proc.returncode}):\n{err[-3000:]}")
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    done = next(x for x in lines if x.get("event") == "done")
    if not ctx.keep_caches:
        fresh_dir(cache)
    polled = max((r for _, r in samples), default=float("nan"))
    # RSS at 10 % steps of the run, to show whether it climbs with the cards processed.
    curve = []
    if samples:
        end = samples[-1][0]
        for k in range(1, 11):
            upto = [r for t, r in samples if t <= end * k / 10]
            curve.append(round(max(upto), 1) if upto else None)
    return {"cards": n, "patches": patches, "peak_rss_mb": done["vm_hwm_mb"],
            "ru_maxrss_mb_inherited": done["ru_maxrss_mb"],
            "polled_peak_mb": polled, "wall_s": done["wall_s"], "ok": done["ok"],
            "rss_start_mb": done["rss_start_mb"], "max_rss_by_decile_mb": curve}


def run_b7(ctx: Context, patch_sets: tuple[list[str], ...] | None = None) -> list[Row]:
    from . import patches

    if patch_sets is None:
        left = patches.effective(patches.ALL)
        patch_sets = ([], left) if ctx.shared.get("patched", True) and left else ([],)
    rows: list[Row] = []
    small, big = min(ctx.sizes.memory_sizes), max(ctx.sizes.memory_sizes)
    for patch_names in patch_sets:
        label = "as is" if not patch_names else "patched"
        res = {}
        for n in (small, big):
            ctx.log(f"B7 ({label}): cold apply_model over {n} cards in a subprocess")
            res[n] = _run_child(ctx, n, patch_names)
            ctx.log(f"  peak RSS {res[n]['peak_rss_mb']:.0f} MB, {res[n]['wall_s']:.1f} s, "
                    f"deciles {res[n]['max_rss_by_decile_mb']}")
        growth = res[big]["peak_rss_mb"] / res[small]["peak_rss_mb"]
        peak = max(r["peak_rss_mb"] for r in res.values())
        ok = peak <= 1500 and growth <= 1.10
        rows.append(Row("B7" if not patch_names else "B7 (patched)",
                        f"peak RSS, cold apply_model, {small} -> {big} cards ({label})",
                        f"{res[small]['peak_rss_mb']:.0f} MB -> "
                        + (">" if res[big].get("killed") else "")
                        + f"{res[big]['peak_rss_mb']:.0f} MB",
                        "<= 1500 MB, flat (<= +10 %)", f"{growth:.2f}x growth", ok,
                        {"runs": res}))
        ctx.shared.setdefault("b7", {})[label] = res
        if ok and not patch_names:
            break  # nothing to fix
    return rows
