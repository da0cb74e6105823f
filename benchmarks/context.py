"""What every scenario receives: sizes, output folder, the running emulator, the models."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sizes:
    cards: int = 500            # B1-B4, B8
    baseline_cards: int = 60    # baseline subset per repetition (B1, B4)
    reps: int = 3               # repetitions of B1, B4
    b3_reps: int = 3
    warm_reps: int = 7          # repetitions of B2
    pls_cards: int = 20         # B5
    dagster_cards: int = 1000   # B6
    dagster_reps: int = 1
    storage_cards: int = 250    # B6 storage (--postgres)
    memory_sizes: tuple[int, ...] = (1000, 5000)  # B7
    scaleout_cards: int = 1000  # B11
    scaleout_batch: int = 100   # B11: cards per batch run (50: ~4 s of driver CPU per 12 s step)
    lab_cards: int = 8001       # B9 (FHI2020 at its published size)
    lab_batch: int = 1000       # B9 cards per backfill run

    @classmethod
    def quick(cls) -> Sizes:
        return cls(cards=40, baseline_cards=10, reps=2, b3_reps=2, warm_reps=5, pls_cards=3,
                   dagster_cards=100, dagster_reps=1, storage_cards=40,
                   memory_sizes=(100, 300), scaleout_cards=80, scaleout_batch=20,
                   lab_cards=200, lab_batch=100)


@dataclass
class Context:
    out: Path
    sizes: Sizes
    emu: Any
    models: dict[int, Any]
    datasets: dict[str, int]
    latency: float = 0.0
    keep_caches: bool = False
    t0: float = field(default_factory=time.time)
    shared: dict[str, Any] = field(default_factory=dict)  # results handed between scenarios

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def dataset_for(self, n: int) -> str:
        for name, size in self.datasets.items():
            if size == n:
                return name
        raise KeyError(n)

    @property
    def caches(self) -> Path:
        return self.out / "caches"
