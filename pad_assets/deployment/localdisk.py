"""Refuse a cache folder on a network file system.

Why: the cache is an SQLite index plus HDF5 shard writers. Both rely on POSIX locks and
fsync semantics that NFS, SMB, Lustre, GPFS and FUSE object-store mounts do not give
reliably (SQLite's own documentation warns against it; HDF5 file locking fails or lies on
them). On a cluster each worker keeps its cache on local disk (node-local scratch) and
shares content only through the object-store tier, which needs no locks at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError

#: File-system types (``/proc/mounts``) that are network or cluster file systems.
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs", "beegfs",
    "ceph", "cephfs", "glusterfs", "ocfs2", "gfs2", "fuse.sshfs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.rclone", "fuse.glusterfs", "fuse.cephfs", "fuse.davfs",
    "fuse.juicefs", "fuse.goofys", "fuse.mountpoint-s3",
})


def mount_type(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """The file-system type of the mount holding ``path`` (None where /proc is absent)."""
    try:
        table = Path(mounts).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    p = Path(path).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    target = str(p.resolve())
    best, kind = "", None
    for line in table:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def require_local_disk(path: str | os.PathLike[str], what: str = "cache folder",
                       mounts: str = "/proc/mounts") -> None:
    """Raise ``InvalidInputError`` when ``path`` is on a network file system."""
    kind = mount_type(path, mounts)
    if kind in NETWORK_FS_TYPES:
        raise InvalidInputError(
            f"{what} {path} is on a {kind} network file system; expected a local disk (the "
            "SQLite index and HDF5 writers are unsafe there). Give each worker a node-local "
            "PAD_CACHE_DIR and share through the tier (PAD_TIER_URL=s3://...).")


__all__ = ["NETWORK_FS_TYPES", "mount_type", "require_local_disk"]
