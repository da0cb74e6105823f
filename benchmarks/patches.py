"""Proposed core changes, applied by monkeypatching so their effect can be measured here.

The benchmarks own no core code: a proposal lives here while it is measured, then moves to
the core and leaves this file. P1-P7 (bounded downloads, verify instead of decode, invoke
batch 4, record-only lookups, batched chain keys, fused input cast, hash once) were measured
this way on 2026-11-24 and are now in the core; RESULTS.md keeps their before/after figures.

P8 (build the layers with ``apply_model`` first in the Dagster step) was measured by B6 the
same way and is in the core too. ``ALL`` lists the open proposals that the cache scenarios
run as "patched"; it is empty, so they run the core "as is" only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

#: Open proposals measured as "patched" by the cache scenarios (B1-B4, B7).
ALL: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- registry
def in_core() -> list[str]:
    """Proposals of ``ALL`` the core already has (kept for the run's JSON record)."""
    return []


def effective(names: Sequence[str]) -> list[str]:
    """The proposals of ``names`` that would really be installed on this core."""
    core = set(in_core())
    return [n for n in names if n not in core]


@contextlib.contextmanager
def applied(names: Sequence[str]) -> Iterator[None]:
    """Install the named proposals for the block (none are open today)."""
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown patch(es) {unknown}; open proposals: {list(ALL) or 'none'}")
    yield


def apply(name: str) -> None:
    """Install one proposal for the rest of the process (the memory worker)."""
    if name not in ALL:
        raise SystemExit(f"unknown patch {name!r}; open proposals: {list(ALL) or 'none'}")
