"""Child process of B7: one cold ``apply_model`` on a fresh cache; prints a JSON line.

``python -m benchmarks.memory_worker --api URL --registry URL --dataset NAME --cache DIR``
(``--patch NAME`` applies a proposed core fix from ``benchmarks.patches`` first).
The parent polls this process's RSS; ``ru_maxrss`` below is the kernel's own peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--model-id", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patch", action="append", default=[])
    args = p.parse_args(argv)

    from . import patches

    for name in args.patch:
        patches.apply(name)
    from pad_assets import CachedDataset, PADTensorFlowAdapter
    from pad_assets.settings import Settings

    s = Settings.from_env(cache_dir=args.cache, api_url=args.api, registry_url=args.registry)
    marks = {"start": time.time(), "rss_start_mb": _rss_mb()}
    ds = CachedDataset(args.dataset, settings=s, progress=False)
    adapter = PADTensorFlowAdapter(model_id=args.model_id, settings=s)
    print(json.dumps({"event": "phase", "name": "apply_model", "t": time.time()}), flush=True)
    df = ds.apply_model(adapter, batch_size=args.batch_size)
    marks["end"] = time.time()
    ds.close()
    out = {"event": "done", "cards": len(df), "ok": int((df["status"] == "ok").sum()),
           "wall_s": marks["end"] - marks["start"], "rss_start_mb": marks["rss_start_mb"],
           # VmHWM: peak RSS of this address space. ru_maxrss is NOT used as the peak: Linux
           # carries the parent's high-water mark across fork+exec, so a child of a big
           # benchmark process would report the parent's size.
           "vm_hwm_mb": _status_mb("VmHWM"),
           "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
           "patches": args.patch}
    print(json.dumps(out), flush=True)
    return 0


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) -> MB
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6  # MB
    except OSError:
        return float("nan")


if __name__ == "__main__":
    sys.exit(main())
