"""Content-addressed cache: immutable HDF5 shards plus a rebuildable SQLite index."""

from .store import CardRecord, ContentStore, NewItem

__all__ = ["CardRecord", "ContentStore", "NewItem"]
