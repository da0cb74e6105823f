"""The PAD tool's NN preprocessing, written literally, as the reference tests compare with.

pad-analytics' ``nn_predict`` crops ``(71, 359, 707, 849)`` and resizes to 454 x 454 with
Pillow's BICUBIC, after switching Pillow's truncated-image tolerance on for the whole
process. One copy here, so every parity test compares with the same lines.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile


def pad_tool_nn(data: bytes, tolerant: bool = False) -> np.ndarray:
    """What ``nn_predict`` does to PNG ``data`` (``tolerant``: its global tolerance switch)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
    try:
        img = Image.open(io.BytesIO(data))
        img = img.crop((71, 359, 71 + 636, 359 + 490))
        img = img.resize((454, 454), Image.BICUBIC)
        return np.asarray(img)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
