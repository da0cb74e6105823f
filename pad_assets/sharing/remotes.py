"""Named remotes (``pad-assets remote add lab s3://...``) and ``cache status --remote``.

Like ``dvc remote`` and ``dvc status -c``: a remote is a name for an fsspec URL, kept in a
small JSON file in the cache directory (``remotes.json``, next to the shards it
describes), one of them the default for ``cache push``/``pull``/``status``. The transfer
itself is ``pad_assets.sharing`` (verified push and pull); this module only names
locations and compares what each side holds, shard by shard, from the local index and the
remote's ``index.json`` and file listing (no payload is read).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..maintenance.common import human_bytes, retired_shards
from ..store import ContentStore
from ..store.fs import atomic_write_json

CONFIG_NAME = "remotes.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def config_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / CONFIG_NAME


def load_config(cache_dir: str | Path) -> dict[str, Any]:
    """``{"default": name | None, "remotes": {name: {"url": url}}}`` (empty if no file)."""
    path = config_path(cache_dir)
    if not path.is_file():
        return {"default": None, "remotes": {}}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable remotes file ({exc}); expected JSON "
                                "written by `pad-assets remote add`") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("remotes"), dict):
        raise InvalidInputError(f"{path}: expected an object with a 'remotes' mapping")
    cfg.setdefault("default", None)
    return cfg


def _save(cache_dir: str | Path, cfg: dict[str, Any]) -> None:
    path = config_path(cache_dir)
    atomic_write_json(path, cfg, indent=2)


def _check_url(url: str) -> str:
    import fsspec
    from fsspec.registry import known_implementations

    url = str(url).strip()
    if not url:
        raise InvalidInputError("remote URL '': expected an fsspec URL (s3://bucket/pad, "
                                "file:///mnt/lab/pad) or a directory path")
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol is not None and protocol not in known_implementations \
            and protocol not in fsspec.available_protocols():
        raise InvalidInputError(f"remote URL {url!r}: unknown protocol {protocol!r}; expected "
                                "one fsspec knows (s3, gs, az, file, sftp, ...) or a path")
    if protocol is None:
        url = str(Path(url).expanduser().resolve())
    return url


def add_remote(cache_dir: str | Path, name: str, url: str, default: bool = False,
               force: bool = False) -> dict[str, Any]:
    """Name ``url`` ``name``; the first remote (or ``default=True``) becomes the default."""
    if not _NAME.match(name or ""):
        raise InvalidInputError(f"remote name {name!r}: expected letters, digits, '_', '.' or "
                                "'-' (e.g. lab)")
    cfg = load_config(cache_dir)
    if name in cfg["remotes"] and not force:
        raise InvalidInputError(f"remote {name!r} exists ({cfg['remotes'][name]['url']}); "
                                "use --force to change its URL")
    cfg["remotes"][name] = {"url": _check_url(url)}
    if default or not cfg.get("default"):
        cfg["default"] = name
    _save(cache_dir, cfg)
    return cfg


def _require_remote(cfg: dict[str, Any], name: str) -> None:
    if name not in cfg["remotes"]:
        raise InvalidInputError(f"no remote named {name!r}; expected one of "
                                f"{sorted(cfg['remotes']) or '(none configured)'}")


def remove_remote(cache_dir: str | Path, name: str) -> dict[str, Any]:
    cfg = load_config(cache_dir)
    _require_remote(cfg, name)
    del cfg["remotes"][name]
    if cfg.get("default") == name:
        cfg["default"] = None
    _save(cache_dir, cfg)
    return cfg


def set_default(cache_dir: str | Path, name: str) -> dict[str, Any]:
    cfg = load_config(cache_dir)
    _require_remote(cfg, name)
    cfg["default"] = name
    _save(cache_dir, cfg)
    return cfg


def resolve_remote(cache_dir: str | Path, name_or_url: str | None) -> tuple[str, str]:
    """(label, URL) for a remote name, a URL/path, or None (the default remote)."""
    cfg = load_config(cache_dir)
    if name_or_url is None:
        name = cfg.get("default")
        if not name:
            raise InvalidInputError(
                "no remote given and no default remote; expected a remote name or URL, or "
                "run `pad-assets remote add NAME URL --default` first")
        return name, cfg["remotes"][name]["url"]
    if name_or_url in cfg["remotes"]:
        return name_or_url, cfg["remotes"][name_or_url]["url"]
    if _NAME.match(name_or_url) and "/" not in name_or_url and not Path(name_or_url).exists():
        raise InvalidInputError(f"no remote named {name_or_url!r}; expected one of "
                                f"{sorted(cfg['remotes']) or '(none configured)'} or a URL "
                                "(s3://..., file:///...) or a directory path")
    return name_or_url, name_or_url


@dataclass
class RemoteStatus:
    """Shards the remote lacks and shards it has that this cache lacks."""

    remote: str
    url: str
    remote_lacks: list[str] = field(default_factory=list)
    we_lack: list[str] = field(default_factory=list)
    in_both: int = 0
    remote_lacks_bytes: int = 0
    we_lack_bytes: int = 0
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def in_sync(self) -> bool:
        return not self.remote_lacks and not self.we_lack

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["in_sync"] = self.in_sync
        return d

    def __str__(self) -> str:
        head = f"remote {self.remote} ({self.url}):"
        if self.in_sync:
            return f"{head} in sync ({self.in_both} shards on both sides)"
        lines = [head,
                 f"  remote lacks {len(self.remote_lacks)} shards "
                 f"({human_bytes(self.remote_lacks_bytes)}): `pad-assets cache push "
                 f"{self.remote}` sends them",
                 f"  we lack {len(self.we_lack)} shards ({human_bytes(self.we_lack_bytes)}): "
                 f"`pad-assets cache pull {self.remote}` fetches them",
                 f"  {self.in_both} shards on both sides"]
        for ds, v in sorted(self.datasets.items()):
            lines.append(f"  {ds}: remote lacks {v['remote_lacks']}, we lack {v['we_lack']}")
        return "\n".join(lines)


def remote_status(store: ContentStore, url: str, label: str | None = None) -> RemoteStatus:
    """Compare shard sets (the unit push and pull move). A shard this cache rewrote in
    ``gc`` counts as new until pushed, as a pull would find its content already here."""
    from ..maintenance.usage import dataset_affinity
    from .remote import _read_remote_index, _remote, _remote_files

    fs, root = _remote(url)
    there = _remote_files(fs, root)
    idx = _read_remote_index(fs, root, url)
    entries: dict[str, Any] = idx.get("shards") or {}
    retired = retired_shards(store.index)
    local = {s: p for s, p in store.index.shard_paths().items() if s not in retired}
    rep = RemoteStatus(label or url, url)
    affinity = dataset_affinity(store)
    per: dict[str, dict[str, int]] = defaultdict(lambda: {"remote_lacks": 0, "we_lack": 0})
    for name, rel in sorted(local.items()):
        if name in there:
            rep.in_both += 1
            continue
        rep.remote_lacks.append(name)
        path = store.root / rel
        rep.remote_lacks_bytes += path.stat().st_size if path.exists() else 0
        for ds in affinity.get(name, ()):
            per[ds]["remote_lacks"] += 1
    for name in sorted(set(there) - set(local)):
        rep.we_lack.append(name)
        e = entries.get(name) or {}
        rep.we_lack_bytes += int(e.get("bytes") or 0)
        for ds in e.get("datasets", []):
            per[ds]["we_lack"] += 1
    rep.datasets = dict(per)
    return rep


__all__ = ["RemoteStatus", "add_remote", "config_path", "load_config", "remote_status",
           "remove_remote", "resolve_remote", "set_default"]
