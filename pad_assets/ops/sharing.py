"""Moving cached data between machines: dataset bundles and a remote shard tier.

Why a module of its own: a cache is shared between people, so everything that arrives from
elsewhere is *input*, and this is the one place that decides what may enter:

- **Bundles** (``export_bundle`` / ``import_bundle``) carry one dataset: its card
  memberships, raw images, chosen derived layers, manifest and (for predictions) the model
  records and weights, rewritten into fresh shards, plus ``bundle.json`` listing every file
  with its sha256. Import checks every file's sha256, every payload's digest, every
  record's form and every key against its content or recorded chain *before* anything is
  indexed; a bundle that fails anything imports nothing. Verified content is rewritten
  into new local shards (never copied byte for byte), so nothing but plain numeric arrays
  and JSON records ever reaches the cache, and nothing is ever unpickled.
- **Remotes** (``push`` / ``pull``, any fsspec URL; a local directory works) hold shard
  files under their own immutable, content-unique names plus a small ``index.json``
  (sha256, size and datasets of each shard). Push copies the shards the remote lacks
  (temporary name, then rename, on file systems; object stores publish whole objects
  atomically); pull copies the shards the local cache lacks, verifies them on arrival and
  indexes them. Both directions re-verify payload digests: a corrupt shard is never
  spread.

Refs (manifest, model record, Dagster asset) and card records (card -> raw key) are
pointers, not content: from a bundle or a remote they are *proposals* (``proposals.vet``),
taken only where this cache has none yet and only when they verify against content (a
card's image has its manifest's md5, a model record's SHA256 is weights that are present,
a manifest is for the dataset its ref names); every foreign timestamp is clamped to now,
so a clock set ahead never pins a pointer. What is not taken is reported.

Resource limits (member count, declared against actual sizes, compression ratio, size per
item, size of ``bundle.json``) are checked while streaming, before anything is written or
read whole.

Bundles and remotes are integrity-checked, not authenticated: a derived payload is trusted
to be what its producer computed (``pad-assets cache verify`` and re-computation are the
checks for that); import only from people and places you trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import lzma
import math
import os
import re
import shutil
import socket
import tarfile
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import IntegrityError, InvalidInputError
from ..hashing import md5_bytes
from ..sources.urls import validate_name
from ..store import ContentStore
from ..store import shards as shard_io
from ..store.store import file_sha256, payload_blob
from .maintenance import (
    CONTENT_KEYED_LAYERS,
    EXAMPLES,
    KNOWN_LAYERS,
    blob_row,
    dataset_affinity,
    fsync_dir,
    human_bytes,
    is_hex_key,
    is_shard_name,
    key_problem,
    maintenance_lock,
    read_blob_checked,
    retired_shards,
)
from .proposals import vet

BUNDLE_FORMAT = "pad_assets.bundle"
REMOTE_FORMAT = "pad_assets.remote"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
REMOTE_INDEX = "index.json"
#: Payload bytes per bundle shard (keeps each file a manageable unit to copy and check).
BUNDLE_SHARD_BYTES = 512 << 20
MAX_JSON_BYTES = 256 << 20
# Resource limits of imports and pulls, checked while streaming and before anything is
# written or read whole (issue 12, defect 5). Module attributes, so a deployment with
# unusual models can raise them.
#: bundle.json lists one entry per shard (~200 bytes each): 16 MiB is ~80,000 shards.
MAX_BUNDLE_JSON_BYTES = 16 << 20
#: Members of a bundle tar / shard files of a bundle directory (a bundle of 10,000 shards
#: of 512 MiB would be 5 TB).
MAX_TAR_MEMBERS = 10_000
#: One shard file (a tar member, a bundle file, a pulled shard): 512 MiB of payloads plus
#: one oversized item and its records, with room to spare.
MAX_TAR_MEMBER_BYTES = 4 << 30
#: One item's payload (PAD weights are a few MB, images and tensors far less).
MAX_IMPORT_ITEM_BYTES = 1 << 30
#: Shards are written uncompressed, so a payload that declares many times the bytes it
#: stores is a decompression bomb; refused unread. Small payloads are exempt.
MAX_ITEM_COMPRESSION = 16
COMPRESSION_EXEMPT_BYTES = 1 << 20
#: A compressed bundle (``.tar.gz`` ...) may not declare more than this many times its own
#: size (exports are plain tar; gzip of JSON records and images stays far below).
MAX_STREAM_COMPRESSION = 200
LAYER_ALIASES = {"raw": "raw", "preprocessed": "preprocessed", "tensor": "tensor",
                 "tensors": "tensor", "prediction": "prediction", "predictions": "prediction"}
DEFAULT_LAYERS = ("raw", "tensors", "predictions")


def parse_layers(layers: str | Sequence[str]) -> list[str]:
    """"raw,tensors" or ["raw", "predictions"] -> index layer names, validated."""
    names = layers.split(",") if isinstance(layers, str) else list(layers)
    out = []
    for n in names:
        n = str(n).strip().lower()
        if not n:
            continue
        if n not in LAYER_ALIASES:
            raise InvalidInputError(f"layer {n!r}: expected some of raw, preprocessed, "
                                    "tensors, predictions")
        out.append(LAYER_ALIASES[n])
    if not out:
        raise InvalidInputError(f"layers {layers!r}: expected at least one layer")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------
# what belongs to a dataset
@dataclass
class _Selection:
    items: dict[str, dict[str, Any]]  # key -> {layer, blob, meta, created}
    refs: list[tuple[str, str, float]]
    cards: list[dict[str, Any]]


def _select_dataset(store: ContentStore, dataset: str, layers: Sequence[str]) -> _Selection:
    q = store.index.query
    cards = q("SELECT card_id, raw_key, status, detail, updated FROM cards WHERE dataset=?",
              (dataset,))
    if not cards:
        known = sorted({d for (d,) in q("SELECT DISTINCT dataset FROM cards")})
        raise InvalidInputError(
            f"dataset {dataset!r} has no cards in the cache at {store.root}; expected one of "
            f"{known or '(none: run `pad-assets download DATASET` first)'}")
    raw = {r for _, r, *_ in cards if r}
    want = set(layers)
    items: dict[str, dict[str, Any]] = {}

    def add(key: str, layer: str, blob: str | None, meta: str, created: float) -> None:
        items[key] = {"layer": layer, "blob": blob, "meta": json.loads(meta),
                      "created": float(created)}

    model_ids: set[str] = set()
    weights: set[str] = set()
    for key, layer, blob, meta, created, rk in q(
            "SELECT key, layer, blob, meta, created, json_extract(meta, '$.raw_key') "
            "FROM items WHERE layer IN ('raw', 'preprocessed', 'tensor', 'prediction')"):
        rkey = key if layer == "raw" else rk
        if layer not in want or rkey not in raw:
            continue
        add(key, layer, blob, meta, created)
        if layer == "prediction":
            model = items[key]["meta"].get("model") or {}
            if model.get("model_id") is not None:
                model_ids.add(str(model["model_id"]))
            for f in ("weights_sha256", "coefficients_sha256"):
                if model.get(f):
                    weights.add(str(model[f]))
    refs: list[tuple[str, str, float]] = []
    for name, key, updated in q("SELECT name, key, updated FROM refs"):
        tail = name.rsplit("/", 1)[-1]
        if (name.startswith("manifest/") and tail == dataset) or (
                name.startswith("model-record/") and tail in model_ids):
            refs.append((name, key, float(updated)))
    extra = {k for _, k, _ in refs} | weights
    for key, layer, blob, meta, created in _select_keys(store, extra):
        add(key, layer, blob, meta, created)
    refs = [r for r in refs if r[1] in items]
    card_recs = [{"type": "card", "dataset": dataset, "card_id": int(c), "raw_key": r,
                  "status": s, "detail": d, "ts": float(u)} for c, r, s, d, u in cards]
    return _Selection(items, refs, card_recs)


def _select_keys(store: ContentStore, keys: set[str]) -> list[tuple]:
    out: list[tuple] = []
    ks = sorted(keys)
    for i in range(0, len(ks), 500):
        part = ks[i:i + 500]
        out += store.index.query("SELECT key, layer, blob, meta, created FROM items WHERE key "
                                 f"IN ({','.join('?' * len(part))})", part)
    return out


# ---------------------------------------------------------------------------------------
# export
@dataclass
class BundleReport:
    path: str
    dataset: str
    layers: list[str]
    items: dict[str, int] = field(default_factory=dict)
    refs: int = 0
    cards: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (f"exported {self.dataset} to {self.path}: {self.cards} cards, items "
                f"{self.items}, {self.refs} refs in {self.files} files "
                f"({human_bytes(self.bytes)}) [{self.seconds:.1f} s]")


#: ``.<name>.<8 hex>.partial``: the temporary names of exports and remote copies.
_DEAD_PARTIAL = re.compile(r"^\.?.+\.[0-9a-f]{8}" + re.escape(shard_io.PARTIAL_SUFFIX) + "$")


def _hold(path: Path) -> int:
    """Open ``path`` (file or directory) and hold an exclusive flock on it while the writer
    lives: the kernel drops it when the process dies, even by SIGKILL, which is how
    ``clean_dead_partials`` tells a dead writer's leftovers from a live writer's work."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def clean_dead_partials(folder: Path) -> list[str]:
    """Remove ``.<name>.<8 hex>.partial`` files and folders in ``folder`` whose writer is
    gone (a killed export or push): nobody holds their lock. A live writer's are kept."""
    removed: list[str] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not _DEAD_PARTIAL.match(p.name) or p.is_symlink():
            continue
        try:
            fd = _hold(p)
        except OSError:
            continue  # held by a live writer, or already gone
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{shard_io.PARTIAL_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_bundle(store: ContentStore, dataset: str,
                  layers: str | Sequence[str] = DEFAULT_LAYERS, *,
                  out: str | os.PathLike[str]) -> BundleReport:
    """Write one dataset's cached items into a new bundle directory (or ``.tar`` file).

    Contents: every card record of ``dataset``; its raw images (layer ``raw``) and the
    derived items of the chosen layers whose metadata chains back to those raw keys; the
    dataset's manifest ref and item; for predictions, the model-record refs and weights of
    the models that made them. Every payload is read and digest-checked on the way out.
    ``out`` must not exist; the bundle appears there only when complete.
    """
    t0 = time.time()
    validate_name(dataset)
    chosen = parse_layers(layers)
    dest = Path(out).expanduser()
    if dest.exists():
        raise InvalidInputError(f"bundle output {dest} already exists; expected a new path "
                                "(bundles are never overwritten)")
    as_tar = dest.name.endswith(".tar")
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_partials(dest.parent)  # leftovers of exports killed before they finished
    work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}{shard_io.PARTIAL_SUFFIX}"
    rep = BundleReport(str(dest), dataset, chosen)
    held: list[int] = []
    tmp_tar: Path | None = None
    with maintenance_lock(store, exclusive=False, what="cache export"):
        sel = _select_dataset(store, dataset, chosen)
        try:
            work.mkdir()
            held.append(_hold(work))
            files = _write_bundle_shards(store, sel, work)
            shutil.rmtree(work / "tmp", ignore_errors=True)
            layer_counts = dict(Counter(v["layer"] for v in sel.items.values()))
            manifest = {
                "format": BUNDLE_FORMAT, "version": FORMAT_VERSION, "dataset": dataset,
                "layers": chosen, "created": time.time(), "host": socket.gethostname(),
                "files": files,
                "contents": {"items": layer_counts, "refs": [r[0] for r in sel.refs],
                             "cards": len(sel.cards),
                             "blobs": len({v["blob"] for v in sel.items.values()
                                           if v["blob"]})},
            }
            _write_json_atomic(work / BUNDLE_JSON, manifest)
            if as_tar:
                tmp_tar = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}"
                                         f"{shard_io.PARTIAL_SUFFIX}")
                tmp_tar.touch(exist_ok=False)
                held.append(_hold(tmp_tar))
                with tarfile.open(tmp_tar, "w") as tar:
                    tar.add(work / BUNDLE_JSON, arcname=BUNDLE_JSON)
                    for f in files:
                        tar.add(work / f["path"], arcname=f["path"])
                with open(tmp_tar, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp_tar, dest)
                shutil.rmtree(work)
            else:
                os.replace(work, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if tmp_tar is not None:
                tmp_tar.unlink(missing_ok=True)
            raise
        finally:
            for fd in held:
                os.close(fd)
    rep.items = layer_counts
    rep.refs = len(sel.refs)
    rep.cards = len(sel.cards)
    rep.files = len(files) + 1
    rep.bytes = sum(f["bytes"] for f in files)
    rep.seconds = time.time() - t0
    return rep


def _write_bundle_shards(store: ContentStore, sel: _Selection, work: Path
                         ) -> list[dict[str, Any]]:
    """Group items by payload size into shards; records go with their payloads."""
    by_blob: dict[str, list[str]] = defaultdict(list)
    metaonly: list[str] = []
    for k, v in sel.items.items():
        (by_blob[v["blob"]] if v["blob"] else metaonly).append(k)
    sizes = dict(store.index.query("SELECT blob, nbytes FROM blobs")) if by_blob else {}
    groups: list[list[str]] = [[]]
    size = 0
    for b in sorted(by_blob):
        if groups[-1] and size + sizes.get(b, 0) > BUNDLE_SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(b)
        size += sizes.get(b, 0)
    files = []
    for gi, group in enumerate(groups):
        keys = [k for b in group for k in by_blob[b]]
        if gi == 0:
            keys += metaonly
        records = [{"type": "item", "key": k, "layer": sel.items[k]["layer"],
                    "blob": sel.items[k]["blob"], "meta": sel.items[k]["meta"],
                    "ts": sel.items[k]["created"]} for k in keys]
        if gi == 0:
            records += [{"type": "ref", "name": n, "key": k, "ts": u} for n, k, u in sel.refs]
            records += sel.cards
        if not records:
            continue

        def payloads(group: list[str] = group) -> Iterator[shard_io.BlobPayload]:
            for b in group:
                key = by_blob[b][0]
                value = store.get_many([key], touch=False).get(key)  # verified read
                if value is None:
                    raise IntegrityError(f"item {key} vanished from the cache during export")
                blob = payload_blob(value)
                if blob.blob_id != b:
                    raise IntegrityError(f"item {key}: payload digest {blob.blob_id} differs "
                                         f"from its index entry {b}")
                yield blob

        _, rel, nbytes = shard_io.write_shard(work, payloads(), records)
        files.append({"path": rel, "sha256": file_sha256(work / rel), "bytes": nbytes})
    return files


# ---------------------------------------------------------------------------------------
# checking shards that come from elsewhere
@dataclass
class _Inspected:
    name: str
    path: Path
    records: list[dict[str, Any]]
    blobs: dict[str, dict[str, Any]]  # blob id -> blob row
    problems: list[str]
    md5: dict[str, str] = field(default_factory=dict)  # bytes blob id -> md5 of the bytes


def _check_record(r: Any, where: str) -> str | None:
    if not isinstance(r, dict):
        return f"{where}: a record is {type(r).__name__}, expected an object"
    t = r.get("type")
    ts = r.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        return f"{where}: record {str(r)[:80]} has no finite 'ts'"
    if t == "item":
        if not is_hex_key(r.get("key")):
            return f"{where}: item key {r.get('key')!r} is not a 64-hex content key"
        if r.get("layer") not in KNOWN_LAYERS:
            return f"{where}: item {r['key']} has layer {r.get('layer')!r}, expected one of " \
                   f"{sorted(KNOWN_LAYERS)}"
        if r.get("blob") is not None and not is_hex_key(r.get("blob")):
            return f"{where}: item {r['key']} names payload {r.get('blob')!r}, not a digest"
        if not isinstance(r.get("meta", {}), dict):
            return f"{where}: item {r['key']} metadata is not an object"
        return None
    if t == "ref":
        name = r.get("name")
        if not isinstance(name, str) or not name or len(name) > 2048 or "\x00" in name:
            return f"{where}: ref name {name!r} is not a plain string"
        if not is_hex_key(r.get("key")):
            return f"{where}: ref {name} points at {r.get('key')!r}, not a content key"
        return None
    if t == "card":
        try:
            validate_name(r.get("dataset"))  # type: ignore[arg-type]
        except InvalidInputError as exc:
            return f"{where}: {exc}"
        cid = r.get("card_id")
        if not isinstance(cid, int) or isinstance(cid, bool):
            return f"{where}: card id {cid!r} is not an integer"
        if r.get("raw_key") is not None and not is_hex_key(r.get("raw_key")):
            return f"{where}: card {cid} raw key {r.get('raw_key')!r} is not a content key"
        if not isinstance(r.get("status"), str) or not isinstance(r.get("detail", ""), str):
            return f"{where}: card {cid} status/detail are not strings"
        return None
    return f"{where}: record type {t!r}, expected item, ref or card"


def _size_problem(what: str, ds: Any, limit: int) -> str | None:
    """Why an HDF5 dataset may not be read: it declares more than ``limit`` bytes, or far
    more than it stores (a compression bomb). Checked from metadata, before reading."""
    declared = int(ds.size) * int(ds.dtype.itemsize)
    if declared > limit:
        return f"{what} declares {declared} bytes, over the per-item limit of {limit}"
    stored = int(ds.id.get_storage_size())
    if declared > COMPRESSION_EXEMPT_BYTES and declared > MAX_ITEM_COMPRESSION * stored:
        return (f"{what} declares {declared} bytes but stores {stored} (compression over "
                f"{MAX_ITEM_COMPRESSION}:1, a decompression bomb); refused unread")
    return None


def _inspect_shard(name: str, path: Path) -> _Inspected:
    """Read a foreign shard and check everything it says about itself (no index needed).

    Sizes are checked from the HDF5 metadata before any payload is read, so a small file
    that expands to gigabytes is refused without allocating them."""
    import h5py

    out = _Inspected(name, path, [], {}, [])
    try:
        with h5py.File(path, "r", locking=False) as f:
            rec = f.get(shard_io.RECORDS_DATASET)
            if rec is None or not isinstance(rec, h5py.Dataset) or rec.dtype != np.uint8:
                out.problems.append(f"shard {name}: /records is missing or not a JSON byte "
                                    "array")
                return out
            why = _size_problem(f"shard {name}: /records", rec, MAX_JSON_BYTES)
            if why:
                out.problems.append(why)
                return out
            records = json.loads(bytes(rec[()]).decode("utf-8"))
            if not isinstance(records, list):
                out.problems.append(f"shard {name}: /records is not a JSON list")
                return out
            group = f.get(shard_io.BLOBS_GROUP)
            names = list(group.keys()) if isinstance(group, h5py.Group) else []
            for b in names:
                if not is_hex_key(b):
                    out.problems.append(f"shard {name}: payload name {b!r} is not a digest")
                    continue
                ds = group.get(b)
                why = _size_problem(f"shard {name}: payload {b}", ds,
                                    MAX_IMPORT_ITEM_BYTES) if isinstance(ds, h5py.Dataset) \
                    else None
                if why:
                    out.problems.append(why)
                    continue
                try:
                    arr, kind = read_blob_checked(f, b)
                except IntegrityError as exc:
                    out.problems.append(f"shard {name}: {exc}")
                    continue
                out.blobs[b] = blob_row(b, arr, kind)
                if kind == "bytes":
                    out.md5[b] = md5_bytes(arr.tobytes())
                del arr
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        out.problems.append(f"shard {name}: cannot be read ({type(exc).__name__}: {exc})")
        return out
    for r in records:
        why = _check_record(r, f"shard {name}")
        if why:
            out.problems.append(why)
        else:
            out.records.append(r)
    return out


def _check_items(shards: Sequence[_Inspected], local_blobs: set[str],
                 require_payloads: bool = True) -> list[str]:
    """Every item's key matches its content / chain, and (``require_payloads``) its payload
    is in these shards or the cache. A pulled shard may point at payloads in other remote
    shards, so pull checks keys only."""
    problems = []
    blobs = {b for s in shards for b in s.blobs}
    for s in shards:
        for r in s.records:
            if r["type"] != "item":
                continue
            b = r.get("blob")
            if (require_payloads and b is not None and b not in blobs
                    and b not in local_blobs):
                problems.append(f"shard {s.name}: item {r['key']} needs payload {b}, which "
                                "neither the shards nor this cache hold")
            if r["layer"] in CONTENT_KEYED_LAYERS and b is None:
                problems.append(f"shard {s.name}: {r['layer']} item {r['key']} has no payload")
                continue
            why = key_problem(r["key"], r["layer"], b, r.get("meta") or {})
            if why:
                problems.append(f"shard {s.name}: item {r['key']}: {why}")
            elif r["layer"] == "raw":
                why = _raw_meta_problem(r, s.md5.get(b or ""))
                if why:
                    problems.append(f"shard {s.name}: raw item {r['key']}: {why}")
    return problems


def _raw_meta_problem(r: dict[str, Any], md5: str | None) -> str | None:
    """A raw item's metadata may not lie about its bytes: downloads reuse a cached image
    for any card whose manifest md5 equals the image's recorded md5."""
    meta = r.get("meta") or {}
    if meta.get("sha256") not in (None, r["key"]):
        return f"metadata says sha256 {meta.get('sha256')!r}, the bytes hash to {r['key']}"
    if md5 is not None and meta.get("md5") not in (None, md5):
        return f"metadata says md5 {meta.get('md5')!r}, the bytes have md5 {md5}"
    return None


def _rewrite_into(store: ContentStore, shards: Sequence[_Inspected], staging: Path
                  ) -> list[tuple[str, str, int, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Write the verified content of foreign shards into fresh shards under ``staging``
    (same file system as the cache, outside its ``shards/``: nothing there is visible to
    ``recover`` until the caller moves it in).

    Payloads the cache already holds are not written again; item records the cache already
    holds are skipped; refs and cards go as ``proposals.vet`` left them.
    Payloads are re-read and re-checked while writing, so a file that changed since it was
    inspected fails here instead of entering the cache.

    Refs and card records go into one record-only shard, last in the returned order: the
    caller moves files in that order, so a process killed between two moves leaves shards
    that ``recover`` can index on their own (items with their payloads) and never a card
    or ref pointing at an item whose shard was not moved in yet.
    """
    import h5py

    have_blobs = store.index.present_blobs([b for s in shards for b in s.blobs])
    have_items = store.has([r["key"] for s in shards for r in s.records if r["type"] == "item"])
    written: list[tuple[str, str, int, list[dict[str, Any]], list[dict[str, Any]]]] = []
    pointers = [r for s in shards for r in s.records if r["type"] != "item"]
    try:
        for s in shards:
            records = [r for r in s.records if r["type"] == "item" and r["key"] not in have_items]
            new_blobs = [b for b in s.blobs if b not in have_blobs]
            if not records and not new_blobs:
                continue
            rows: list[dict[str, Any]] = []
            with h5py.File(s.path, "r", locking=False) as f:
                def payloads(f: Any = f, new_blobs: list[str] = new_blobs,
                             rows: list[dict[str, Any]] = rows
                             ) -> Iterator[shard_io.BlobPayload]:
                    for b in new_blobs:
                        arr, kind = read_blob_checked(f, b)
                        rows.append(blob_row(b, arr, kind))
                        yield shard_io.BlobPayload(b, arr, kind)

                name, rel, nbytes = shard_io.write_shard(staging, payloads(), records)
            written.append((name, rel, nbytes, records, rows))
            have_blobs |= set(new_blobs)
        if pointers:
            name, rel, nbytes = shard_io.write_shard(staging, [], pointers)
            written.append((name, rel, nbytes, pointers, []))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


# ---------------------------------------------------------------------------------------
# import
@dataclass
class ImportReport:
    path: str
    dataset: str
    items: dict[str, int] = field(default_factory=dict)
    already_cached: int = 0
    refs: int = 0
    cards: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    #: refs and card records of the bundle that were not taken, each with why
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        text = (f"imported {self.dataset} from {self.path}: items {self.items} "
                f"({self.already_cached} already cached), {self.refs} refs, {self.cards} "
                f"cards; {self.shards_written} new shards ({human_bytes(self.bytes_written)}) "
                f"[{self.seconds:.1f} s]")
        return text + _ignored_lines(self.ignored)


def _ignored_lines(ignored: Sequence[str]) -> str:
    if not ignored:
        return ""
    more = f"\n  ... and {len(ignored) - EXAMPLES} more" if len(ignored) > EXAMPLES else ""
    return (f"\n{len(ignored)} refs/card records not taken (this cache's own are kept; "
            "others did not verify):\n" + "\n".join(f"  {w}" for w in ignored[:EXAMPLES]) + more)


def _payload_reader(store: ContentStore, shards: Sequence[_Inspected]
                    ) -> Callable[[str], bytes | None]:
    """Bytes of an item by key, from the verified foreign shards or else the cache."""
    import h5py

    blob_of = {r["key"]: r.get("blob") for s in shards for r in s.records
               if r["type"] == "item"}
    where = {b: s.path for s in shards for b in s.blobs}

    def read(key: str) -> bytes | None:
        b = blob_of.get(key)
        if b in where:
            with h5py.File(where[b], "r", locking=False) as f:
                arr, kind = read_blob_checked(f, b)
            return arr.tobytes() if kind == "bytes" else None
        try:
            value = store.get_many([key], touch=False).get(key)
        except IntegrityError:
            return None
        return value if isinstance(value, bytes) else None

    return read


def _bundle_rel_ok(rel: Any) -> str | None:
    """The shard name of a bundle-relative path, if it has exactly the expected form."""
    if not isinstance(rel, str):
        return None
    p = PurePosixPath(rel)
    if len(p.parts) != 3 or p.parts[0] != "shards" or not p.name.endswith(shard_io.SHARD_SUFFIX):
        return None
    name = p.name[: -len(shard_io.SHARD_SUFFIX)]
    if not is_shard_name(name) or p.parts[1] != name[:6]:
        return None
    return name


def _tar_target(tar_path: Path, m: tarfile.TarInfo, dest: Path) -> Path:
    """Where a member goes, or IntegrityError: only ``bundle.json`` and
    ``shards/<prefix>/<name>.h5`` regular files within their size limits."""
    if m.name == BUNDLE_JSON:
        target, limit = dest / BUNDLE_JSON, MAX_BUNDLE_JSON_BYTES
    elif _bundle_rel_ok(m.name):
        target, limit = dest / m.name, MAX_TAR_MEMBER_BYTES
    else:
        raise IntegrityError(f"bundle {tar_path}: unexpected member {m.name!r}; "
                             "expected bundle.json and shards/<prefix>/<name>.h5")
    if not m.isfile():
        raise IntegrityError(f"bundle {tar_path}: member {m.name!r} is not a regular file")
    if m.size > limit:
        raise IntegrityError(f"bundle {tar_path}: member {m.name!r} declares {m.size} bytes, "
                             f"over the limit of {limit}")
    return target


def _scan_tar(tar_path: Path, dest: Path) -> dict[str, int]:
    """First pass over the member headers only (nothing is written): names, types, count,
    declared sizes, and the expansion a compressed tar would need. Stops at the first
    member over a limit, so a bomb is refused before its data is decompressed."""
    archive = tar_path.stat().st_size
    budget = archive * MAX_STREAM_COMPRESSION + COMPRESSION_EXEMPT_BYTES
    declared: dict[str, int] = {}
    total = 0
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            compressed = not isinstance(tar.fileobj, io.BufferedReader)
            for m in tar:
                if len(declared) >= MAX_TAR_MEMBERS:
                    raise IntegrityError(f"bundle {tar_path} has more than {MAX_TAR_MEMBERS} "
                                         "members; refused before extracting any")
                _tar_target(tar_path, m, dest)
                if m.name in declared:
                    raise IntegrityError(f"bundle {tar_path}: member {m.name!r} appears twice")
                declared[m.name] = m.size
                total += m.size
                if not compressed and total > archive:
                    raise IntegrityError(f"bundle {tar_path}: members declare {total} bytes, "
                                         f"more than the {archive}-byte file holds")
                if total > budget:
                    raise IntegrityError(
                        f"bundle {tar_path}: members declare {total} bytes from a "
                        f"{archive}-byte compressed file (over {MAX_STREAM_COMPRESSION}:1, "
                        "a decompression bomb); refused before extracting")
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise IntegrityError(f"bundle {tar_path} is not a readable tar file: {exc}") from exc
    free = shutil.disk_usage(dest).free
    if total > free:
        raise InvalidInputError(f"bundle {tar_path} needs {human_bytes(total)} to extract "
                                f"into {dest}, which has {human_bytes(free)} free")
    return declared


def _extract_tar(tar_path: Path, dest: Path) -> None:
    """Extract only ``bundle.json`` and ``shards/<prefix>/<name>.h5`` regular files, after
    ``_scan_tar`` accepted every header; each member's bytes are counted while copying."""
    declared = _scan_tar(tar_path, dest)
    try:
        tar = tarfile.open(tar_path, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise IntegrityError(f"bundle {tar_path} is not a readable tar file: {exc}") from exc
    with tar:
        try:
            for m in tar:
                target = _tar_target(tar_path, m, dest)
                if declared.get(m.name) != m.size:
                    raise IntegrityError(f"bundle {tar_path} changed while it was read "
                                         f"(member {m.name!r})")
                src = tar.extractfile(m)
                if src is None:  # pragma: no cover - isfile() members always have data
                    raise IntegrityError(f"bundle {tar_path}: member {m.name!r} has no data")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with src, open(target, "xb") as fh:
                        copied = 0
                        for chunk in iter(lambda src=src: src.read(1 << 20), b""):
                            copied += len(chunk)
                            if copied > m.size:  # pragma: no cover - tarfile stops at size
                                raise IntegrityError(f"bundle {tar_path}: member {m.name!r} "
                                                     f"holds more than its {m.size} bytes")
                            fh.write(chunk)
                except FileExistsError:
                    raise IntegrityError(f"bundle {tar_path}: member {m.name!r} appears "
                                         "twice") from None
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise IntegrityError(f"bundle {tar_path}: cannot be read ({exc})") from exc


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_JSON_BYTES:
        raise IntegrityError(f"{what} is {len(data)} bytes, over the limit of {MAX_JSON_BYTES}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} is a JSON {type(obj).__name__}, expected an object")
    return obj


def import_bundle(store: ContentStore, path: str | os.PathLike[str]) -> ImportReport:
    """Verify a bundle completely, then add its content to the cache in one transaction.

    Refused with ``IntegrityError`` (and nothing imported) when: a listed file is missing,
    unlisted, or has another sha256 or size; a shard or record is malformed; a payload fails
    its digest; an item's key (or a raw image's recorded md5) does not match its content or
    recorded chain; a record names a payload that is neither in the bundle nor in the
    cache; a card belongs to another dataset than the bundle's; a resource limit is
    exceeded. Refs and card records that do not verify, or that would override this cache's
    own, are left out and listed in ``ImportReport.ignored``.
    """
    t0 = time.time()
    src = Path(path).expanduser()
    if not src.exists():
        raise InvalidInputError(f"bundle {src} does not exist; expected a bundle directory or "
                                ".tar written by `pad-assets cache export`")
    with maintenance_lock(store, exclusive=False, what="cache import"):
        tmp_root = store.root / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        extracted: Path | None = None
        try:
            if src.is_file():
                extracted = tmp_root / f"import-{uuid.uuid4().hex[:12]}{shard_io.PARTIAL_SUFFIX}"
                extracted.mkdir()
                _extract_tar(src, extracted)
                bundle_dir = extracted
            else:
                bundle_dir = src
            return _import_dir(store, bundle_dir, str(src), t0)
        finally:
            if extracted is not None:
                shutil.rmtree(extracted, ignore_errors=True)


def _import_dir(store: ContentStore, bdir: Path, shown: str, t0: float) -> ImportReport:
    jpath = bdir / BUNDLE_JSON
    if not jpath.is_file():
        raise IntegrityError(f"bundle {shown} has no {BUNDLE_JSON}; expected a directory or tar "
                             "written by `pad-assets cache export`")
    size = jpath.stat().st_size
    if size > MAX_BUNDLE_JSON_BYTES:
        raise IntegrityError(f"bundle {shown}: {BUNDLE_JSON} is {size} bytes, over the limit "
                             f"of {MAX_BUNDLE_JSON_BYTES}; not read")
    with open(jpath, "rb") as fh:
        manifest = _load_json(fh.read(MAX_BUNDLE_JSON_BYTES + 1),
                              f"bundle {shown}: {BUNDLE_JSON}")
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise IntegrityError(f"bundle {shown}: format {manifest.get('format')!r} version "
                             f"{manifest.get('version')!r}, expected {BUNDLE_FORMAT!r} "
                             f"version {FORMAT_VERSION}")
    try:
        dataset = validate_name(manifest.get("dataset"))  # type: ignore[arg-type]
    except InvalidInputError as exc:
        raise IntegrityError(f"bundle {shown}: {exc}") from exc
    files = manifest.get("files")
    if not isinstance(files, list):
        raise IntegrityError(f"bundle {shown}: 'files' is not a list")
    if len(files) > MAX_TAR_MEMBERS:
        raise IntegrityError(f"bundle {shown}: {BUNDLE_JSON} lists {len(files)} files, over "
                             f"the limit of {MAX_TAR_MEMBERS}")
    problems: list[str] = []
    listed: dict[str, tuple[str, str]] = {}
    sizes: dict[str, int | None] = {}
    for f in files:
        rel = f.get("path") if isinstance(f, dict) else None
        name = _bundle_rel_ok(rel)
        if name is None or not is_hex_key(f.get("sha256")):
            problems.append(f"listed file {str(f)[:120]} is not shards/<prefix>/<name>.h5 "
                            "with a sha256")
            continue
        listed[name] = (rel, f["sha256"])
        declared = f.get("bytes")
        if declared is not None and (not isinstance(declared, int) or declared < 0):
            problems.append(f"listed file {rel} declares size {declared!r}, expected bytes")
        else:
            sizes[name] = declared
    present = {}
    sdir = bdir / "shards"
    if sdir.is_dir():
        for n, p in enumerate(sdir.rglob("*")):
            if n > 2 * MAX_TAR_MEMBERS:
                raise IntegrityError(f"bundle {shown}: more than {MAX_TAR_MEMBERS} files under "
                                     "shards/; refused")
            if p.is_file() or p.is_symlink():
                rel = p.relative_to(bdir).as_posix()
                name = _bundle_rel_ok(rel)
                if name is None or name not in listed:
                    problems.append(f"file {rel} is not listed in {BUNDLE_JSON}")
                elif p.is_symlink():
                    problems.append(f"file {rel} is a symbolic link")
                else:
                    present[name] = p
    for name, (rel, sha) in sorted(listed.items()):
        p = present.get(name)
        if p is None:
            problems.append(f"listed file {rel} is missing")
            continue
        actual = p.stat().st_size
        if sizes.get(name) is not None and sizes[name] != actual:
            problems.append(f"file {rel} has {actual} bytes, {BUNDLE_JSON} declares "
                            f"{sizes[name]}")
            continue
        if actual > MAX_TAR_MEMBER_BYTES:
            problems.append(f"file {rel} has {actual} bytes, over the limit of "
                            f"{MAX_TAR_MEMBER_BYTES}")
            continue
        got = file_sha256(p)
        if got != sha:
            problems.append(f"file {rel} has sha256 {got}, {BUNDLE_JSON} says {sha}")
    _refuse(problems, shown)
    inspected = [_inspect_shard(n, present[n]) for n in sorted(present)]
    problems = [p for s in inspected for p in s.problems]
    for s in inspected:
        for r in s.records:
            if r["type"] == "card" and r["dataset"] != dataset:
                problems.append(f"shard {s.name}: card {r['card_id']} belongs to "
                                f"{r['dataset']!r}, but the bundle is for {dataset!r}")
    needed = [r["blob"] for s in inspected for r in s.records
              if r["type"] == "item" and r.get("blob")]
    problems += _check_items(inspected, store.index.present_blobs(needed))
    _refuse(problems, shown)
    rep = ImportReport(shown, dataset)
    # Refs and card records are proposals: verified against content, never overriding
    # local truth, never stamped later than now (dropped ones are reported, not imported).
    rep.ignored = vet(store, inspected, _payload_reader(store, inspected),
                      dataset=dataset).ignored
    recs = [r for s in inspected for r in s.records]
    rep.items = dict(Counter(r["layer"] for r in recs if r["type"] == "item"))
    rep.already_cached = len(store.has([r["key"] for r in recs if r["type"] == "item"]))
    rep.refs = sum(1 for r in recs if r["type"] == "ref")
    rep.cards = sum(1 for r in recs if r["type"] == "card")
    staging = store.root / "tmp" / f"import-{uuid.uuid4().hex[:12]}{shard_io.PARTIAL_SUFFIX}"
    try:
        written = _rewrite_into(store, inspected, staging)
    except IntegrityError as exc:
        raise IntegrityError(f"bundle {shown} changed while it was imported ({exc}); nothing "
                             "was imported") from exc
    try:
        # Everything is verified and written: move the files in, then one transaction.
        # (A crash in between leaves complete, verified shards that recover() indexes;
        # refs and cards move last, so none points at an item that did not arrive.)
        _move_in_and_index(store, staging, written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    store.index.touch([r["key"] for r in recs if r["type"] == "item"], older_than=0.0)
    rep.shards_written = len(written)
    rep.bytes_written = sum(w[2] for w in written)
    rep.seconds = time.time() - t0
    return rep


def _refuse(problems: list[str], shown: str) -> None:
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise IntegrityError(f"bundle {shown} refused, nothing was imported: "
                             + "; ".join(problems[:10]) + more)


# ---------------------------------------------------------------------------------------
# remote tier
def _remote(url: str) -> tuple[Any, str]:
    import fsspec

    if not url or not isinstance(url, str):
        raise InvalidInputError(f"remote {url!r}: expected an fsspec URL or a directory path")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise InvalidInputError(f"remote {url!r}: {exc}") from exc
    return fs, root.rstrip("/")


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _read_remote_index(fs: Any, root: str, url: str) -> dict[str, Any]:
    path = f"{root}/{REMOTE_INDEX}"
    if not fs.exists(path):
        return {"format": REMOTE_FORMAT, "version": FORMAT_VERSION, "shards": {}}
    with fs.open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    idx = _load_json(data, f"remote index {url}/{REMOTE_INDEX}")
    if idx.get("format") != REMOTE_FORMAT or not isinstance(idx.get("shards"), dict):
        raise IntegrityError(f"{url}/{REMOTE_INDEX} is not a pad_assets remote index "
                             f"(format {idx.get('format')!r})")
    bad = [f"entry {name!r}: {why}" for name, e in sorted(idx["shards"].items())
           if (why := _remote_entry_problem(e))]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise IntegrityError(f"remote {url}: {REMOTE_INDEX} has malformed entries, nothing "
                             f"was copied: {'; '.join(bad[:5])}{more}. Expected each entry "
                             "to be an object with 'path' (text), 'datasets' (list of names), "
                             "'sha256' (64 hex) and 'bytes' (a size)")
    return idx


def _remote_entry_problem(e: Any) -> str | None:
    """Why one shard entry of a remote index cannot be used (None when it can)."""
    if not isinstance(e, dict):
        return f"is {type(e).__name__} {str(e)[:40]!r}, expected an object"
    if "path" in e and not isinstance(e["path"], str):
        return f"'path' is {type(e['path']).__name__}, expected text"
    ds = e.get("datasets", [])
    if not isinstance(ds, list) or not all(isinstance(d, str) for d in ds):
        return f"'datasets' is {str(ds)[:40]!r}, expected a list of dataset names"
    if "sha256" in e and e["sha256"] is not None and not is_hex_key(e["sha256"]):
        return f"'sha256' is {str(e['sha256'])[:70]!r}, expected 64 hex digits"
    n = e.get("bytes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        return f"'bytes' is {str(n)[:40]!r}, expected a non-negative integer"
    return None


def _remote_files(fs: Any, root: str) -> dict[str, str]:
    """shard name -> remote path for every well-named shard file under ``shards/``."""
    base = f"{root}/shards"
    if not fs.exists(base):
        return {}
    out = {}
    for p in fs.find(base):
        rel = p[len(root) + 1:] if p.startswith(root + "/") else p
        name = _bundle_rel_ok(rel)
        if name:
            out[name] = p
    return out


def _write_remote(fs: Any, root: str, rel: str, src: Path | bytes) -> None:
    """Local-style file systems: temporary name, fsync, rename. Object stores: one PUT
    (objects appear whole or not at all)."""
    final = f"{root}/{rel}"
    if _is_local(fs):
        final_p = Path(final)
        tmp_dir = Path(root) / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        final_p.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{final_p.name}.{uuid.uuid4().hex[:8]}{shard_io.PARTIAL_SUFFIX}"
        try:
            with open(tmp, "wb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # "alive": see clean_dead_partials
                if isinstance(src, bytes):
                    out.write(src)
                else:
                    with open(src, "rb") as fin:
                        shutil.copyfileobj(fin, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final_p)
            fsync_dir(final_p.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(src, bytes):
        with fs.open(final, "wb") as out:
            out.write(src)
    else:
        fs.put_file(str(src), final)


def _brings_something(store: ContentStore, insp: _Inspected) -> bool:
    """Whether a verified, vetted shard holds a payload, item, ref or card record this cache
    lacks (vetting left only refs and cards that are new here or equal to the local ones)."""
    if set(insp.blobs) - store.index.present_blobs(list(insp.blobs)):
        return True
    keys = [r["key"] for r in insp.records if r["type"] == "item"]
    if set(keys) - store.has(keys):
        return True
    for r in insp.records:
        if r["type"] == "ref" and store.ref(r["name"]) != r["key"]:
            return True
        if r["type"] == "card":
            cur = store.cards(r["dataset"], [int(r["card_id"])]).get(int(r["card_id"]))
            if cur is None or (cur["raw_key"], cur["status"]) != (r.get("raw_key"),
                                                                  r["status"]):
                return True
    return False


@dataclass
class PushReport:
    remote: str
    pushed: list[str] = field(default_factory=list)
    bytes: int = 0
    already_there: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        lines = [f"pushed {len(self.pushed)} shards ({human_bytes(self.bytes)}) to "
                 f"{self.remote}; {self.already_there} already there [{self.seconds:.1f} s]"]
        lines += [f"  not pushed: {s}" for s in self.skipped]
        return "\n".join(lines)


def push(store: ContentStore, remote_url: str, *,
         progress: Callable[[int, int], None] | None = None) -> PushReport:
    """Copy every indexed shard the remote lacks, each verified first, then update the
    remote ``index.json`` (re-read just before writing, entries merged). ``progress(done,
    total)`` is called after each shard (the CLI draws a bar with it)."""
    t0 = time.time()
    fs, root = _remote(remote_url)
    rep = PushReport(remote_url)
    _read_remote_index(fs, root, remote_url)  # a malformed index is refused before copying
    if _is_local(fs):
        clean_dead_partials(Path(root) / "tmp")  # of pushes killed mid-copy
    with maintenance_lock(store, exclusive=False, what="cache push"):
        retired = retired_shards(store.index)
        local = {s: p for s, p in store.index.shard_paths().items() if s not in retired}
        affinity = dataset_affinity(store)
        there = _remote_files(fs, root)
        entries: dict[str, dict[str, Any]] = {}
        for done, (name, rel) in enumerate(sorted(local.items())):
            if progress is not None:
                progress(done, len(local))
            path = store.root / rel
            if not is_shard_name(name) or rel != shard_io.shard_relpath(name):
                rep.skipped.append(f"{name}: unexpected shard path {rel}")
                continue
            entry = {"path": rel, "datasets": sorted(affinity.get(name, ())),
                     "bytes": path.stat().st_size if path.exists() else 0}
            if name in there:
                rep.already_there += 1
                entries[name] = entry
                continue
            insp = _inspect_shard(name, path)
            if insp.problems:
                rep.skipped.append(f"{name}: {insp.problems[0]} (run `pad-assets cache verify "
                                   "--repair`)")
                continue
            entry["sha256"] = file_sha256(path)
            _write_remote(fs, root, rel, path)
            entry.update(pushed_at=time.time(), pushed_from=socket.gethostname())
            entries[name] = entry
            rep.pushed.append(name)
            rep.bytes += entry["bytes"]
        idx = _read_remote_index(fs, root, remote_url)
        for name, e in entries.items():
            old = idx["shards"].get(name) or {}
            merged = {**old, **e}
            merged["datasets"] = sorted(set(old.get("datasets", [])) | set(e["datasets"]))
            if "sha256" not in merged and name not in rep.pushed:
                merged["sha256"] = file_sha256(store.root / e["path"])
            idx["shards"][name] = merged
        idx.update(format=REMOTE_FORMAT, version=FORMAT_VERSION, updated=time.time())
        _write_remote(fs, root, REMOTE_INDEX,
                      json.dumps(idx, indent=1, sort_keys=True).encode())
    rep.seconds = time.time() - t0
    return rep


@dataclass
class PullReport:
    remote: str
    dataset: str | None
    pulled: list[str] = field(default_factory=list)
    bytes: int = 0
    already_here: int = 0
    failed: list[str] = field(default_factory=list)
    missing_payloads: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: refs and card records of pulled shards that were not taken, each with why
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        what = f" for {self.dataset}" if self.dataset else ""
        lines = [f"pulled {len(self.pulled)} shards{what} ({human_bytes(self.bytes)}) from "
                 f"{self.remote}; {self.already_here} already here [{self.seconds:.1f} s]"]
        lines += [f"  refused: {s}" for s in self.failed]
        if self.missing_payloads:
            lines.append(f"  {len(self.missing_payloads)} pulled items reference payloads no "
                         f"shard here holds (e.g. {self.missing_payloads[:3]}); pull without "
                         "--dataset to fetch everything")
        return "\n".join(lines) + _ignored_lines(self.ignored)


def _copy_remote_shard(fs: Any, src: str, tmp: Path, entry: dict[str, Any], url: str,
                       name: str) -> None:
    """Stream one remote shard to ``tmp``, checking its size while copying (never more than
    the index declares, never more than a shard may hold) and its sha256 at the end."""
    declared = entry.get("bytes")
    limit = MAX_TAR_MEMBER_BYTES if declared is None else min(declared, MAX_TAR_MEMBER_BYTES)
    h = hashlib.sha256()
    copied = 0
    with fs.open(src, "rb") as fin, open(tmp, "wb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            copied += len(chunk)
            if copied > limit:
                raise IntegrityError(
                    f"remote {url}: shard {name} is larger than "
                    + (f"the {declared} bytes its index entry declares" if declared is not None
                       and declared <= MAX_TAR_MEMBER_BYTES else
                       f"the limit of {MAX_TAR_MEMBER_BYTES} bytes") + "; not kept")
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if declared is not None and copied != declared:
        raise IntegrityError(f"{copied} bytes, the remote index declares {declared}")
    want = entry.get("sha256")
    if want and h.hexdigest() != want:
        raise IntegrityError(f"sha256 {h.hexdigest()}, the remote index says {want}")


def _index_rewritten(store: ContentStore, insp: _Inspected) -> int:
    """Write a pulled shard's vetted content into a fresh local shard and index it; the
    bytes written."""
    staging = store.root / "tmp" / f"pull-{uuid.uuid4().hex[:12]}{shard_io.PARTIAL_SUFFIX}"
    try:
        written = _rewrite_into(store, [insp], staging)
        _move_in_and_index(store, staging, written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sum(w[2] for w in written)


def _move_in_and_index(store: ContentStore, staging: Path, written: list[Any]) -> None:
    """Move verified staged shards into the store, in order, then index them in one
    transaction (a crash in between leaves complete shards that ``recover()`` indexes)."""
    for _, rel, *_ in written:
        final = store.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, final)
        fsync_dir(final.parent)
    store.index.apply_shards(written)


def pull(store: ContentStore, remote_url: str, dataset: str | None = None, *,
         strict: bool = True, progress: Callable[[int, int], None] | None = None
         ) -> PullReport:
    """Copy the remote shards this cache lacks (those of ``dataset`` only, when given),
    verify each on arrival (file sha256, payload digests, records, keys) and index it.

    Shards that fail are not kept; with ``strict`` an ``IntegrityError`` naming them is
    raised after the good ones are indexed (each shard is a self-contained unit).
    """
    t0 = time.time()
    if dataset is not None:
        validate_name(dataset)
    fs, root = _remote(remote_url)
    rep = PullReport(remote_url, dataset)
    idx = _read_remote_index(fs, root, remote_url)
    files = _remote_files(fs, root)
    if not files and not idx["shards"]:
        raise InvalidInputError(f"remote {remote_url} holds no pad_assets shards; expected a "
                                "location written by `pad-assets cache push`")
    entries = idx["shards"]
    names = set(files)
    if dataset is not None:
        names = {n for n in names if dataset in (entries.get(n) or {}).get("datasets", [])}
        if not names:
            known = sorted({d for e in entries.values() for d in e.get("datasets", [])})
            raise InvalidInputError(f"remote {remote_url} has no shards for dataset "
                                    f"{dataset!r}; datasets there: {known or '(none)'}")
    with maintenance_lock(store, exclusive=False, what="cache pull"):
        local = set(store.index.shard_paths()) | set(store.shard_files())
        tmp_dir = store.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        arrived: list[_Inspected] = []
        try:
            # 1. copy and verify every missing shard (kept under tmp/ until vetted)
            for done, name in enumerate(sorted(names)):
                if progress is not None:  # ``progress(done, total)``: the CLI's bar
                    progress(done, len(names))
                if name in local:
                    rep.already_here += 1
                    continue
                tmp = tmp_dir / f"{name}{shard_io.SHARD_SUFFIX}.{uuid.uuid4().hex[:8]}" \
                                f"{shard_io.PARTIAL_SUFFIX}"
                try:
                    _copy_remote_shard(fs, files[name], tmp, entries.get(name) or {},
                                       remote_url, name)
                    insp = _inspect_shard(name, tmp)
                    problems = insp.problems + _check_items([insp], set(),
                                                            require_payloads=False)
                    if problems:
                        raise IntegrityError("; ".join(problems[:5]))
                except (IntegrityError, OSError) as exc:
                    tmp.unlink(missing_ok=True)
                    rep.failed.append(f"{name}: {exc}")
                    continue
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                arrived.append(insp)
            # 2. refs and cards are proposals, vetted together (a model record and its
            # weights may travel in different shards)
            vetting = vet(store, arrived, _payload_reader(store, arrived))
            rep.ignored = vetting.ignored
            vet_changed = {arrived[i].name for i in vetting.changed}
            # 3. index what brings something new: verbatim when vetting changed nothing,
            # else rewritten into a fresh local shard (the remote's file keeps its records)
            pulled_records: list[dict[str, Any]] = []
            for insp in arrived:
                if not _brings_something(store, insp):
                    # e.g. the pre-compaction original of a shard this cache rewrote: its
                    # content is here already, indexing it would only store it twice
                    rep.already_here += 1
                    continue
                if insp.name in vet_changed:
                    rep.bytes += _index_rewritten(store, insp)
                else:
                    rel = shard_io.shard_relpath(insp.name)
                    final = store.root / rel
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(insp.path, final)
                    fsync_dir(final.parent)
                    store.index_shard_file(insp.name, rel)
                    rep.bytes += final.stat().st_size
                rep.pulled.append(insp.name)
                pulled_records += insp.records
        finally:
            for insp in arrived:
                insp.path.unlink(missing_ok=True)
        needed = [r["blob"] for r in pulled_records if r["type"] == "item" and r.get("blob")]
        have = store.index.present_blobs(needed)
        rep.missing_payloads = sorted({r["key"] for r in pulled_records if r["type"] == "item"
                                       and r.get("blob") and r["blob"] not in have})
    rep.seconds = time.time() - t0
    if strict and rep.failed:
        raise IntegrityError(f"pull from {remote_url}: {len(rep.failed)} shards failed "
                             f"verification and were not kept ({'; '.join(rep.failed[:3])}); "
                             f"{len(rep.pulled)} good shards were indexed")
    return rep


__all__ = [
    "BundleReport",
    "ImportReport",
    "PullReport",
    "PushReport",
    "export_bundle",
    "import_bundle",
    "parse_layers",
    "pull",
    "push",
]
