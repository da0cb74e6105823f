"""Importing a dataset bundle: ``import_bundle``.

Why a module of its own: a bundle is verified completely (listing, sha256 of every file,
shards, records, keys) before anything is indexed; a bundle that fails anything imports
nothing.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, InvalidInputError
from ..maintenance import (
    human_bytes,
    is_hex_key,
    maintenance_lock,
)
from ..sources.urls import validate_name
from ..store import ContentStore
from ..store import shards as shard_io
from ..store.fs import file_sha256
from . import limits
from .checks import _bundle_rel_ok, _check_items, _inspect_shard, _Inspected, _load_json
from .ingest import _ignored_lines, _move_in_and_index, _payload_reader, _rewrite_into
from .proposals import vet
from .tarsafe import _extract_tar


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
    """Verify the bundle in ``bdir`` completely (listing, files, shards, records, keys),
    then write and index it in one go; anything wrong refuses the whole bundle."""
    dataset, files = _read_bundle_json(bdir, shown)
    present = _verified_files(bdir, shown, files)
    inspected = _verified_shards(store, present, dataset, shown)
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


def _read_bundle_json(bdir: Path, shown: str) -> tuple[str, list[Any]]:
    """The bundle's own description, read under a size limit (it comes from someone else)
    and checked for format, version and a valid dataset name. Returns (dataset, files)."""
    jpath = bdir / limits.BUNDLE_JSON
    if not jpath.is_file():
        raise IntegrityError(f"bundle {shown} has no {limits.BUNDLE_JSON}; expected a directory or tar "
                             "written by `pad-assets cache export`")
    size = jpath.stat().st_size
    if size > limits.MAX_BUNDLE_JSON_BYTES:
        raise IntegrityError(f"bundle {shown}: {limits.BUNDLE_JSON} is {size} bytes, over the limit "
                             f"of {limits.MAX_BUNDLE_JSON_BYTES}; not read")
    with open(jpath, "rb") as fh:
        manifest = _load_json(fh.read(limits.MAX_BUNDLE_JSON_BYTES + 1),
                              f"bundle {shown}: {limits.BUNDLE_JSON}")
    if manifest.get("format") != limits.BUNDLE_FORMAT or manifest.get("version") != limits.FORMAT_VERSION:
        raise IntegrityError(f"bundle {shown}: format {manifest.get('format')!r} version "
                             f"{manifest.get('version')!r}, expected {limits.BUNDLE_FORMAT!r} "
                             f"version {limits.FORMAT_VERSION}")
    try:
        dataset = validate_name(manifest.get("dataset"))  # type: ignore[arg-type]
    except InvalidInputError as exc:
        raise IntegrityError(f"bundle {shown}: {exc}") from exc
    files = manifest.get("files")
    if not isinstance(files, list):
        raise IntegrityError(f"bundle {shown}: 'files' is not a list")
    if len(files) > limits.MAX_TAR_MEMBERS:
        raise IntegrityError(f"bundle {shown}: {limits.BUNDLE_JSON} lists {len(files)} files, over "
                             f"the limit of {limits.MAX_TAR_MEMBERS}")
    return dataset, files


def _verified_files(bdir: Path, shown: str, files: list[Any]) -> dict[str, Path]:
    """Match the files on disk against the listing: every listed file present, of its
    declared size, under the size limit and with its sha256; nothing unlisted and no
    symbolic links. Returns shard name -> path; any problem refuses the bundle."""
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
    present: dict[str, Path] = {}
    sdir = bdir / "shards"
    if sdir.is_dir():
        for n, p in enumerate(sdir.rglob("*")):
            if n > 2 * limits.MAX_TAR_MEMBERS:
                raise IntegrityError(f"bundle {shown}: more than {limits.MAX_TAR_MEMBERS} files under "
                                     "shards/; refused")
            if p.is_file() or p.is_symlink():
                rel = p.relative_to(bdir).as_posix()
                name = _bundle_rel_ok(rel)
                if name is None or name not in listed:
                    problems.append(f"file {rel} is not listed in {limits.BUNDLE_JSON}")
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
            problems.append(f"file {rel} has {actual} bytes, {limits.BUNDLE_JSON} declares "
                            f"{sizes[name]}")
            continue
        if actual > limits.MAX_TAR_MEMBER_BYTES:
            problems.append(f"file {rel} has {actual} bytes, over the limit of "
                            f"{limits.MAX_TAR_MEMBER_BYTES}")
            continue
        got = file_sha256(p)
        if got != sha:
            problems.append(f"file {rel} has sha256 {got}, {limits.BUNDLE_JSON} says {sha}")
    _refuse(problems, shown)
    return present


def _verified_shards(store: ContentStore, present: dict[str, Path], dataset: str,
                     shown: str) -> list[_Inspected]:
    """Open every shard and check its records and payloads: cards only of the bundle's
    dataset, items whose keys match their content (payloads already cached count).
    Returns the inspected shards; any problem refuses the bundle."""
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
    _refuse(problems, shown)
    return inspected


def _refuse(problems: list[str], shown: str) -> None:
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise IntegrityError(f"bundle {shown} refused, nothing was imported: "
                             + "; ".join(problems[:10]) + more)

