"""B1 cold, B2 warm, B3 second model on cached tensors, B4 second pipeline, B8 bytes/card.

Ratios are per-card time ratios. The baseline runs on a subset of cards spread over the
dataset (``Sizes.baseline_cards``), right before each pad_assets repetition so both see
the same machine load; its per-card figure is the median of its per-card wall times.
pad_assets' per-card figure is the wall time of the whole call divided by the cards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .baseline import time_baseline
from .common import Row, fresh_dir, median, timed
from .context import Context
from .world import FIRST_CARD, settings_for


def _ids(n: int) -> list[int]:
    return list(range(FIRST_CARD, FIRST_CARD + n))


def _subset(ids: list[int], k: int) -> list[int]:
    step = max(1, len(ids) // max(1, k))
    return ids[::step][:k]


def _http(ctx: Context) -> dict[str, int]:
    s = ctx.emu.stats()
    return {k: int(s[k]) for k in ("api", "image", "weights", "registry", "total")}


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a[k] for k in a}


def _baseline_sample(ctx: Context, ids: list[int], k: int) -> dict[str, Any]:
    res = time_baseline(ctx.emu.base_url, ctx.out / "baseline_work", _subset(ids, k), 16)
    res.pop("per_card_cpu_s", None)
    return res


# ---------------------------------------------------------------------------- B1 + B2
def _variants(ctx: Context) -> list[tuple[str, tuple[str, ...]]]:
    """("as is", no patch) always; ("patched", proposed core changes) unless disabled."""
    from . import patches

    out: list[tuple[str, tuple[str, ...]]] = [("as is", ())]
    left = tuple(patches.effective(patches.ALL))
    if ctx.shared.get("patched", True) and left:
        out.append(("patched", left))
    return out


def run_b1_b2(ctx: Context) -> list[Row]:
    from pad_assets import CachedDataset, PADTensorFlowAdapter
    from pad_assets.models.runtime import clear_runner_cache

    from . import patches

    n = ctx.sizes.cards
    name = ctx.dataset_for(n)
    ids = _ids(n)
    variants = _variants(ctx)
    reps: dict[str, list[dict[str, Any]]] = {v: [] for v, _ in variants}
    keep: tuple[Any, Any, Any, Path] | None = None
    for r in range(ctx.sizes.reps):
        ctx.log(f"B1 rep {r + 1}/{ctx.sizes.reps}: baseline on {ctx.sizes.baseline_cards} cards")
        base = _baseline_sample(ctx, ids, ctx.sizes.baseline_cards)
        for label, names in variants:
            cache = fresh_dir(ctx.caches / f"b1_rep{r}_{label.replace(' ', '_')}")
            clear_runner_cache()  # every cold repetition builds its interpreter again
            before = _http(ctx)

            def cold(cache: Path = cache) -> tuple[Any, Any, Any]:
                s = settings_for(ctx.emu, cache)
                ds = CachedDataset(name, settings=s, progress=False)
                adapter = PADTensorFlowAdapter(model_id=16, settings=s)
                return ds, adapter, ds.apply_model(adapter)

            ctx.log(f"B1 rep {r + 1}: pad_assets cold apply_model on {n} cards ({label})")
            with patches.applied(names):
                t = timed(cold)
            http = _delta(before, _http(ctx))
            ds, adapter, df = t.value
            agree = [df.loc[df["card_id"] == c, "prediction"].iloc[0] == lab
                     for c, lab in base["labels"].items()]
            per_card = t.wall / n
            reps[label].append({
                "baseline_median_ms": base["median_s"] * 1e3,
                "baseline_mean_ms": base["mean_s"] * 1e3,
                "baseline_median_cpu_ms": base["median_cpu_s"] * 1e3,
                "baseline_cards": base["cards"],
                "cold_wall_s": t.wall, "cold_cpu_s": t.cpu,
                "cold_ms_per_card": per_card * 1e3, "cold_cpu_ms_per_card": t.cpu / n * 1e3,
                "ratio": base["median_s"] / per_card,
                "cpu_ratio": base["median_cpu_s"] / (t.cpu / n),
                "ok_cards": int((df["status"] == "ok").sum()), "http": http,
                "label_agreement_with_baseline": f"{sum(agree)}/{len(agree)}",
                "load": [t.load_before, t.load_after],
            })
            ctx.log(f"  baseline {base['median_s'] * 1e3:.1f} ms/card, cold {per_card * 1e3:.1f} "
                    f"ms/card, ratio {reps[label][-1]['ratio']:.2f}x, load {t.load_after}")
            if label != "as is":
                ds.close()
                if not ctx.keep_caches:
                    shutil.rmtree(cache, ignore_errors=True)
                continue
            if keep is not None:  # keep only the last as-is cache (B2, B8, B3, B4 use it)
                keep[0].close()
                if not ctx.keep_caches:
                    shutil.rmtree(keep[3], ignore_errors=True)
            keep = (ds, adapter, df, cache)
    assert keep is not None
    ds, adapter, df, cache = keep
    all_base = [x["baseline_median_ms"] for x in reps["as is"]]
    base_ms = median(all_base)
    ctx.shared.update(b1_ids=ids)
    rows = []
    for label, _ in variants:
        rr = reps[label]
        ratio = median([x["ratio"] for x in rr])
        cold_ms = median([x["cold_ms_per_card"] for x in rr])
        rows.append(Row("B1" if label == "as is" else "B1 (patched)",
                        f"cold apply_model, {n} cards, empty cache ({label})",
                        f"{cold_ms:.1f} ms/card vs baseline {base_ms:.1f} ms/card "
                        f"(CPU ratio {median([x['cpu_ratio'] for x in rr]):.2f}x)",
                        ">= 3.0x", f"{ratio:.2f}x", ratio >= 3.0,
                        {"reps": rr, "patches": list(dict(variants)[label])}))

    # ---- B2: warm, same model and data again ------------------------------------------
    s = settings_for(ctx.emu, cache)

    def fresh() -> Any:
        d = CachedDataset(name, settings=s, progress=False)
        try:
            return d.apply_model(PADTensorFlowAdapter(model_id=16, settings=s))
        finally:
            d.close()

    for label, names in variants:
        ctx.log(f"B2 ({label}): warm apply_model x{ctx.sizes.warm_reps}, fresh and same objects")
        before = _http(ctx)
        with patches.applied(names):
            fresh_runs = [timed(fresh) for _ in range(ctx.sizes.warm_reps)]
            same = [timed(lambda: ds.apply_model(adapter)) for _ in range(ctx.sizes.warm_reps)]
        http = _delta(before, _http(ctx))
        same_ms = median([t.wall for t in same]) * 1e3
        fresh_ms = median([t.wall for t in fresh_runs]) * 1e3
        identical = all(t.value["prediction"].tolist() == df["prediction"].tolist()
                        and bool(t.value["cached"].all()) for t in same + fresh_runs)
        r_same = base_ms / (same_ms / n)
        r_fresh = base_ms / (fresh_ms / n)
        sfx = "" if label == "as is" else " (patched)"
        rows.append(Row("B2" + sfx, f"warm apply_model, {n} cards, new CachedDataset + adapter "
                        f"({label})",
                        f"{fresh_ms:.1f} ms = {fresh_ms / n * 1e3:.0f} us/card; "
                        f"{http['total']} HTTP", ">= 1000x, 0 HTTP", f"{r_fresh:.0f}x",
                        r_fresh >= 1000 and http["total"] == 0 and identical,
                        {"fresh_objects_ms": [t.wall * 1e3 for t in fresh_runs],
                         "same_objects_ms": [t.wall * 1e3 for t in same], "http": http,
                         "identical_to_cold": identical, "baseline_ms_per_card": base_ms}))
        rows.append(Row("B2'" + sfx, f"warm, same CachedDataset and adapter objects ({label})",
                        f"{same_ms:.1f} ms = {same_ms / n * 1e3:.0f} us/card; "
                        f"{http['total']} HTTP", ">= 1000x, 0 HTTP", f"{r_same:.0f}x",
                        r_same >= 1000 and http["total"] == 0 and identical))
    ctx.shared.update(b1_ds=ds, b1_adapter=adapter)
    return rows


# ---------------------------------------------------------------------------- B3
def run_b3(ctx: Context) -> list[Row]:
    from pad_assets import PADTensorFlowAdapter
    from pad_assets.models.tflite import PAD_NN_TENSOR_SPEC
    from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline

    from . import patches

    ds = ctx.shared["b1_ds"]
    n = len(ctx.shared["b1_ids"])
    s = ds.settings
    batch = 32
    m17 = ctx.models[17]
    first = PADTensorFlowAdapter(model_id=17, settings=s)  # record + weights (not timed)
    # The same cards' tensors, in memory, as float32 batches of the same size.
    raw = ds.raw.raw_keys(ds.name, ctx.shared["b1_ids"])
    _, tkeys = ds.derived.keys_for([raw[c] for c in ctx.shared["b1_ids"]],
                                   PADNeuralNetworkPipeline(), PAD_NN_TENSOR_SPEC)
    assert tkeys is not None
    batches = [PAD_NN_TENSOR_SPEC.to_model(a) for a in ds.derived.iter_arrays(tkeys, batch)]
    runner = first.runner
    counts0 = _layer_counts(ds)
    before = _http(ctx)
    variants = _variants(ctx)
    reps: dict[str, list[dict[str, Any]]] = {v: [] for v, _ in variants}
    k = 0
    for r in range(ctx.sizes.b3_reps):
        for label, names in variants:
            ctx.log(f"B3 rep {r + 1}/{ctx.sizes.b3_reps} ({label}): pure inference, then "
                    "apply_model of model 17")
            # Each run needs uncached predictions: rotating the labels changes the signature
            # (labels are part of it) while the weights, runner and tensors stay the same.
            adapter = first if k == 0 else PADTensorFlowAdapter(
                model_path=m17.path, labels=m17.labels[k % 5:] + m17.labels[:k % 5],
                name=f"conc_rot{k}")
            if k >= 5:  # more runs than label rotations: vary the name of one label too
                adapter = PADTensorFlowAdapter(model_path=m17.path,
                                               labels=[*m17.labels[:-1], f"{80 + k}"],
                                               name=f"conc_var{k}")
            k += 1
            with patches.applied(names):
                runner.run(batches[0])  # leaves the interpreter at the invoke batch size used next
                pure = timed(lambda: [runner.run(b) for b in batches])
                cached = timed(lambda adapter=adapter: ds.apply_model(adapter, batch_size=batch))
            df = cached.value
            reps[label].append({"pure_s": pure.wall, "apply_model_s": cached.wall,
                                "ratio": cached.wall / pure.wall,
                                "ok_cards": int((df["status"] == "ok").sum()),
                                "cached_before": int(df["cached"].sum()),
                                "load": [pure.load_before, cached.load_after]})
            ctx.log(f"  pure {pure.wall:.2f} s, apply_model {cached.wall:.2f} s, "
                    f"ratio {reps[label][-1]['ratio']:.3f}, load {cached.load_after}")
    counts1 = _layer_counts(ds)
    http = _delta(before, _http(ctx))
    recomputed = {k: counts1.get(k, 0) - counts0.get(k, 0) for k in ("preprocessed", "tensor")}
    batches.clear()  # ~1.2 GB of float32 for 500 cards
    rows = []
    for label, names in variants:
        rr = reps[label]
        ratio = median([x["ratio"] for x in rr])
        pure_ms = median([x["pure_s"] for x in rr]) / n * 1e3
        am_ms = median([x["apply_model_s"] for x in rr]) / n * 1e3
        rows.append(Row("B3" if label == "as is" else "B3 (patched)",
                        f"2nd model (MobileNetV2/5 classes) on cached tensors, {n} cards "
                        f"({label})",
                        f"apply_model {am_ms:.1f} vs pure inference {pure_ms:.1f} ms/card",
                        "<= 1.10x", f"{ratio:.3f}x",
                        ratio <= 1.10 and not any(recomputed.values()) and http["total"] == 0,
                        {"reps": rr, "new_items_below_predictions": recomputed, "http": http,
                         "batch_size": batch, "patches": list(names)}))
    return rows


def _layer_counts(ds: Any) -> dict[str, int]:
    return dict(ds.store.index.query("SELECT layer, COUNT(*) FROM items GROUP BY layer"))


# ---------------------------------------------------------------------------- B4
def run_b4(ctx: Context) -> list[Row]:
    from pad_assets import WhiteBalancedNNPipeline

    from . import patches

    ds, adapter = ctx.shared["b1_ds"], ctx.shared["b1_adapter"]
    ids = ctx.shared["b1_ids"]
    n = len(ids)
    variants = _variants(ctx)
    reps: dict[str, list[dict[str, Any]]] = {v: [] for v, _ in variants}
    k = 0
    for r in range(ctx.sizes.reps):
        ctx.log(f"B4 rep {r + 1}/{ctx.sizes.reps}: baseline sample, then a 2nd pipeline")
        base = _baseline_sample(ctx, ids, ctx.sizes.baseline_cards)
        for label, names in variants:
            # A new parameter value per run: a new cache key, so nothing is reused.
            pipe = WhiteBalancedNNPipeline(min_background=64 + k)
            k += 1
            before = _http(ctx)
            with patches.applied(names):
                t = timed(lambda pipe=pipe: ds.apply_model(adapter, preprocessing=pipe))
            http = _delta(before, _http(ctx))
            per_card = t.wall / n
            reps[label].append({"baseline_median_ms": base["median_s"] * 1e3,
                                "ms_per_card": per_card * 1e3,
                                "ratio": base["median_s"] / per_card, "http": http,
                                "cpu_ms_per_card": t.cpu / n * 1e3,
                                "ok_cards": int((t.value["status"] == "ok").sum()),
                                "load": [t.load_before, t.load_after]})
            ctx.log(f"  baseline {base['median_s'] * 1e3:.1f} ms/card, 2nd pipeline ({label}) "
                    f"{per_card * 1e3:.1f} ms/card, ratio {reps[label][-1]['ratio']:.2f}x, "
                    f"image downloads {http['image']}")
    rows = []
    for label, _ in variants:
        rr = reps[label]
        ratio = median([x["ratio"] for x in rr])
        downloads = sum(x["http"]["image"] for x in rr)
        rows.append(Row("B4" if label == "as is" else "B4 (patched)",
                        f"2nd pipeline (WhiteBalancedNN) on cached raw, {n} cards ({label})",
                        f"{median([x['ms_per_card'] for x in rr]):.1f} ms/card vs baseline "
                        f"{median([x['baseline_median_ms'] for x in rr]):.1f}; "
                        f"{downloads} downloads", "0 downloads, >= 2x", f"{ratio:.2f}x",
                        ratio >= 2 and downloads == 0,
                        {"reps": rr, "patches": list(dict(variants)[label])}))
    return rows


# ---------------------------------------------------------------------------- B8
def run_b8(ctx: Context) -> list[Row]:
    """Bytes per card of each layer, from the store index and the shard files."""
    ds = ctx.shared["b1_ds"]
    root = ds.store.root
    n = len(ctx.shared["b1_ids"])
    q = ds.store.index.query
    logical = dict(q("SELECT i.layer, SUM(b.nbytes) FROM items i JOIN blobs b ON b.blob=i.blob "
                     "GROUP BY i.layer"))
    items = dict(q("SELECT layer, COUNT(*) FROM items GROUP BY layer"))
    meta_bytes = dict(q("SELECT layer, SUM(LENGTH(meta)) FROM items GROUP BY layer"))
    # Unique payload bytes, each blob attributed to the first layer that references it in
    # chain order (a tensor equal to its preprocessed array is stored once).
    order = ["raw", "preprocessed", "tensor", "prediction"]
    owner: dict[str, str] = {}
    for blob, layer in q("SELECT blob, layer FROM items WHERE blob IS NOT NULL"):
        cur = owner.get(blob)
        if cur is None or (layer in order and (cur not in order
                                                or order.index(layer) < order.index(cur))):
            owner[blob] = layer
    sizes = dict(q("SELECT blob, nbytes FROM blobs"))
    unique: dict[str, int] = {}
    for blob, layer in owner.items():
        unique[layer] = unique.get(layer, 0) + int(sizes.get(blob, 0))
    # Shard files on disk, split between layers in proportion to the unique bytes they hold.
    shard_bytes = dict(q("SELECT shard, nbytes FROM shards"))
    per_shard: dict[str, dict[str, int]] = {}
    for blob, shard in q("SELECT blob, shard FROM blobs"):
        layer = owner.get(blob, "other")
        per_shard.setdefault(shard, {}).setdefault(layer, 0)
        per_shard[shard][layer] += int(sizes.get(blob, 0))
    meta_only = {s for (s,) in q("SELECT DISTINCT shard FROM items WHERE blob IS NULL")}
    on_disk: dict[str, float] = {}
    for shard, size in shard_bytes.items():
        parts = per_shard.get(shard)
        if not parts:
            layer = "prediction" if shard in meta_only else "refs/cards"
            on_disk[layer] = on_disk.get(layer, 0) + size
            continue
        tot = sum(parts.values()) or 1
        for layer, b in parts.items():
            on_disk[layer] = on_disk.get(layer, 0) + size * b / tot
    stored = _stored_bytes(ds, owner)
    index_bytes = sum(p.stat().st_size for p in root.glob("index.sqlite3*"))
    shard_files = sum(p.stat().st_size for p in (root / "shards").rglob("*.h5"))
    mb = 1e6
    detail = {layer: {"items": items.get(layer, 0),
                      "payload_mb_per_card": logical.get(layer, 0) / n / mb,
                      "unique_payload_mb_per_card": unique.get(layer, 0) / n / mb,
                      "shard_file_mb_per_card": on_disk.get(layer, 0) / n / mb,
                      "stored_mb_per_card": stored.get(layer, 0) / n / mb,
                      "index_meta_kb_per_card": meta_bytes.get(layer, 0) / n / 1e3}
              for layer in order}
    detail["_totals"] = {"shard_files_mb_per_card": shard_files / n / mb,
                         "index_mb_per_card": index_bytes / n / mb,
                         "cards": n, "shards": len(shard_bytes)}
    (ctx.out / "b8_layers.json").write_text(json.dumps(detail, indent=2))
    t = detail["tensor"]["payload_mb_per_card"]
    pre_stored = detail["preprocessed"]["stored_mb_per_card"]
    pre_logical = detail["preprocessed"]["unique_payload_mb_per_card"]
    reads = _read_throughput(ds, ctx)
    detail["_read_throughput"] = reads
    rows = [Row("B8", f"model-ready tensor bytes/card ({n} cards)",
                f"{t:.3f} MB/card (uint8; {detail['tensor']['unique_payload_mb_per_card']:.3f} "
                "MB extra on disk after dedup)", "<= 0.62 MB/card", "-", t <= 0.62, detail),
            Row("B8", "preprocessed = model-ready array on disk (compressed vs as is)",
                f"{pre_stored:.3f} MB/card stored vs {pre_logical:.3f} MB/card uncompressed",
                ">= 1.5x smaller", f"{pre_logical / pre_stored:.2f}x" if pre_stored else "-",
                bool(pre_stored) and pre_logical / pre_stored >= 1.5),
            Row("B8", f"tensor reads, verified ({reads['cards']} cards, get_many by 32)",
                f"compressed {reads['compressed_ms_per_card']:.2f} ms/card "
                f"({reads['compressed_mb_s']:.0f} MB/s of arrays), uncompressed "
                f"{reads['uncompressed_ms_per_card']:.2f} ms/card "
                f"({reads['uncompressed_mb_s']:.0f} MB/s); CPU "
                f"{reads['compressed_cpu_ms_per_card']:.2f} vs "
                f"{reads['uncompressed_cpu_ms_per_card']:.2f} ms/card", "reported", "-", None)]
    for layer in ("raw", "preprocessed", "prediction"):
        d = detail[layer]
        rows.append(Row("B8", f"{layer} layer bytes/card",
                        f"payload {d['payload_mb_per_card']:.3f} MB, shard files "
                        f"{d['shard_file_mb_per_card']:.3f} MB, index meta "
                        f"{d['index_meta_kb_per_card']:.1f} kB", "reported", "-", None))
    rows.append(Row("B8", "all shard files + index per card",
                    f"{shard_files / n / mb:.3f} MB + {index_bytes / n / 1e3:.1f} kB index",
                    "reported", "-", None))
    return rows


def _stored_bytes(ds: Any, owner: dict[str, str]) -> dict[str, int]:
    """Bytes each layer's payloads occupy in the shard files (after compression)."""
    import h5py

    from pad_assets.store import shards as shard_io

    out: dict[str, int] = {}
    for (rel,) in ds.store.index.query("SELECT path FROM shards"):
        with h5py.File(ds.store.root / rel, "r", locking=False) as f:
            group = f.get(shard_io.BLOBS_GROUP)
            if group is None:
                continue
            for blob, dset in group.items():
                layer = owner.get(blob, "other")
                out[layer] = out.get(layer, 0) + int(dset.id.get_storage_size())
    return out


def _read_throughput(ds: Any, ctx: Context, cards: int = 200) -> dict[str, float]:
    """Verified reads of ``cards`` tensors as B3 does them (``get_many``, 32 at a time): from
    B1's compressed cache, and from a copy of the same arrays stored uncompressed."""
    import time

    from pad_assets.store import ContentStore, NewItem

    keys = [k for (k,) in ds.store.index.query(
        "SELECT key FROM items WHERE layer='tensor' ORDER BY key LIMIT ?", (cards,))]
    plain_root = fresh_dir(ctx.caches / "b8_uncompressed")
    plain = ContentStore(plain_root, compress=False)
    try:
        for start in range(0, len(keys), 32):
            got = ds.store.get_many(keys[start:start + 32], touch=False)
            plain.put([NewItem(k, "tensor", got[k], {}) for k in keys[start:start + 32]])
        out: dict[str, float] = {"cards": len(keys)}
        for label, store in (("compressed", ds.store), ("uncompressed", plain)):
            best = None
            for _ in range(3):
                c0, t0 = time.process_time(), time.perf_counter()
                nbytes = 0
                for start in range(0, len(keys), 32):
                    got = store.get_many(keys[start:start + 32], touch=False)
                    nbytes += sum(int(v.nbytes) for v in got.values())
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                best = (wall, cpu) if best is None or wall < best[0] else best
            assert best is not None
            out[f"{label}_ms_per_card"] = best[0] / len(keys) * 1e3
            out[f"{label}_cpu_ms_per_card"] = best[1] / len(keys) * 1e3
            out[f"{label}_mb_s"] = nbytes / best[0] / 1e6
        return out
    finally:
        plain.close()
        if not ctx.keep_caches:
            shutil.rmtree(plain_root, ignore_errors=True)
