"""The ``PreprocessingPipeline`` interface: what a researcher subclasses to get caching.

A pipeline is a pure function of the image plus declared parameters. Its cache key covers
its name, its canonical parameters and its code version, so two pipelines that differ in
any of them never share a cache entry, and rerunning an unchanged pipeline computes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from ..hashing import canonical_json
from ..keys import pipeline_key
from .decode import DecodedImage, decode_image, decode_top_rows, use_pillow_block_cache


class PreprocessingPipeline(ABC):
    """Turns one decoded card image into one array.

    Subclasses set ``name`` and ``code_version`` (bump it whenever ``process_image`` changes
    behaviour: the key cannot see code), implement ``get_parameters`` and ``process_image``.
    ``process_image`` receives an RGB ``PIL.Image.Image``, decoded with the same
    truncated-image tolerance the PAD tool used.
    """

    name: str = "pipeline"
    code_version: str = "1"

    @abstractmethod
    def get_parameters(self) -> dict[str, Any]:
        """JSON-like parameters that fully determine the output (with name and code version)."""

    @abstractmethod
    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        """The preprocessed array of one image."""

    def get_cache_key(self) -> str:
        return pipeline_key(self.name, self.get_parameters(), self.code_version)

    def describe(self) -> dict[str, Any]:
        """What lineage records of this pipeline: enough to rebuild it."""
        return {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "code_version": self.code_version,
            "parameters": self.get_parameters(),
            "cache_key": self.get_cache_key(),
        }

    def rows_needed(self) -> int | None:
        """How many top rows of the image ``process_image`` reads; None: all of them.

        A pipeline that declares it gets an image of only those rows when the file is known
        to be complete (``run(..., truncated=False)``): PNG rows decode in order, so the
        rows below are never inflated. Declare it only if the output cannot depend on any
        lower row, nor on the image's height. The default is the whole image.
        """
        return None

    def run(self, data: bytes, source: str = "image", truncated: bool | None = None
            ) -> tuple[np.ndarray, bool]:
        """Decode bytes and process them; returns the array and the truncated flag.

        ``truncated`` is the raw layer's flag for these bytes when known (computed once, at
        download); False lets a pipeline with ``rows_needed`` decode only those rows.
        """
        use_pillow_block_cache()  # once per process: images reuse memory, same pixels
        rows = self.rows_needed() if truncated is False else None
        top = decode_top_rows(data, rows, source) if rows is not None else None
        if top is not None:
            try:
                return np.ascontiguousarray(np.asarray(self.process_image(top))), False
            except Exception:  # noqa: BLE001 - the whole image decides what the error says
                pass
        decoded: DecodedImage = decode_image(data, source)
        out = np.asarray(self.process_image(decoded.image))
        return np.ascontiguousarray(out), decoded.truncated

    def __repr__(self) -> str:
        return f"{type(self).__name__}({canonical_json(self.get_parameters())})"


class FunctionPipeline(PreprocessingPipeline):
    """Wraps a plain function ``fn(image, **parameters) -> np.ndarray`` as a pipeline.

    The function's qualified name is part of the key; ``code_version`` must be bumped by
    the caller when the function's body changes.
    """

    def __init__(
        self,
        fn: Callable[..., np.ndarray],
        name: str | None = None,
        code_version: str = "1",
        **parameters: Any,
    ) -> None:
        self._fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.code_version = code_version
        canonical_json(parameters)  # refuse non-JSON parameters now, not at key time
        self._parameters = dict(parameters)

    def get_parameters(self) -> dict[str, Any]:
        return dict(self._parameters)

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        return self._fn(raw_image, **self._parameters)
