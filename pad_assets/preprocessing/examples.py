"""Worked examples of custom pipelines: how a researcher plugs in their own preprocessing.

A pipeline only has to say what it computes (``process_image``) and what that depends on
(``get_parameters``, ``name``, ``code_version``). Everything else -- decoding with the PAD
tool's truncated-image tolerance, cache keys, storing and reusing results, lineage -- comes
from ``PreprocessingPipeline``. Two pipelines that differ in any parameter or in their code
version get different keys, so experiments never overwrite each other's cached arrays.

The lightest way is a plain function wrapped in ``FunctionPipeline``::

    import numpy as np
    from PIL import Image
    from pad_assets.preprocessing import FunctionPipeline

    def lanes_grey(image: Image.Image, box: list[int], size: list[int]) -> np.ndarray:
        return np.asarray(image.crop(tuple(box)).convert("L").resize(tuple(size)))

    pipeline = FunctionPipeline(
        lanes_grey, name="lanes_grey", code_version="1",
        box=[71, 359, 707, 849], size=[227, 227],
    )
    array, truncated = pipeline.run(png_bytes)  # (227, 227) uint8, decode flag
    pipeline.get_cache_key()  # changes if box, size, name or code_version change

(bump ``code_version`` whenever the body of ``lanes_grey`` changes: a key cannot see code.)

When the preprocessing has structure worth naming, or builds on a built-in pipeline,
subclass instead; ``WhiteBalancedNNPipeline`` below is such a subclass.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from .nn import PAD_NN_CROP_BOX, PAD_NN_SIZE, PADNeuralNetworkPipeline, validate_crop_box

__all__ = ["PAPER_PATCH_BOX", "WhiteBalancedNNPipeline"]

#: A patch of bare paper between the QR code and the PAD-id fiducial, ``(left, upper, right,
#: lower)``. It sits near the top of the card, so it survives truncated files (which lose
#: their bottom rows) and is never touched by the sample.
PAPER_PATCH_BOX = (285, 165, 340, 255)


class WhiteBalancedNNPipeline(PADNeuralNetworkPipeline):
    """White-balance the card on its own paper, then do the PAD NN crop and resize.

    Phones photograph cards under different light and white balance; the paper of the card
    is the one thing known to be white-ish on every photo. Scaling each channel so that the
    paper patch becomes neutral grey (same mean brightness, equal R, G and B) removes most
    of the colour cast before the model sees the lanes. The median of the patch is used so
    that a speck or a pen mark on the paper does not shift the correction.

    This is an example for researchers (the PAD models were trained without it, so it
    is *not* a drop-in input for them). Inheriting from ``PADNeuralNetworkPipeline``
    reuses its parameter validation and crop/resize; the subclass only adds its own
    parameters to ``get_parameters`` and bumps its own ``name``/``code_version``, and the
    base class derives a distinct cache key from them.
    """

    name = "pad_nn_white_balanced"
    code_version = "1"

    def __init__(
        self,
        patch_box: Sequence[int] = PAPER_PATCH_BOX,
        min_background: int = 64,
        crop_box: Sequence[int] = PAD_NN_CROP_BOX,
        size: Sequence[int] = PAD_NN_SIZE,
        resample: str = "bicubic",
    ) -> None:
        super().__init__(crop_box=crop_box, size=size, resample=resample)
        try:
            self.patch_box = validate_crop_box(patch_box)
        except InvalidInputError as exc:
            raise InvalidInputError(str(exc).replace("'crop_box'", "'patch_box'")) from None
        if isinstance(min_background, bool) or not isinstance(min_background, numbers.Integral):
            raise InvalidInputError(
                f"parameter 'min_background' must be an integer in 1..255, got {min_background!r}"
            )
        if not 1 <= min_background <= 255:
            raise InvalidInputError(
                f"parameter 'min_background' must be an integer in 1..255, got {min_background}"
            )
        self.min_background = int(min_background)

    def get_parameters(self) -> dict[str, Any]:
        # Everything that changes the output is in here, so it is all in the cache key.
        return {
            **super().get_parameters(),
            "patch_box": list(self.patch_box),
            "min_background": self.min_background,
        }

    def channel_gains(self, rgb: np.ndarray) -> np.ndarray:
        """Per-channel factors that make the paper patch neutral (mean brightness kept).

        Refuses a patch darker than ``min_background``: that is not paper (wrong layout,
        or a black, truncated area), and dividing by it would blow the image up.
        """
        left, upper, right, lower = self.patch_box
        height, width = rgb.shape[:2]
        if right > width or lower > height:
            raise InvalidInputError(
                f"parameter 'patch_box' {self.patch_box} does not fit inside the image of "
                f"{width}x{height} (w x h)"
            )
        patch = rgb[upper:lower, left:right].reshape(-1, 3)
        paper = np.median(patch, axis=0)
        if paper.min() < self.min_background:
            raise InvalidInputError(
                f"the paper patch {self.patch_box} has median RGB {paper.tolist()}, darker "
                f"than min_background={self.min_background}: it does not look like bare "
                "paper, so the white balance would be meaningless"
            )
        return paper.mean() / paper

    def rows_needed(self) -> int | None:
        """Pixel-wise balance from the patch, then the crop: rows below both are unused."""
        if type(self).process_image is not WhiteBalancedNNPipeline.process_image:
            return None
        return max(self.crop_box[3], self.patch_box[3])

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        rgb = np.asarray(raw_image.convert("RGB"), dtype=np.float32)
        balanced = rgb * self.channel_gains(rgb).astype(np.float32)
        balanced = np.clip(np.rint(balanced), 0, 255).astype(np.uint8)
        # The inherited crop and resize, on the balanced image.
        return super().process_image(Image.fromarray(balanced, "RGB"))
