"""URL policy: which URLs pad_assets will fetch, and their one canonical form.

Real registry files name images as ``https://pad.crc.nd.edu//var/www/html/...`` (double
slash), and the API gives bare paths (``/var/www/...`` or ``/images/padimages/...``). All
forms normalise to one URL on the configured PAD server, so the same image is never
fetched twice under two spellings. URLs on the canonical PAD host are rebased onto the
configured server (a mirror or the emulator); any other host or scheme is refused.
"""

from __future__ import annotations

import numbers
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


def card_id_of(value: object) -> int:
    """A card id from an integer (NumPy's too) or a decimal string; anything else
    (``'../x'``, ``1.5``) is refused.

    Card ids arrive as Dagster partition keys and CLI arguments, i.e. as text, and become
    parts of paths and queries: only non-negative 64-bit integers pass.
    """
    if isinstance(value, bool):
        raise InvalidInputError(f"card id {value!r}: expected a non-negative integer")
    # an int, a NumPy integer (a value of an id column), or the text of one
    if isinstance(value, numbers.Integral) or (
            isinstance(value, str) and re.fullmatch(r"\s*\d{1,18}\s*", value)):
        cid = int(value)
    else:
        raise InvalidInputError(
            f"card id {value!r}: expected a non-negative integer (a PAD card id such as 19208)")
    if not 0 <= cid < 2**63:
        raise InvalidInputError(f"card id {value!r}: expected a non-negative 64-bit integer")
    return cid


def _collapse(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def _check_segments(path: str, original: str) -> None:
    if any(seg in ("..", ".") for seg in path.split("/")):
        raise InvalidInputError(f"URL {original!r} contains a '.' or '..' path segment")


_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"URL {url!r} has an invalid port") from exc
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def normalize_url(url: str, api_url: str,
                  allowed_origins: frozenset[str] | set[str] = frozenset()) -> str:
    """Canonical absolute URL for ``url`` (absolute, or a path on the PAD server).

    Raises ``InvalidInputError`` for other schemes, other origins (scheme, host and port
    must equal the configured PAD server's or one of ``allowed_origins``, given as URLs),
    user info, backslashes or control characters (where URL parsers disagree, e.g.
    ``http://evil\\@127.0.0.1/``), and traversal segments.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"empty or non-string URL {url!r}: expected an http(s) URL or path")
    text = url.strip()
    if _UNSAFE.search(text):
        raise InvalidInputError(f"URL {url!r} contains a backslash or control character: "
                                "refused")
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
    if "@" in parts.netloc:
        raise InvalidInputError(f"URL {url!r} carries user info ('...@host'): refused")
    origin = origin_of(text)
    path = _collapse(parts.path or "/")
    _check_segments(path, url)
    if origin[1] in CANONICAL_PAD_HOSTS and origin[2] == _DEFAULT_PORTS[origin[0]]:
        # The public PAD server as named in registry files: fetch it from the configured one.
        return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))
    allowed = {origin_of(u) for u in allowed_origins} | {origin_of(api_url)}
    if origin not in allowed:
        shown = sorted(f"{s}://{h}:{p}" for s, h, p in allowed)
        raise InvalidInputError(
            f"URL {url!r} is on {origin[0]}://{origin[1]}:{origin[2]}, which is not a configured "
            f"PAD or registry host (allowed: {shown})"
        )
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

