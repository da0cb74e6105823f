"""The PAD neural-network preprocessing: Pillow crop, then Pillow bicubic resize.

The PAD TF Lite models were trained on ``img.crop((71, 359, 71 + 636, 359 + 490))`` followed
by ``img.resize((454, 454), Image.BICUBIC)`` (``nn_predict`` in the PAD tool). Pillow's
resize is antialiased and OpenCV's is not, so the exact Pillow calls are kept: any other
resampler gives different inputs than the ones the weights saw.

The output is the uint8 ``(454, 454, 3)`` array that the tool casts to float32 just before
inference; storing it as uint8 is lossless and four times smaller, and the model-ready layer
does the cast (and the batch axis).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from .base import PreprocessingPipeline

__all__ = [
    "PAD_NN_CROP_BOX",
    "PAD_NN_SIZE",
    "RESAMPLE_FILTERS",
    "PADNeuralNetworkPipeline",
    "crop_and_resize",
    "validate_crop_box",
    "validate_resample",
    "validate_size",
]

#: ``(left, upper, right, lower)``: the 636 x 490 box over the lanes used by the PAD tool.
PAD_NN_CROP_BOX: Final = (71, 359, 71 + 636, 359 + 490)
#: ``(width, height)`` of the model input.
PAD_NN_SIZE: Final = (454, 454)

#: Resampling filters by the name used in parameters (and so in cache keys).
RESAMPLE_FILTERS: Final = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _int_tuple(value: Any, length: int, parameter: str, expected: str) -> tuple[int, ...]:
    """``value`` as a tuple of ``length`` Python ints, or a clear error naming the parameter."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise InvalidInputError(
            f"NN parameter {parameter!r} must be {length} integers ({expected}), got {value!r}"
        )
    items = list(value)
    if len(items) != length or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in items
    ):
        raise InvalidInputError(
            f"NN parameter {parameter!r} must be {length} integers ({expected}), got {value!r}"
        )
    return tuple(int(v) for v in items)


def validate_crop_box(crop_box: Any) -> tuple[int, int, int, int]:
    """A crop box as 4 ints with a positive area and a non-negative origin."""
    left, upper, right, lower = _int_tuple(crop_box, 4, "crop_box", "left, upper, right, lower")
    if left < 0 or upper < 0 or right <= left or lower <= upper:
        raise InvalidInputError(
            f"NN parameter 'crop_box' must satisfy 0 <= left < right and 0 <= upper < lower, "
            f"got {(left, upper, right, lower)}"
        )
    return left, upper, right, lower


def validate_size(size: Any) -> tuple[int, int]:
    """A target size as 2 positive ints (width, height)."""
    width, height = _int_tuple(size, 2, "size", "width, height")
    if width <= 0 or height <= 0:
        raise InvalidInputError(
            f"NN parameter 'size' must be two positive integers (width, height), "
            f"got {(width, height)}"
        )
    return width, height


def validate_resample(resample: Any) -> str:
    """A resampling filter name from ``RESAMPLE_FILTERS`` (names keep cache keys readable)."""
    if not isinstance(resample, str) or resample.lower() not in RESAMPLE_FILTERS:
        raise InvalidInputError(
            f"NN parameter 'resample' must be one of {sorted(RESAMPLE_FILTERS)}, got {resample!r}"
        )
    return resample.lower()


def crop_and_resize(
    image: Image.Image,
    crop_box: tuple[int, int, int, int],
    size: tuple[int, int],
    resample: str,
) -> np.ndarray:
    """Pillow crop then Pillow resize, refusing a box that leaves the image.

    Pillow would pad an outside box with black silently; on a card that is a wrong layout
    (or a wrong image), never a model input worth caching.
    """
    width, height = image.size
    left, upper, right, lower = crop_box
    if right > width or lower > height:
        raise InvalidInputError(
            f"NN parameter 'crop_box' {tuple(crop_box)} does not fit inside the image of "
            f"{width}x{height} (w x h); expected right <= {width} and lower <= {height}"
        )
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = image.crop(crop_box).resize(size, RESAMPLE_FILTERS[resample])
    return np.array(out, dtype=np.uint8)


class PADNeuralNetworkPipeline(PreprocessingPipeline):
    """The PAD TF Lite input of a card, as uint8 ``(height, width, 3)`` RGB.

    Defaults reproduce ``nn_predict`` bit for bit; the parameters exist so researchers can
    try other crops or sizes, each with its own cache key.
    """

    name = "pad_nn"
    code_version = "1"

    def __init__(
        self,
        crop_box: Sequence[int] = PAD_NN_CROP_BOX,
        size: Sequence[int] = PAD_NN_SIZE,
        resample: str = "bicubic",
    ) -> None:
        self.crop_box = validate_crop_box(crop_box)
        self.size = validate_size(size)
        self.resample = validate_resample(resample)

    def get_parameters(self) -> dict[str, Any]:
        return {
            "crop_box": list(self.crop_box),
            "size": list(self.size),
            "resample": self.resample,
        }

    def rows_needed(self) -> int | None:
        """The crop's lower edge: rows below it are never read (unless a subclass that
        changes ``process_image`` says otherwise by overriding this too)."""
        if type(self).process_image is not PADNeuralNetworkPipeline.process_image:
            return None
        return self.crop_box[3]

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        return crop_and_resize(raw_image, self.crop_box, self.size, self.resample)
