"""Issue 3 / 6: peak memory of ``get_preprocessed_batch`` as the dataset grows.

``python -m benchmarks.bench_stream [--sizes 500,2000] [--batch-size 32]``

For each size, a child process on a fresh cache downloads the dataset from the emulator,
then resets its peak-RSS mark (``/proc/self/clear_refs`` = 5) and iterates
``get_preprocessed_batch(PADNeuralNetworkPipeline(), batch_size)`` over every card
(computing all preprocessing: the cold path). The peak measured is therefore the streaming
phase alone. Prints one JSON line per size and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def child(api: str, registry: str, dataset: str, cache: str, batch_size: int) -> None:
    from pad_assets import CachedDataset, PADNeuralNetworkPipeline
    from pad_assets.settings import Settings

    s = Settings.from_env(cache_dir=cache, api_url=api, registry_url=registry)
    ds = CachedDataset(dataset, settings=s, progress=False)
    t0 = time.time()
    ds.download_and_cache()
    t1 = time.time()
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS mark := current RSS
        f.write("5")
    base = _status_mb("VmRSS")
    n = batches = 0
    for batch in ds.get_preprocessed_batch(PADNeuralNetworkPipeline(), batch_size=batch_size):
        n += len(batch.card_ids)
        batches += 1
    t2 = time.time()
    print(json.dumps({"cards": n, "batches": batches, "download_s": round(t1 - t0, 1),
                      "stream_s": round(t2 - t1, 1), "rss_before_stream_mb": round(base, 1),
                      "stream_peak_mb": round(_status_mb("VmHWM"), 1),
                      "batch_mb": round(batch_size * 454 * 454 * 3 / 1e6, 1)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="500,2000")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--child", nargs=5, metavar=("API", "REG", "DS", "CACHE", "BS"))
    args = p.parse_args(argv)
    if args.child:
        api, reg, ds, cache, bs = args.child
        child(api, reg, ds, cache, int(bs))
        return 0
    from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig

    sizes = [int(x) for x in args.sizes.split(",")]
    specs = [DatasetSpec(f"stream_{n}", range(100000, 100000 + n)) for n in sizes]
    md5_dir = REPO / "benchmarks" / "out" / "md5_cache"
    results = []
    with Emulator(EmulatorConfig(datasets=specs, models_provider=lambda: [],
                                 md5_cache_dir=md5_dir)) as emu:
        for n in sizes:
            with tempfile.TemporaryDirectory() as cache:
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_stream", "--child", emu.base_url,
                     emu.registry_url, f"stream_{n}", cache, str(args.batch_size)],
                    cwd=REPO, capture_output=True, text=True,
                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                results.append(row)
    first, last = results[0], results[-1]
    growth = last["stream_peak_mb"] / first["stream_peak_mb"]
    print(f"get_preprocessed_batch peak RSS: {first['cards']} cards {first['stream_peak_mb']} MB"
          f" -> {last['cards']} cards {last['stream_peak_mb']} MB ({growth:.2f}x); "
          f"one batch = {first['batch_mb']} MB; "
          f"{'FLAT' if growth <= 1.10 else 'GROWS'} (target: flat, a few batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
