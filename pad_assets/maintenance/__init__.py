"""Cache maintenance: verify (and repair), reindex, garbage-collect and compact, stats.

Why a module of its own: the store (``pad_assets.store``) only ever *adds* immutable shards;
everything that removes, moves or re-derives cached data lives here, behind one lock, so the
rules that keep a shared cache safe are written down once:

- **Data moves before the index does, the index moves before a file goes.** Live content of
  a shard is rewritten into a new shard; one SQLite transaction then points every row at
  the new shard and *retires* the old one. A retired shard keeps its ``shards`` row (so
  ``ContentStore.recover`` in another process never re-indexes it as an orphan) and its
  file (so a reader that looked up the old path a moment ago can still open it) for a
  grace period; only then is the file deleted (or moved to ``quarantine/`` when it held
  corrupt data) and the row dropped. Readers that already hold the file open keep working
  after the unlink (POSIX).
- **Nothing unverified is copied.** Every payload that is rewritten is read back and its
  digest checked first; a shard that fails is left alone and reported.
- **Corruption is reported, then repaired from the source of truth:** raw images are
  re-fetched from their recorded ``source_url`` (md5 and sha256 checked); derived items are
  removed so the next ``apply_model`` / ``get_preprocessed_batch`` recomputes them.

The index columns are documented in ``pad_assets.store.index``; the table of retired shards
(shards whose content moved and whose file awaits deletion) and every other write
maintenance makes to the index are in ``pad_assets.store.index_admin``: no SQL here.
"""

from __future__ import annotations

from ..errors import CacheBusyError  # raised by maintenance_lock; importable here too
from .collection import (
    GcReport,
    gc,
)
from .common import (
    CONTENT_KEYED_LAYERS,
    DEFAULT_COMPACT_THRESHOLD,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_PARTIAL_MAX_AGE,
    DERIVED_LAYERS,
    EXAMPLES,
    KNOWN_LAYERS,
    MAX_BLOB_BYTES,
    MAX_REWRITE_BYTES,
    MERGE_MIN_SHARDS,
    RECENT_ORPHAN_SECONDS,
    RECORD_OVERHEAD,
    SHARD_OVERHEAD,
    SMALL_SHARD_BYTES,
    blob_row,
    expected_key,
    fsync_dir,
    human_bytes,
    is_hex_key,
    is_shard_name,
    key_problem,
    parse_duration,
    parse_size,
    payload_digest,
    read_blob_checked,
    retired_shards,
)
from .integrity import (
    NOTE_KINDS,
    PROBLEM_HELP,
    DatasetResolver,
    Finding,
    VerifyReport,
    verify,
)
from .locking import (
    maintenance_lock,
)
from .reindexing import (
    ReindexReport,
    reindex,
)
from .rewrite import (
    RewriteOutcome,
    clean_partials,
    purge_retired,
    rewrite_shards,
)
from .usage import (
    CacheStats,
    dataset_affinity,
    stats,
)

__all__ = [
    "CONTENT_KEYED_LAYERS",
    "CacheBusyError",
    "CacheStats",
    "DEFAULT_COMPACT_THRESHOLD",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_PARTIAL_MAX_AGE",
    "DERIVED_LAYERS",
    "DatasetResolver",
    "EXAMPLES",
    "Finding",
    "GcReport",
    "KNOWN_LAYERS",
    "MAX_BLOB_BYTES",
    "MAX_REWRITE_BYTES",
    "MERGE_MIN_SHARDS",
    "NOTE_KINDS",
    "PROBLEM_HELP",
    "RECENT_ORPHAN_SECONDS",
    "RECORD_OVERHEAD",
    "ReindexReport",
    "RewriteOutcome",
    "SHARD_OVERHEAD",
    "SMALL_SHARD_BYTES",
    "VerifyReport",
    "blob_row",
    "clean_partials",
    "dataset_affinity",
    "expected_key",
    "fsync_dir",
    "gc",
    "human_bytes",
    "is_hex_key",
    "is_shard_name",
    "key_problem",
    "maintenance_lock",
    "parse_duration",
    "parse_size",
    "payload_digest",
    "purge_retired",
    "read_blob_checked",
    "reindex",
    "retired_shards",
    "rewrite_shards",
    "stats",
    "verify",
]
