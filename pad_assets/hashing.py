"""Content keys: the Merkle chain that makes every cache layer content-addressed.

raw key          = sha256(image bytes)
preprocessed key = H("preprocessed", raw key, pipeline cache key)
model-ready key  = H("tensor", preprocessed key, tensor spec)
prediction key   = H("prediction", model-ready key, model signature)

A change anywhere up the chain changes every key below it and nothing else. Keys are
hex sha256 strings, so they are safe as file and HDF5 names and identical on every machine.
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


def chain_key(kind: str, *parts: Any) -> str:
    """Hash of a layer name and its parents' keys/parameters (a link of the chain)."""
    return sha256_bytes(canonical_json([kind, *parts]).encode("utf-8"))


def chain_keys(kind: str, firsts: list[str], *rest: Any) -> list[str]:
    """``[chain_key(kind, f, *rest) for f in firsts]``, byte-identical, but the constant
    tail is serialised once per batch instead of once per card (a warm lookup of 500
    cards computes 1,500 keys)."""
    tail = canonical_json(list(rest))[1:-1]
    head = canonical_json([kind])[:-1] + ","
    suffix = ("," + tail if tail else "") + "]"
    return [sha256_bytes((head + json.dumps(f) + suffix).encode("utf-8")) for f in firsts]


def preprocessed_key(raw_key: str, pipeline_key: str) -> str:
    return chain_key("preprocessed", raw_key, pipeline_key)


def tensor_key(preprocessed_key_: str, tensor_spec: dict[str, Any]) -> str:
    return chain_key("tensor", preprocessed_key_, tensor_spec)


def prediction_key(tensor_key_: str, model_signature: str) -> str:
    return chain_key("prediction", tensor_key_, model_signature)


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
