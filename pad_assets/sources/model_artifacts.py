"""PAD model records and their weights: fetched once, verified, kept in the cache.

The record (labels, type, weights URL, SHA256) is cached under a ref per server and model
id, so a warm run resolves a model with no HTTP at all; ``refresh=True`` asks the server
again. Weights are accepted only if their sha256 equals the record's ``SHA256``; they are
stored in the content store and mirrored to ``<cache>/artifacts/<sha256><suffix>`` because
model runtimes want a file path.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ..errors import IntegrityError, ModelError, OfflineError
from ..hashing import sha256_bytes
from ..settings import Settings
from ..store import ContentStore, NewItem
from ..store import refs as refnames
from ..store.fs import atomic_write, file_sha256
from .pad_api import PadApiClient


@dataclass(frozen=True)
class ResolvedModel:
    record: dict[str, Any]
    weights_path: Path
    sha256: str


def record_ref(settings: Settings, model_id: int) -> str:
    """Ref of a model record: the server's identity (no port) and the model id, so a record
    cached from an emulator on one port is found when it runs on another."""
    from .listing import identity

    return refnames.model_record(identity(settings.api_url), model_id)


def _artifact_path(settings: Settings, sha: str, url: str) -> Path:
    suffix = PurePosixPath(urlsplit(url).path).suffix[:16] or ".bin"
    return settings.cache_dir / "artifacts" / f"{sha}{suffix}"


_VERIFIED: dict[tuple[str, int, int, int], str] = {}
_VERIFIED_LOCK = threading.Lock()


def artifact_sha256(path: Path) -> str:
    """sha256 of a weights file, hashed once per process per version of the file.

    Keyed by (path, size, mtime, inode): a file rewritten or replaced since is hashed
    again; an unchanged one costs a ``stat``. Weights are hundreds of MB at most, so one
    hash per process is cheap next to loading them.
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _VERIFIED_LOCK:
        known = _VERIFIED.get(key)
    if known is None:
        known = file_sha256(path)
        with _VERIFIED_LOCK:
            _VERIFIED[key] = known
    return known


def artifact_problem(path: Path) -> str | None:
    """Why a file under ``<cache>/artifacts/`` is not the weights its name promises."""
    stem = path.name.split(".", 1)[0]
    if len(stem) != 64 or any(c not in "0123456789abcdef" for c in stem):
        return None  # not a content-named mirror (left alone)
    try:
        got = artifact_sha256(path)
    except OSError as exc:
        return f"cannot be read ({exc})"
    return None if got == stem else f"has sha256 {got}, not the {stem} its name promises"


def _mirror(settings: Settings, store: ContentStore, sha: str, url: str) -> Path:
    """The verified file copy of stored weights, (re)written from the store when absent or
    when its bytes are not the weights (a tampered or damaged copy is never used)."""
    path = _artifact_path(settings, sha, url)
    if path.is_file() and path.stat().st_size > 0 and artifact_problem(path) is None:
        return path
    atomic_write(path, store.get(sha))  # verified on read
    return path


def _from_mirror(settings: Settings, sha: str, url: str, model_id: int) -> NewItem | None:
    path = _artifact_path(settings, sha, url)
    if not path.is_file() or artifact_problem(path) is not None:
        return None
    data = path.read_bytes()
    if sha256_bytes(data) != sha:  # changed between the check and the read
        return None
    return NewItem(sha, "weights", data, {"model_id": int(model_id), "url": url,
                                          "fetched_at": time.time(),
                                          "restored_from": str(path)})


def _cached_record(model_id: int, settings: Settings, store: ContentStore
                   ) -> dict[str, Any] | None:
    """The cached record, or None when there is none or its ref dangles (a lost shard:
    the record is asked for again, or offline the error names what is missing)."""
    key = store.ref(record_ref(settings, model_id))
    if key is None and settings.offline:
        # Offline with another server configured: the newest record of this model id.
        for _, k in refnames.newest_for(store.index, refnames.MODEL_RECORD, str(int(model_id))):
            if store.has([k]):
                key = k
                break
    if not key:
        return None
    got = store.get_many([key])
    return json.loads(got[key]) if key in got else None


def _fetch_record(model_id: int, settings: Settings, api: PadApiClient) -> dict[str, Any]:
    if settings.offline:
        raise OfflineError(f"model {model_id}", [f"{settings.api_base}/neural-networks/{model_id}"])
    record = api.neural_network(model_id)
    if not isinstance(record, dict) or "weights_url" not in record:
        raise ModelError(f"model record {model_id} from {settings.api_base} has no weights_url: "
                         f"{str(record)[:200]}")
    return record


def _record_item(record: dict[str, Any], model_id: int, settings: Settings
                 ) -> tuple[NewItem, tuple[str, str]]:
    data = json.dumps(record, sort_keys=True).encode()
    rkey = sha256_bytes(data)
    item = NewItem(rkey, "model_record", data, {
        "model_id": int(model_id), "fetched_at": time.time(),
        "source": f"{settings.api_base}/neural-networks/{model_id}"})
    return item, (record_ref(settings, model_id), rkey)


def model_record(model_id: int, settings: Settings, store: ContentStore,
                 api: PadApiClient | None = None, refresh: bool = False) -> dict[str, Any]:
    """The cached model record, or the server's (not cached: only ``resolve_model`` caches
    a record, together with weights that match it)."""
    cached = None if refresh else _cached_record(model_id, settings, store)
    return cached or _fetch_record(model_id, settings, api or PadApiClient(settings))


def resolve_model(model_id: int, settings: Settings | None = None, refresh: bool = False,
                  store: ContentStore | None = None) -> ResolvedModel:
    """Record plus verified local weights for a PAD model id.

    The record is cached in the same shard as the weights it vouches for, so a record
    whose SHA256 does not match its weights is never cached (and is asked for again).
    """
    settings = settings or Settings.from_env()
    store = store or ContentStore(settings.cache_dir)
    api = PadApiClient(settings)
    record = None if refresh else _cached_record(model_id, settings, store)
    fresh = record is None
    if record is None:
        record = _fetch_record(model_id, settings, api)
    url = str(record["weights_url"])
    want = str(record.get("SHA256") or "").lower()
    new_items: list[NewItem] = []
    refs: list[tuple[str, str]] = []
    if fresh:
        item, ref = _record_item(record, model_id, settings)
        new_items.append(item)
        refs.append(ref)
    if want and want in store.has([want]):
        if new_items:
            store.put(new_items, refs=refs)
        return ResolvedModel(record, _mirror(settings, store, want, url), want)
    if want:
        restored = _from_mirror(settings, want, url, model_id)
        if restored is not None:  # the store lost them (a lost shard), the copy is intact
            store.put([*new_items, restored], refs=refs)
            return ResolvedModel(record, _mirror(settings, store, want, url), want)
    if settings.offline:
        raise OfflineError(f"weights of model {model_id}", [url])
    data = api.weights_bytes(url)
    got = sha256_bytes(data)
    if not want:
        raise IntegrityError(f"model record {model_id} has no SHA256, so the weights from {url} "
                             f"(sha256 {got}) cannot be verified; refusing to use them")
    if got != want:
        raise IntegrityError(f"weights of model {model_id} from {url} have sha256 {got}, but "
                             f"the model record says {want}; not cached, not used")
    new_items.append(NewItem(got, "weights", data, {"model_id": int(model_id), "url": url,
                                                     "fetched_at": time.time()}))
    store.put(new_items, refs=refs)
    path = _artifact_path(settings, got, url)
    atomic_write(path, data)
    return ResolvedModel(record, path, got)
