"""What a cache holds besides its shards, and payloads that more than one layer shares.

A cache directory also holds ``artifacts/`` (weights mirrored to files because model
runtimes want a path; the store keeps the verified copy), ``reports/`` (one comparison
report per Dagster run) and ``demo_models/`` (the demo's trained models). ``stats`` shows
them and ``gc`` removes what is stale: artifact files whose weights the store no longer
holds, and with ``older_than`` report folders older than that.

Shared payloads: a uint8 tensor identical to its preprocessed array is stored once and
referenced by both items, so per-layer sizes add up to more than the live payload.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..store import ContentStore
from ..store.queries import NotNull, each, item_payload_bytes, select

FOLDERS = ("artifacts", "reports", "demo_models")


def _tree_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _weights_keys(store: ContentStore) -> set[str]:
    return set(each(select(store.index, "items", "key", layer="weights")))


def stale_artifacts(store: ContentStore) -> list[Path]:
    """Artifact files named ``<sha256><suffix>`` whose weights item the store lacks."""
    base = store.root / "artifacts"
    if not base.is_dir():
        return []
    keep = _weights_keys(store)
    return sorted(p for p in base.iterdir()
                  if p.is_file() and p.name.split(".", 1)[0] not in keep)


def report_runs(root: Path) -> list[Path]:
    """``reports/<dataset>/<run id>`` folders."""
    base = root / "reports"
    if not base.is_dir():
        return []
    return sorted(run for ds in base.iterdir() if ds.is_dir()
                  for run in ds.iterdir() if run.is_dir())


def folders(store: ContentStore) -> dict[str, dict[str, int]]:
    """Per folder outside the shards: files, bytes, and what ``gc`` would consider stale."""
    out: dict[str, dict[str, int]] = {}
    for name in FOLDERS:
        path = store.root / name
        if not path.is_dir():
            continue
        n, size = _tree_bytes(path)
        out[name] = {"files": n, "bytes": size}
    if "artifacts" in out:
        stale = stale_artifacts(store)
        out["artifacts"]["stale_files"] = len(stale)
        out["artifacts"]["stale_bytes"] = sum(p.stat().st_size for p in stale)
    if "reports" in out:
        out["reports"]["runs"] = len(report_runs(store.root))
    return out


def clean(store: ContentStore, older_than: float | None, dry_run: bool,
          now: float | None = None) -> dict[str, Any]:
    """Remove stale artifact files, and report runs older than ``older_than`` seconds."""
    now = time.time() if now is None else now
    stale = stale_artifacts(store)
    runs = [r for r in report_runs(store.root)
            if older_than is not None and r.stat().st_mtime < now - older_than]
    freed = sum(p.stat().st_size for p in stale) + sum(_tree_bytes(r)[1] for r in runs)
    if not dry_run:
        for p in stale:
            p.unlink(missing_ok=True)
        for r in runs:
            shutil.rmtree(r, ignore_errors=False)
    return {"stale_artifacts": [p.name for p in stale],
            "report_runs": [str(r.relative_to(store.root)) for r in runs],
            "bytes": freed}


def shared_payloads(store: ContentStore) -> tuple[int, dict[str, int]]:
    """(bytes of payloads referenced by more than one layer, per layer the part of its
    bytes that another layer also references)."""
    layers_of: dict[str, set[str]] = defaultdict(set)
    for layer, blob in select(store.index, "items", "layer", "blob", blob=NotNull()):
        layers_of[blob].add(layer)
    sizes = dict(select(store.index, "blobs", "blob", "nbytes"))
    total = 0
    per: dict[str, int] = defaultdict(int)
    for blob, layers in layers_of.items():
        if len(layers) > 1 and blob in sizes:
            total += int(sizes[blob])
            for layer in layers:
                per[layer] += int(sizes[blob])
    return total, dict(per)


def models(store: ContentStore) -> dict[str, dict[str, Any]]:
    """Per model signature: current name, predictions, datasets they cover, weights bytes."""
    from ..layers.model_names import current_names

    names = current_names(store)
    ds_of_raw: dict[str, set[str]] = defaultdict(set)
    for d, r in select(store.index, "cards", "dataset", "raw_key", raw_key=NotNull()):
        ds_of_raw[r].add(d)
    out: dict[str, dict[str, Any]] = {}
    for sig, name, raw, *files in select(
            store.index, "items", "meta.model.signature", "meta.model.name", "meta.raw_key",
            "meta.model.weights_sha256", "meta.model.coefficients_sha256", "meta.model.sha256",
            layer="prediction"):
        if not sig:
            continue
        wsha = next((f for f in files if f is not None), None)
        m = out.setdefault(str(sig), {"name": names.get(str(sig), str(name)), "predictions": 0,
                                      "datasets": set(), "weights_sha256": wsha})
        m["predictions"] += 1
        m["datasets"] |= ds_of_raw.get(raw, set())
    wanted = [m["weights_sha256"] for m in out.values() if m["weights_sha256"]]
    sizes = item_payload_bytes(store.index, wanted) if wanted else {}
    for m in out.values():
        m["datasets"] = sorted(m["datasets"])
        m["weights_bytes"] = int(sizes.get(m["weights_sha256"], 0) or 0)
    return out


__all__ = ["FOLDERS", "clean", "folders", "models", "report_runs", "shared_payloads",
           "stale_artifacts"]
