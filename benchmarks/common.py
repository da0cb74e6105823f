"""Shared helpers: machine facts, timing with CPU time and load, results and the table."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for name in ("pad_assets", "numpy", "pillow", "h5py", "tensorflow", "keras",
                 "ai-edge-litert", "dagster", "requests", "pandas"):
        with contextlib.suppress(PackageNotFoundError):
            libs[name] = version(name)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
        "libraries": libs,
        "disk_free_gb": round(shutil.disk_usage("/").free / 1e9, 1),
    }


@dataclass
class Timed:
    wall: float
    cpu: float  # this process, all threads (includes the in-process emulator's serving)
    load_before: list[float]
    load_after: list[float]
    value: Any = None


def timed(fn: Callable[[], Any]) -> Timed:
    lb = loadavg()
    c0 = time.process_time()
    t0 = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return Timed(wall, cpu, lb, loadavg(), value)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@dataclass
class Row:
    """One line of the final table."""

    scenario: str
    what: str
    measured: str
    target: str
    ratio: str
    ok: bool | None  # None: reported only
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "MISS")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


def table(rows: Sequence[Row]) -> str:
    head = ("scenario", "what", "measured", "target", "ratio", "result")
    data = [(r.scenario, r.what, r.measured, r.target, r.ratio, r.verdict) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *data, strict=False)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(d, widths, strict=False)) + " |"
            for d in data]
    return "\n".join([line, sep, *body])


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path

