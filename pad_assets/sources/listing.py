"""Which registry a cached item came from, and which datasets a registry holds.

Cache refs name a registry by its *identity*, not its URL: the scheme, host and path
without the port (``http://127.0.0.1/registry/datasets`` for an emulator on any port), or
the resolved folder of a local registry. So a manifest or model record cached while an
emulator ran on port A is found when the next one runs on port B, and offline work on a
warm cache never depends on which port served it last.

The dataset listing comes from the registry's folders (a local registry: its sub-folders)
or, for a URL registry, from its catalog (``docs/api/catalog.json`` beside the
``datasets`` folder, as the real registry publishes it; ``api/catalog.json`` inside the
folder as a fallback). Each listing is cached, and offline the last one is served.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from ..errors import FetchError, ManifestError, NotFoundError, OfflineError
from ..hashing import sha256_bytes
from ..settings import Settings
from ..store import refs as refnames
from .http import HttpClient

LISTING_COLUMNS = ["name", "version", "license", "records", "description", "source"]
LISTING_MAX_BYTES = 16 * 1024 * 1024


def identity(location: str) -> str:
    """A URL or folder without what changes between runs of the same registry (the port).

    ``http://127.0.0.1:8765/registry/datasets`` -> ``http://127.0.0.1/registry/datasets``;
    ``~/reg`` -> ``file:/home/me/reg``.
    """
    text = location.rstrip("/")
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        return urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), "", ""))
    return "file:" + str(Path(text).expanduser().resolve())


def registry_identity(settings: Settings) -> str:
    return identity(settings.registry_url)


def manifest_ref(settings: Settings, dataset: str) -> str:
    """The cache ref of a dataset's manifest: registry identity (no port) + dataset name."""
    return refnames.manifest(registry_identity(settings), dataset)


def _listing_ref(settings: Settings) -> str:
    return refnames.registry_listing(registry_identity(settings))


def catalog_urls(registry_url: str) -> list[str]:
    """Where a URL registry's catalog may be, most specific first."""
    base = registry_url.rstrip("/")
    parent = base.rsplit("/", 1)[0]
    return [f"{parent}/docs/api/catalog.json", f"{base}/api/catalog.json"]


def _folder_listing(folder: Path) -> list[dict[str, Any]]:
    if not folder.is_dir():
        raise ManifestError(f"registry folder {folder} does not exist; expected a folder with "
                            "one sub-folder per dataset (PAD_REGISTRY_URL)")
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        csvs = [p.name for p in sub.glob("*.csv")]
        crois = sub / "croissant.jsonld"
        if not csvs and not crois.is_file():
            continue
        entry: dict[str, Any] = {"name": sub.name, "source": str(sub)}
        if crois.is_file():
            try:
                doc = json.loads(crois.read_bytes())
            except ValueError:
                doc = {}
            if isinstance(doc, dict):
                entry.update(version=doc.get("version"), license=doc.get("license"),
                             description=doc.get("description"),
                             records=doc.get("recordCount"))
        entry.setdefault("records", None)
        out.append(entry)
    return out


def _catalog_listing(doc: Any, url: str) -> list[dict[str, Any]]:
    items = doc.get("datasets") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ManifestError(f"{url}: expected a JSON list of datasets (or {{'datasets': "
                            f"[...]}}), got {type(doc).__name__}")
    out = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            raise ManifestError(f"{url}: every catalog entry needs a 'name'; got {str(it)[:80]}")
        out.append({"name": it["name"], "version": it.get("version"),
                    "license": it.get("license"), "records": it.get("recordCount"),
                    "description": it.get("description"), "source": url})
    return out


def fetch_listing(settings: Settings, http: HttpClient) -> tuple[list[dict[str, Any]], str]:
    """(entries, where from) read from the registry itself (network for a URL registry)."""
    base = settings.registry_url
    if not base.startswith(("http://", "https://")):
        return _folder_listing(Path(base).expanduser()), str(Path(base).expanduser())
    tried = []
    for url in catalog_urls(base):
        try:
            data = http.get_bytes(url, LISTING_MAX_BYTES, what="registry catalog")
        except NotFoundError:
            tried.append(url)
            continue
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ManifestError(f"{url}: the registry catalog is not JSON ({exc})") from exc
        return _catalog_listing(doc, url), url
    raise FetchError(tried[-1], 404, f"the registry at {base} publishes no catalog (tried "
                     f"{', '.join(tried)})")


def list_datasets(settings: Settings, http: HttpClient, store: Any,
                  refresh: bool = True) -> pd.DataFrame:
    """Datasets of the configured registry: fetched and cached, or the cached listing.

    Offline (or ``refresh=False`` with a cached listing) the last listing of this registry
    is served, else the newest listing of any registry; with none, ``OfflineError``.
    """
    ref = _listing_ref(settings)
    local = not settings.registry_url.startswith(("http://", "https://"))
    if (settings.offline and not local) or (not refresh and store.ref(ref)):
        key = store.ref(ref)
        if key is None:
            rows = store.index.refs_newest_first(refnames.REGISTRY_LISTING)
            if not rows:
                raise OfflineError("dataset listing", [f"catalog of {settings.registry_url}"])
            key = rows[0][1]
        doc = json.loads(store.get(key))
        return _frame(doc["entries"])
    entries, where = fetch_listing(settings, http)
    from ..store import NewItem

    data = json.dumps({"registry": registry_identity(settings), "from": where,
                       "entries": entries}, sort_keys=True).encode()
    key = sha256_bytes(data)
    store.put([NewItem(key, "manifest", data, {"kind": "registry-listing", "source": where,
                                               "fetched_at": time.time(),
                                               "datasets": len(entries)})], refs=[(ref, key)])
    return _frame(entries)


def _frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(entries, columns=LISTING_COLUMNS)
    return df.astype(object).where(df.notna(), None)
