"""Typed errors: every failure names the input at fault and what was expected.

One hierarchy so callers (CLI, Dagster assets, notebooks) can catch ``PadAssetsError``
and still tell a network failure from a corrupt cache item or a bad manifest.
"""

from __future__ import annotations


class PadAssetsError(Exception):
    """Base class of every error raised on purpose by pad_assets."""


class InvalidInputError(PadAssetsError, ValueError):
    """An argument (dataset name, partition key, URL, parameter) is not of the expected form."""


class FetchError(PadAssetsError):
    """An HTTP request failed for good (after retries) or returned an unusable answer."""

    def __init__(self, url: str, status: int | None, reason: str):
        self.url = url
        self.status = status
        self.reason = reason
        where = f"HTTP {status}" if status is not None else "no HTTP status"
        super().__init__(f"GET {url} failed ({where}): {reason}")


class NotFoundError(FetchError):
    """The server answered 404 for a resource that was expected to exist."""


class OfflineError(PadAssetsError):
    """Offline mode is on and the work needs items that are not in the cache."""

    def __init__(self, what: str, missing: list[str]):
        self.missing = list(missing)
        shown = ", ".join(self.missing[:20])
        more = f" (+{len(self.missing) - 20} more)" if len(self.missing) > 20 else ""
        super().__init__(
            f"offline mode (PAD_OFFLINE=1 or offline=True) and {len(self.missing)} "
            f"item(s) needed for {what} are not cached: {shown}{more}. "
            "Run once online (or import a cache bundle) to fetch them."
        )


class ManifestError(PadAssetsError):
    """A dataset manifest (registry CSV or croissant) is malformed or missing."""


class UnknownDatasetError(ManifestError):
    """The registry has no dataset of that name."""


class IntegrityError(PadAssetsError):
    """Stored or downloaded bytes do not match their expected checksum."""


class CacheCorruptionError(IntegrityError):
    """A cache item failed its checksum on read; the item is reported, never returned."""


class CacheFullError(PadAssetsError, OSError):
    """The cache's disk is full (or would be): nothing was half-written, nothing indexed.

    Also an ``OSError`` (errno ENOSPC) so code that handles disk errors generically keeps
    working; the message names the cache, its size and what ``pad-assets cache gc`` frees.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.errno = 28  # ENOSPC
        self.strerror = message
        #: What failed, without the advice (for a caller that words the advice itself).
        self.detail = detail or message

    def __str__(self) -> str:
        return str(self.strerror)


class ModelError(PadAssetsError):
    """A model cannot be loaded, verified or run."""


class ImageDecodeError(PadAssetsError):
    """Image bytes cannot be decoded (even with truncated-image tolerance), or are hostile."""


class CacheBusyError(PadAssetsError):
    """A maintenance operation (gc, repair, reindex) holds the cache; try again shortly."""


class PreprocessingFailureWarning(UserWarning):
    """Some cards of a ``get_preprocessed_batch`` stream could not be preprocessed.

    A warning, not an exception: one smeared card must not stop a researcher's epoch over
    thousands. The cards and reasons are also kept in
    ``CachedDataset.preprocessing_failures`` for code that wants to act on them.
    """

