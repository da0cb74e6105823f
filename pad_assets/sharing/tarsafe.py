"""Reading bundle tar files safely: headers first, then a counted extraction.

Why a module of its own: a tar is hostile input (path tricks, links, bombs); only
``bundle.json`` and ``shards/<prefix>/<name>.h5`` regular files within their limits are
ever written, and a bomb is refused before its data is decompressed.
"""

from __future__ import annotations

import io
import lzma
import shutil
import tarfile
import zlib
from pathlib import Path

from ..errors import IntegrityError, InvalidInputError
from ..maintenance import (
    human_bytes,
)
from . import limits
from .checks import _bundle_rel_ok


def _tar_target(tar_path: Path, m: tarfile.TarInfo, dest: Path) -> Path:
    """Where a member goes, or IntegrityError: only ``bundle.json`` and
    ``shards/<prefix>/<name>.h5`` regular files within their size limits."""
    if m.name == limits.BUNDLE_JSON:
        target, limit = dest / limits.BUNDLE_JSON, limits.MAX_BUNDLE_JSON_BYTES
    elif _bundle_rel_ok(m.name):
        target, limit = dest / m.name, limits.MAX_TAR_MEMBER_BYTES
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
    budget = archive * limits.MAX_STREAM_COMPRESSION + limits.COMPRESSION_EXEMPT_BYTES
    declared: dict[str, int] = {}
    total = 0
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            compressed = not isinstance(tar.fileobj, io.BufferedReader)
            for m in tar:
                if len(declared) >= limits.MAX_TAR_MEMBERS:
                    raise IntegrityError(f"bundle {tar_path} has more than {limits.MAX_TAR_MEMBERS} "
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
                        f"{archive}-byte compressed file (over {limits.MAX_STREAM_COMPRESSION}:1, "
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

