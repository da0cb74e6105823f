"""Push to and pull from a remote shard tier: ``push`` / ``pull``.

Why a module of its own: push copies the verified shards a remote lacks; pull copies the
shards this cache lacks, verifies each on arrival and indexes it. Both directions
re-verify payload digests, so a corrupt shard is never spread.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, InvalidInputError
from ..maintenance import (
    dataset_affinity,
    human_bytes,
    is_shard_name,
    maintenance_lock,
    retired_shards,
)
from ..sources.urls import validate_name
from ..store import ContentStore
from ..store import shards as shard_io
from ..store.fs import commit, file_sha256
from . import limits
from .checks import _check_items, _inspect_shard, _Inspected
from .ingest import _ignored_lines, _move_in_and_index, _payload_reader, _rewrite_into
from .partials import clean_dead_partials
from .proposals import vet
from .remote import (
    _is_local,
    _read_remote_index,
    _remote,
    _remote_files,
    _write_remote,
    publish_entry,
    remote_sha256,
)


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
    """Publish every indexed shard the remote lacks: verify it here, copy it, read the copy
    back and check its sha256 and size, and only then write its immutable entry object
    (``remote.publish_entry``), the one thing that makes a shard visible to pulls.

    Safe with any number of pushers at once, on any machines: nothing on the remote is ever
    rewritten (shards have content-unique names, entries are named by what they say), so
    no pusher can lose another's entry. Idempotent: a shard already published with these
    datasets is not copied again; a shard copied by a push killed before its entry is copied
    again and published. ``progress(done, total)`` is called after each shard (the CLI's bar).
    """
    t0 = time.time()
    fs, root = _remote(remote_url)
    rep = PushReport(remote_url)
    published = _read_remote_index(fs, root, remote_url)["shards"]  # malformed: refused here
    if _is_local(fs):
        clean_dead_partials(Path(root) / "tmp")  # of pushes killed mid-copy
    host = socket.gethostname()
    with maintenance_lock(store, exclusive=False, what="cache push"):
        retired = retired_shards(store.index)
        local = {s: p for s, p in store.index.shard_paths().items() if s not in retired}
        affinity = dataset_affinity(store)
        for done, (name, rel) in enumerate(sorted(local.items())):
            if progress is not None:
                progress(done, len(local))
            path = store.root / rel
            if not is_shard_name(name) or rel != shard_io.shard_relpath(name):
                rep.skipped.append(f"{name}: unexpected shard path {rel}")
                continue
            datasets = sorted(affinity.get(name, ()))
            nbytes = path.stat().st_size if path.exists() else 0
            old = published.get(name)
            if old is not None and old.get("sha256") and not old.get("conflict"):
                if old.get("bytes") != nbytes:
                    rep.skipped.append(f"{name}: the remote's copy has {old.get('bytes')} "
                                       f"bytes, this cache's {nbytes}; not pushed")
                    continue
                rep.already_there += 1
                if not set(datasets) <= set(old.get("datasets", [])):
                    publish_entry(fs, root, name, old["sha256"], nbytes, datasets, host)
                continue
            insp = _inspect_shard(name, path)
            if insp.problems:
                rep.skipped.append(f"{name}: {insp.problems[0]} (run `pad-assets cache verify "
                                   "--repair`)")
                continue
            sha = file_sha256(path)
            _write_remote(fs, root, rel, path)
            got, size = remote_sha256(fs, f"{root}/{rel}")
            if (got, size) != (sha, nbytes):
                raise IntegrityError(f"remote {remote_url}: the copy of shard {name} reads "
                                     f"back as {size} bytes with sha256 {got}, expected "
                                     f"{nbytes} bytes with {sha}; not published")
            publish_entry(fs, root, name, sha, nbytes, datasets, host)
            rep.pushed.append(name)
            rep.bytes += nbytes
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
    limit = limits.MAX_TAR_MEMBER_BYTES if declared is None else min(declared, limits.MAX_TAR_MEMBER_BYTES)
    h = hashlib.sha256()
    copied = 0
    with fs.open(src, "rb") as fin, open(tmp, "wb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            copied += len(chunk)
            if copied > limit:
                raise IntegrityError(
                    f"remote {url}: shard {name} is larger than "
                    + (f"the {declared} bytes its index entry declares" if declared is not None
                       and declared <= limits.MAX_TAR_MEMBER_BYTES else
                       f"the limit of {limits.MAX_TAR_MEMBER_BYTES} bytes") + "; not kept")
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
    names = _visible_shards(entries, files, dataset, remote_url, rep)
    with maintenance_lock(store, exclusive=False, what="cache pull"):
        local = set(store.index.shard_paths()) | set(store.shard_files())
        tmp_dir = store.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        arrived: list[_Inspected] = []
        try:
            # 1. copy and verify every missing shard (kept under tmp/ until vetted)
            _fetch_verified(fs, files, entries, sorted(names), local, tmp_dir, remote_url,
                            rep, progress, arrived)
            # 2. refs and cards are proposals, vetted together (a model record and its
            # weights may travel in different shards)
            vetting = vet(store, arrived, _payload_reader(store, arrived))
            rep.ignored = vetting.ignored
            vet_changed = {arrived[i].name for i in vetting.changed}
            # 3. index what brings something new: verbatim when vetting changed nothing,
            # else rewritten into a fresh local shard (the remote's file keeps its records)
            pulled_records = _index_arrived(store, arrived, vet_changed, rep)
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


def _visible_shards(entries: dict[str, Any], files: dict[str, Any], dataset: str | None,
                    remote_url: str, rep: PullReport) -> set[str]:
    """The remote shards a pull may take: those with both a file and an index entry,
    without a recorded conflict (reported as failed), and of ``dataset`` when given."""
    # a shard is visible once its entry object exists (written after its bytes were copied
    # and read back); a file without one is a push in progress, or a killed one's leftover
    names = set(files) & set(entries)
    for name in sorted(names):
        if entries[name].get("conflict"):
            rep.failed.append(f"{name}: {entries[name]['conflict']}")
            names.discard(name)
    if dataset is not None:
        names = {n for n in names if dataset in (entries.get(n) or {}).get("datasets", [])}
        if not names:
            known = sorted({d for e in entries.values() for d in e.get("datasets", [])})
            raise InvalidInputError(f"remote {remote_url} has no shards for dataset "
                                    f"{dataset!r}; datasets there: {known or '(none)'}")
    return names


def _fetch_verified(fs: Any, files: dict[str, Any], entries: dict[str, Any],
                    names: list[str], local: set[str], tmp_dir: Path, remote_url: str,
                    rep: PullReport, progress: Callable[[int, int], None] | None,
                    arrived: list[_Inspected]) -> None:
    """Copy each shard this cache lacks under ``tmp/`` and verify it there (sha256 against
    the remote index, payload digests, records, keys). A shard that fails is deleted and
    reported; the good ones are appended to ``arrived``, which the caller owns so that
    they are cleaned up whatever happens next."""
    for done, name in enumerate(names):
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


def _index_arrived(store: ContentStore, arrived: list[_Inspected], vet_changed: set[str],
                   rep: PullReport) -> list[dict[str, Any]]:
    """Index each arrived shard that brings something new: moved in verbatim when vetting
    left it as it was, else rewritten into a fresh local shard (the remote's file keeps
    its records). Returns the records indexed, for the missing-payload check."""
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
            commit(insp.path, final)
            store.index_shard_file(insp.name, rel)
            rep.bytes += final.stat().st_size
        rep.pulled.append(insp.name)
        pulled_records += insp.records
    return pulled_records

