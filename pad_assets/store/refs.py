"""Ref names: the mutable pointers of the cache, named in one place.

Items are immutable and content-keyed; a ref is a name that points at one of them and is
moved when its source says something new (newest wins). Names are paths whose last segment
is what the pointer is for, and whose middle says which server it came from, so a cache
filled from an emulator on one port still finds its manifests on another:

    manifest/<registry identity>/<dataset>       a dataset's manifest
    model-record/<API identity>/<model id>       a PAD model's record
    asset/<asset key>/<partition>                a Dagster asset partition's value
    asset-run/<asset key>/<partition>            the run that materialized it
    registry-listing/<registry identity>         the registry's list of datasets
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .index import Index

MANIFEST = "manifest/"
MODEL_RECORD = "model-record/"
ASSET = "asset/"
ASSET_RUN = "asset-run/"
REGISTRY_LISTING = "registry-listing/"


def manifest(registry_identity: str, dataset: str) -> str:
    return f"{MANIFEST}{registry_identity}/{dataset}"


def registry_listing(registry_identity: str) -> str:
    return f"{REGISTRY_LISTING}{registry_identity}"


def model_record(api_identity: str, model_id: int) -> str:
    return f"{MODEL_RECORD}{api_identity}/{int(model_id)}"


def asset(asset_key: str, partition: str) -> str:
    return f"{ASSET}{asset_key}/{partition}"


def asset_run(asset_key: str, partition: str) -> str:
    return f"{ASSET_RUN}{asset_key}/{partition}"


def last_segment(name: str) -> str:
    """What a ref is for: the dataset of a manifest ref, the model id of a record ref."""
    return name.rsplit("/", 1)[-1]


def newest_for(index: Index, prefix: str, last: str) -> list[tuple[str, str]]:
    """``(name, key)`` of the refs under ``prefix`` for ``last`` (any server), newest first:
    what an offline cache falls back to when the configured server changed."""
    return [(n, k) for n, k in index.refs_ending(prefix, last) if last_segment(n) == last]
