"""Digests: sha256/md5 of bytes, canonical JSON, arrays and code.

The primitives under the content keys; which digest keys which item, and how the chain of
keys is derived and verified, is ``pad_assets.keys``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_bytes(data: bytes | memoryview) -> str:
    return hashlib.md5(data).hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal parameters hash equally.

    Tuples become lists and NumPy scalars become Python numbers; anything else that JSON
    cannot express is refused rather than stringified (a repr can hide a difference).
    """

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        raise TypeError(
            f"cannot make a cache key from a parameter of type {type(obj).__name__}: "
            "expected JSON-like values (str, int, float, bool, None, list, dict)"
        )

    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


def array_digest(array: np.ndarray) -> str:
    """sha256 over dtype, shape and C-ordered bytes: equal arrays, equal digests."""
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def code_digest(source: str) -> str:
    """sha256 of Python source as code: docstrings, comments and layout do not count.

    For caches of what code *produces* (the demo models): a hand-kept version string is
    forgotten the day the code changes, a digest of the text retrains on every typo fix.
    The digest is taken over the parsed tree without docstrings, so only an edit that can
    change behaviour changes it.
    """
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return sha256_bytes(ast.dump(tree, include_attributes=False).encode())
