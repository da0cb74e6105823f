"""The one place that reads the environment; everything else receives a ``Settings``.

Defaults point at the real PAD services; tests, the demo and benchmarks point the same
variables at the local emulator, so no code path knows which one it talks to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_CACHE_DIR = "~/.pad_cache"
DEFAULT_API_URL = "https://pad.crc.nd.edu"
DEFAULT_REGISTRY_URL = (
    "https://raw.githubusercontent.com/PaperAnalyticalDeviceND/pad_dataset_registry/main/datasets"
)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Where the cache lives, which servers to talk to, and whether talking is allowed.

    ``api_url`` is the PAD server root: the API hangs off ``/api/v2``, images and weights
    off the same host. ``registry_url`` is the folder that holds one sub-folder per dataset,
    either an http(s) URL or a local path.
    """

    cache_dir: Path = field(default_factory=lambda: Path(DEFAULT_CACHE_DIR).expanduser())
    api_url: str = DEFAULT_API_URL
    registry_url: str = DEFAULT_REGISTRY_URL
    offline: bool = False
    download_workers: int = 8
    http_timeout: float = 30.0
    http_retries: int = 4

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``PAD_*`` environment variables, then explicit overrides (not None)."""
        env = os.environ
        base = cls(
            cache_dir=Path(env.get("PAD_CACHE_DIR", DEFAULT_CACHE_DIR)).expanduser(),
            api_url=env.get("PAD_API_URL", DEFAULT_API_URL).rstrip("/"),
            registry_url=env.get("PAD_REGISTRY_URL", DEFAULT_REGISTRY_URL).rstrip("/"),
            offline=env.get("PAD_OFFLINE", "").strip().lower() in _TRUE,
            download_workers=int(env.get("PAD_DOWNLOAD_WORKERS", "8")),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "cache_dir" in clean:
            clean["cache_dir"] = Path(str(clean["cache_dir"])).expanduser()
        for name in ("api_url", "registry_url"):
            if name in clean:
                clean[name] = str(clean[name]).rstrip("/")
        return replace(base, **clean)  # type: ignore[arg-type]

    @property
    def api_base(self) -> str:
        """Root of the versioned REST API (``{api_url}/api/v2``)."""
        return f"{self.api_url}/api/v2"


def config_file_from_env() -> Path | None:
    """``$PAD_ASSETS_CONFIG``: the Dagster code location's config file, when one is set."""
    value = os.environ.get("PAD_ASSETS_CONFIG")
    return Path(value) if value else None


def dagster_ui_url() -> str:
    """``$PAD_DAGSTER_UI_URL``: where the Dagster UI is served, for links in reports."""
    return os.environ.get("PAD_DAGSTER_UI_URL", "").rstrip("/")
