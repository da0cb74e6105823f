"""Writing a dataset bundle: ``export_bundle``.

Why a module of its own: a bundle is written into a temporary folder (or tar) and appears
under its name only when complete; every payload is re-read and digest-checked on the way out.
"""

from __future__ import annotations

import os
import shutil
import socket
import tarfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, InvalidInputError
from ..maintenance import (
    fsync_dir,
    human_bytes,
    maintenance_lock,
)
from ..sources.urls import validate_name
from ..store import ContentStore
from ..store import shards as shard_io
from ..store.fs import file_sha256
from ..store.queries import select
from ..store.store import payload_blob
from . import limits
from .partials import _hold, _write_json_atomic, clean_dead_partials
from .selection import _select_dataset, _Selection, parse_layers


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


def export_bundle(store: ContentStore, dataset: str,
                  layers: str | Sequence[str] = limits.DEFAULT_LAYERS, *,
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
                "format": limits.BUNDLE_FORMAT, "version": limits.FORMAT_VERSION, "dataset": dataset,
                "layers": chosen, "created": time.time(), "host": socket.gethostname(),
                "files": files,
                "contents": {"items": layer_counts, "refs": [r[0] for r in sel.refs],
                             "cards": len(sel.cards),
                             "blobs": len({v["blob"] for v in sel.items.values()
                                           if v["blob"]})},
            }
            _write_json_atomic(work / limits.BUNDLE_JSON, manifest)
            if as_tar:
                tmp_tar = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}"
                                         f"{shard_io.PARTIAL_SUFFIX}")
                tmp_tar.touch(exist_ok=False)
                held.append(_hold(tmp_tar))
                with tarfile.open(tmp_tar, "w") as tar:
                    tar.add(work / limits.BUNDLE_JSON, arcname=limits.BUNDLE_JSON)
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
    sizes = dict(select(store.index, "blobs", "blob", "nbytes")) if by_blob else {}
    groups: list[list[str]] = [[]]
    size = 0
    for b in sorted(by_blob):
        if groups[-1] and size + sizes.get(b, 0) > limits.BUNDLE_SHARD_BYTES:
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

