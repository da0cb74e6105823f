"""Facts every cache item's lineage records: library versions, host, time.

Read from package metadata, never by importing the libraries (``import pad_assets`` and
the warm cache path must not pay for TensorFlow).
"""

from __future__ import annotations

import functools
import platform
import socket
import time
from importlib import metadata
from typing import Any

_LIBRARIES = ("pad_assets", "numpy", "pillow", "h5py", "hdf5plugin", "opencv-python-headless",
              "pandas", "tensorflow", "ai-edge-litert", "onnxruntime", "torch", "dagster")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.lru_cache(maxsize=1)
def host_facts() -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform()}


def stamp(**extra: Any) -> dict[str, Any]:
    """What to attach to a newly computed item: when, where, with which libraries."""
    return {"created_at": time.time(), "libraries": library_versions(), **host_facts(), **extra}
