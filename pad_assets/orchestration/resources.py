"""Dagster resources: settings for the PAD services and the shared content store."""


import os
from typing import Any

import dagster as dg

from ..settings import Settings


class PadResource(dg.ConfigurableResource):
    """Where the cache lives and which PAD services to talk to (defaults: environment)."""

    cache_dir: str | None = None
    api_url: str | None = None
    registry_url: str | None = None
    offline: bool | None = None
    #: The shared shard tier (``s3://bucket/prefix`` or a folder; default ``$PAD_TIER_URL``):
    #: image steps pull the dataset's shards before a batch and push theirs after it.
    tier_url: str | None = None

    def tier(self) -> str | None:
        return self.tier_url or os.environ.get("PAD_TIER_URL") or None

    def settings(self) -> Settings:
        return Settings.from_env(cache_dir=self.cache_dir, api_url=self.api_url,
                                 registry_url=self.registry_url, offline=self.offline)

    def dataset(self, name: str) -> Any:
        """A ``CachedDataset`` over the same cache a notebook uses (no progress bars)."""
        from ..dataset import CachedDataset

        return CachedDataset(name, settings=self.settings(), progress=False)

    def store(self) -> Any:
        from ..store import ContentStore

        return ContentStore(self.settings().cache_dir)
