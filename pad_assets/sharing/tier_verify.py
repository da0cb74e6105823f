"""``verify_tier``: check a remote shard tier in place, as ``cache verify`` checks a cache.

Why a module of its own: a tier written by many machines at once must be checkable on its
own, without trusting any writer: every published shard's bytes against its entry objects
(sha256, size), every payload digest, record and key inside it. Shard files without an
entry object are not problems: they are pushes in progress, or the leftovers of a killed
push that no reader will ever take (they are listed, and a later push of the same shard
publishes them).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IntegrityError
from .checks import _check_items, _inspect_shard
from .remote import _read_remote_index, _remote, _remote_files, remote_sha256


@dataclass
class TierVerifyReport:
    remote: str
    shards: int = 0
    items: int = 0
    unpublished: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}

    def __str__(self) -> str:
        head = (f"tier {self.remote}: {self.shards} published shards, {self.items} items, "
                f"{len(self.unpublished)} unpublished files: "
                + ("clean" if self.ok else f"{len(self.problems)} problems")
                + f" [{self.seconds:.1f} s]")
        return "\n".join([head] + [f"  {p}" for p in self.problems[:50]])


def verify_tier(remote_url: str) -> TierVerifyReport:
    """Read every published shard of a tier back and check it completely (see module doc)."""
    t0 = time.time()
    fs, root = _remote(remote_url)
    rep = TierVerifyReport(remote_url)
    try:
        entries = _read_remote_index(fs, root, remote_url)["shards"]
    except IntegrityError as exc:
        rep.problems.append(str(exc))
        return rep
    files = _remote_files(fs, root)
    rep.unpublished = sorted(set(files) - set(entries))
    with tempfile.TemporaryDirectory(prefix="pad-tier-verify-") as tmp:
        for name, e in sorted(entries.items()):
            rep.shards += 1
            if e.get("conflict"):
                rep.problems.append(f"shard {name}: {e['conflict']}")
                continue
            if name not in files:
                rep.problems.append(f"shard {name}: published but its file {e.get('path')} "
                                    "is missing")
                continue
            sha, size = remote_sha256(fs, files[name])
            if (e.get("sha256") not in (None, sha)) or (e.get("bytes") not in (None, size)):
                rep.problems.append(f"shard {name}: {size} bytes with sha256 {sha}, its entry "
                                    f"says {e.get('bytes')} bytes with {e.get('sha256')}")
                continue
            local = Path(tmp) / f"{name}.h5"
            fs.get_file(files[name], str(local))
            insp = _inspect_shard(name, local)
            problems = insp.problems + _check_items([insp], set(), require_payloads=False)
            rep.problems += problems
            rep.items += sum(1 for r in insp.records if r["type"] == "item")
            local.unlink()
    rep.seconds = time.time() - t0
    return rep


__all__ = ["TierVerifyReport", "verify_tier"]
