"""Formats and resource limits of bundles and remotes.

Why a module of its own: every part of sharing checks against the same limits, and a
deployment with unusual models raises them here (``pad_assets.sharing.limits.X = ...``);
the other modules read them at call time, so a change takes effect everywhere.
"""

from __future__ import annotations

BUNDLE_FORMAT = "pad_assets.bundle"
REMOTE_FORMAT = "pad_assets.remote"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
#: The legacy single index of a remote (read, never written: two machines rewriting one
#: file lose each other's entries).
REMOTE_INDEX = "index.json"
#: One immutable entry object per published shard, under this folder of a remote.
ENTRY_DIR = "index"
ENTRY_FORMAT = "pad_assets.remote-entry"
#: Payload bytes per bundle shard (keeps each file a manageable unit to copy and check).
BUNDLE_SHARD_BYTES = 512 << 20
MAX_JSON_BYTES = 256 << 20
# Resource limits of imports and pulls, checked while streaming and before anything is
# written or read whole (issue 12, defect 5). Module attributes, so a deployment with
# unusual models can raise them.
#: bundle.json lists one entry per shard (~200 bytes each): 16 MiB is ~80,000 shards.
MAX_BUNDLE_JSON_BYTES = 16 << 20
#: Members of a bundle tar / shard files of a bundle directory (a bundle of 10,000 shards
#: of 512 MiB would be 5 TB).
MAX_TAR_MEMBERS = 10_000
#: One shard file (a tar member, a bundle file, a pulled shard): 512 MiB of payloads plus
#: one oversized item and its records, with room to spare.
MAX_TAR_MEMBER_BYTES = 4 << 30
#: One item's payload (PAD weights are a few MB, images and tensors far less).
MAX_IMPORT_ITEM_BYTES = 1 << 30
#: Shards are written uncompressed, so a payload that declares many times the bytes it
#: stores is a decompression bomb; refused unread. Small payloads are exempt.
MAX_ITEM_COMPRESSION = 16
COMPRESSION_EXEMPT_BYTES = 1 << 20
#: A compressed bundle (``.tar.gz`` ...) may not declare more than this many times its own
#: size (exports are plain tar; gzip of JSON records and images stays far below).
MAX_STREAM_COMPRESSION = 200
LAYER_ALIASES = {"raw": "raw", "preprocessed": "preprocessed", "tensor": "tensor",
                 "tensors": "tensor", "prediction": "prediction", "predictions": "prediction"}
DEFAULT_LAYERS = ("raw", "tensors", "predictions")
