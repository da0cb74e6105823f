"""URL policy: which URLs pad_assets will fetch, and their one canonical form.

Real registry files name images as ``https://pad.crc.nd.edu//var/www/html/...`` (double
slash), and the API gives bare paths (``/var/www/...`` or ``/images/padimages/...``). All
forms normalise to one URL on the configured PAD server, so the same image is never
fetched twice under two spellings. URLs on the canonical PAD host are rebased onto the
configured server (a mirror or the emulator); any other host or scheme is refused.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from ..errors import InvalidInputError

CANONICAL_PAD_HOSTS = frozenset({"pad.crc.nd.edu"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def validate_name(value: str, what: str = "dataset name") -> str:
    """Names become folder names and Dagster keys: letters, digits, ``_.-``; no traversal."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
        raise InvalidInputError(
            f"invalid {what} {value!r}: expected 1-128 characters of letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, with no '..' or path separators"
        )
    return value


def _collapse(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def _check_segments(path: str, original: str) -> None:
    if any(seg in ("..", ".") for seg in path.split("/")):
        raise InvalidInputError(f"URL {original!r} contains a '.' or '..' path segment")


def normalize_url(url: str, api_url: str, allowed_hosts: frozenset[str] | set[str] = frozenset()
                  ) -> str:
    """Canonical absolute URL for ``url`` (absolute, or a path on the PAD server).

    Raises ``InvalidInputError`` for other schemes, other hosts, or traversal segments.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"empty or non-string URL {url!r}: expected an http(s) URL or path")
    text = url.strip()
    base = urlsplit(api_url)
    if text.startswith("/") and not text.startswith("//"):
        path = _collapse(text)
        _check_segments(path, url)
        return urlunsplit((base.scheme, base.netloc, path, "", ""))
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(
            f"URL {url!r} has scheme {parts.scheme or '(none)'!r}: only http and https are fetched"
        )
    host = (parts.hostname or "").lower()
    path = _collapse(parts.path or "/")
    _check_segments(path, url)
    if host in CANONICAL_PAD_HOSTS:
        # The public PAD server as named in registry files: fetch it from the configured one.
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))
    allowed = {h.lower() for h in allowed_hosts} | {(base.hostname or "").lower()}
    if host not in allowed:
        raise InvalidInputError(
            f"URL {url!r} is on host {host!r}, which is not a configured PAD or registry host "
            f"(allowed: {sorted(allowed)})"
        )
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()
