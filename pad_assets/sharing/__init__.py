"""Moving cached data between machines: dataset bundles and a remote shard tier.

Why a package of its own: a cache is shared between people, so everything that arrives from
elsewhere is *input*, and this is the one place that decides what may enter:

- **Bundles** (``export_bundle`` / ``import_bundle``) carry one dataset: its card
  memberships, raw images, chosen derived layers, manifest and (for predictions) the model
  records and weights, rewritten into fresh shards, plus ``bundle.json`` listing every file
  with its sha256. Import checks every file's sha256, every payload's digest, every
  record's form and every key against its content or recorded chain *before* anything is
  indexed; a bundle that fails anything imports nothing. Verified content is rewritten
  into new local shards (never copied byte for byte), so nothing but plain numeric arrays
  and JSON records ever reaches the cache, and nothing is ever unpickled.
- **Remotes** (``push`` / ``pull``, any fsspec URL: ``s3://bucket/prefix`` through s3fs,
  or a plain directory) hold shard files under their own immutable, content-unique names,
  and one immutable *entry object* per published shard (``index/<prefix>/<shard>.<digest>
  .json``: sha256, size, datasets). Push copies a shard (temporary name, then rename, on
  file systems; one whole-object PUT on object stores), reads the copy back and checks its
  sha256, and only then writes the entry: pulls take only shards with an entry, so a reader
  never sees a shard before its bytes are complete and verified. Nothing on a remote is
  ever rewritten, so any number of machines push at once without losing an entry (the old
  single ``index.json`` was last-writer-wins; it is still read, never written). Pull copies
  the published shards the local cache lacks, verifies them on arrival and indexes them.
  Both directions re-verify payload digests: a corrupt shard is never spread.

Refs (manifest, model record, Dagster asset) and card records (card -> raw key) are
pointers, not content: from a bundle or a remote they are *proposals* (``proposals.vet``),
taken only where this cache has none yet and only when they verify against content (a
card's image has its manifest's md5, a model record's SHA256 is weights that are present,
a manifest is for the dataset its ref names); every foreign timestamp is clamped to now,
so a clock set ahead never pins a pointer. What is not taken is reported.

Resource limits (member count, declared against actual sizes, compression ratio, size per
item, size of ``bundle.json``) are checked while streaming, before anything is written or
read whole.

Bundles and remotes are integrity-checked, not authenticated: a derived payload is trusted
to be what its producer computed (``pad-assets cache verify`` and re-computation are the
checks for that); import only from people and places you trust.

Layout: ``limits`` (formats, resource limits), ``selection`` (what belongs to a dataset),
``export`` (bundle writing), ``checks`` (foreign shards), ``tarsafe`` (bundle tars),
``ingest`` (verified content into the cache), ``bundle_import``, ``remote`` (fsspec access
to a tier) and ``tier`` (push / pull).
"""

from __future__ import annotations

from .bundle_import import ImportReport, import_bundle
from .export import BundleReport, export_bundle
from .limits import BUNDLE_FORMAT, FORMAT_VERSION, REMOTE_FORMAT
from .partials import clean_dead_partials
from .selection import parse_layers
from .tier import PullReport, PushReport, pull, push

__all__ = [
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "REMOTE_FORMAT",
    "BundleReport",
    "ImportReport",
    "PullReport",
    "PushReport",
    "clean_dead_partials",
    "export_bundle",
    "import_bundle",
    "parse_layers",
    "pull",
    "push",
]
