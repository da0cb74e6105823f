"""The 360 PLS region features of the PAD tool, vectorised, with output identical to it.

The PLS coefficients (model 18, ``24fhiPLS1conc``) were trained on features computed by the
pad-analytics ``regionRoutine.fullRoutine(img, intFind.findMaxIntensitiesFiltered, ...)``
loop, and a coefficient is only meaningful next to the exact integer it was fitted on, so
this module reproduces that code *as it runs*. Despite its name,
``findMaxIntensitiesFiltered`` keeps no maximum: its running-maximum branches are commented
out in every published version (the 0.2.2 release included), so it returns every pixel of
the region that its black-bar filter does not drop, and ``pixelProcessing.avgPixels``
averages them. For each of the 120 regions (``cS = w * S`` and ``cV = w * V``, ``w`` the
cosine weight of the pixel):

* a pixel is *dropped* when ``cS <= 35 and cV <= 70``; every other pixel is *kept*;
* each feature is the mean R, G or B of the kept pixels, rounded as ``int(x + 0.5)``;
  a region with no kept pixel gives 0 (the original's sums stay 0 and are not divided).

Checked against the lab's archived features of two real cards (360/360 each) and against
``pad-analytics`` 0.2.2 itself (``benchmarks/conformance_pad_analytics.py``).

The weight grid is computed with ``math.cos`` exactly as the original (``np.cos`` may differ
in the last bit, and the drop test compares floats exactly), once per region shape.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Final

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from .base import PreprocessingPipeline

__all__ = [
    "BLACK_THRESH_S",
    "BLACK_THRESH_V",
    "PADPLSPipeline",
    "PLS_FEATURE_NAMES",
    "PLS_MIN_IMAGE_SIZE",
    "PLS_REGION_BOXES",
    "cos_weight_grid",
    "pls_features",
    "pls_features_from_rgb",
    "region_rgb_means",
]

#: Pixels with weighted saturation <= 35 *and* weighted value <= 70 are ignored (black bars).
BLACK_THRESH_S: Final = 35
BLACK_THRESH_V: Final = 70

_LANE_LETTERS: Final = "ABCDEFGHIJKL"


def _region_boxes() -> tuple[tuple[int, int, int, int], ...]:
    # Written like regionRoutine (including the float ``region / 10``) so that the
    # coordinates are the original's by construction, not by re-derivation.
    horizontal_border = 12
    start, total_length, regions = 359, 273, 10
    boxes = []
    for lane in range(1, 13):
        lane_start = 17 + (53 * lane) + horizontal_border
        lane_end = 17 + (53 * (lane + 1)) - horizontal_border
        for region in range(regions):
            region_start = start + math.floor(total_length * (region / regions))
            region_end = start + math.floor(total_length * ((region + 1) / regions))
            boxes.append((region_start, region_end, lane_start, lane_end))
    return tuple(boxes)


#: ``(row_start, row_end, col_start, col_end)`` of the 120 regions, lane A..L x region 1..10.
PLS_REGION_BOXES: Final = _region_boxes()

#: Names of the 360 features in output order, as the original dict keys (``"A1-R"``...).
PLS_FEATURE_NAMES: Final = tuple(
    f"{_LANE_LETTERS[lane]}{region + 1}-{colour}"
    for lane in range(12)
    for region in range(10)
    for colour in "RGB"
)

_ROW0: Final = min(b[0] for b in PLS_REGION_BOXES)
_ROW1: Final = max(b[1] for b in PLS_REGION_BOXES)
_COL0: Final = min(b[2] for b in PLS_REGION_BOXES)
_COL1: Final = max(b[3] for b in PLS_REGION_BOXES)

#: Smallest (height, width) holding every region. Smaller images are refused: the original
#: would silently average clipped regions, which the coefficients never saw.
PLS_MIN_IMAGE_SIZE: Final = (_ROW1, _COL1)


def _shape_groups() -> tuple[tuple[np.ndarray, np.ndarray, int, int], ...]:
    """Regions grouped by shape (27x29 and 28x29): (region ids, flat pixel index, h, w).

    The flat index addresses the pixels of the bounding block of all regions (row-major,
    region by region, each region in scan order), so one ``np.take`` stacks a whole group;
    that is several times faster than 2-D fancy indexing.
    """
    block_width = _COL1 - _COL0
    by_shape: dict[tuple[int, int], list[int]] = {}
    for rid, (r0, r1, c0, c1) in enumerate(PLS_REGION_BOXES):
        by_shape.setdefault((r1 - r0, c1 - c0), []).append(rid)
    groups = []
    for (h, w), rids in sorted(by_shape.items()):
        r0 = np.array([PLS_REGION_BOXES[r][0] - _ROW0 for r in rids])
        c0 = np.array([PLS_REGION_BOXES[r][2] - _COL0 for r in rids])
        rows = r0[:, None, None] + np.arange(h)[None, :, None]
        cols = c0[:, None, None] + np.arange(w)[None, None, :]
        flat = (rows * block_width + cols).reshape(len(rids), h * w)
        groups.append((np.array(rids), flat, h, w))
    return tuple(groups)


_GROUPS: Final = _shape_groups()


@lru_cache(maxsize=128)
def cos_weight_grid(height: int, width: int) -> np.ndarray:
    """The original's ``cosCorrectFactor`` for every pixel of a ``height x width`` region.

    Computed with ``math.cos`` in the original's operation order, because the drop test
    compares the weighted values with the thresholds as floats, exactly; read-only as it is
    shared.
    """
    if height < 1 or width < 1:
        raise InvalidInputError(f"region shape must be at least 1x1 pixels, got {height}x{width}")
    center_x = height / 2
    center_y = width / 2
    grid = np.empty((height, width), dtype=np.float64)
    for i in range(height):
        d_x = abs(center_x - i)
        for j in range(width):
            d_y = abs(center_y - j)
            relevant_d = max((d_x / center_x), d_y / center_y)
            grid[i, j] = math.cos((math.pi / 2) * relevant_d)
    grid.flags.writeable = False
    return grid


def _region_means(
    s: np.ndarray,
    v: np.ndarray,
    bgr: tuple[np.ndarray, np.ndarray, np.ndarray],
    height: int,
    width: int,
) -> np.ndarray:
    """``(n, 3)`` rounded R, G, B means from flattened ``(n, p)`` S, V, B, G and R planes."""
    n, p = s.shape
    weights = cos_weight_grid(height, width).reshape(1, p)
    # float64 products, exactly the original's ``sF * imgS[i, j]``.
    c_s = weights * s
    c_v = weights * v
    # The original's ``if cS <= 35 and cV <= 70: pass else: keep``, negated.
    kept = (c_s > BLACK_THRESH_S) | (c_v > BLACK_THRESH_V)

    counts = kept.sum(axis=1)
    kept_f = kept.astype(np.float64)
    # Sums of at most p * 255 are exact in float64 whatever the summation order, so these
    # equal the original's float running sums exactly; then its division and int(x + 0.5)
    # (floor, as x >= 0). A region with no kept pixel keeps the sum 0, as the original does.
    means = np.empty((n, 3), dtype=np.float64)
    for out_col, plane in zip((2, 1, 0), bgr, strict=True):  # BGR planes -> RGB columns
        means[:, out_col] = np.einsum("np,np->n", kept_f, plane.astype(np.float64))
    nonzero = counts > 0
    means[nonzero] /= counts[nonzero, None]
    return np.floor(means + 0.5).astype(np.int64)


def region_rgb_means(hsv: np.ndarray, bgr: np.ndarray) -> np.ndarray:
    """Rounded mean ``(R, G, B)`` of the kept pixels of each of ``n`` same-shape regions.

    ``hsv`` and ``bgr`` are ``(n, h, w, 3)`` uint8 stacks (OpenCV HSV and BGR order); only S
    and V of ``hsv`` matter. Exposed on its own so region-level edge cases (and other card
    layouts) can be checked against the per-pixel original. Returns ``(n, 3)`` int64.
    """
    hsv = np.asarray(hsv)
    bgr = np.asarray(bgr)
    if hsv.ndim != 4 or hsv.shape[-1] != 3 or hsv.shape != bgr.shape:
        raise InvalidInputError(
            f"expected hsv and bgr stacks of the same shape (n, h, w, 3), got "
            f"{hsv.shape} and {bgr.shape}"
        )
    if hsv.dtype != np.uint8 or bgr.dtype != np.uint8:
        raise InvalidInputError(
            f"expected uint8 hsv and bgr stacks, got {hsv.dtype} and {bgr.dtype}"
        )
    n, h, w, _ = hsv.shape
    p = h * w
    planes = bgr.reshape(n, p, 3)
    return _region_means(
        hsv[..., 1].reshape(n, p),
        hsv[..., 2].reshape(n, p),
        (planes[..., 0], planes[..., 1], planes[..., 2]),
        h,
        w,
    )


def _regions_block(image: np.ndarray, order: str) -> np.ndarray:
    """The contiguous block of ``image`` holding every region, after validating the image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidInputError(
            f"expected an {order} uint8 image of shape (height, width, 3), got "
            f"{image.dtype} {image.shape}"
        )
    if image.shape[0] < PLS_MIN_IMAGE_SIZE[0] or image.shape[1] < PLS_MIN_IMAGE_SIZE[1]:
        raise InvalidInputError(
            f"image of {image.shape[1]}x{image.shape[0]} (w x h) is too small for the PLS "
            f"regions: need at least {PLS_MIN_IMAGE_SIZE[1]}x{PLS_MIN_IMAGE_SIZE[0]} "
            "(a processed PAD card is 730x1220)"
        )
    return np.ascontiguousarray(image[_ROW0:_ROW1, _COL0:_COL1])


def _block_features(block_bgr: np.ndarray) -> np.ndarray:
    import cv2  # deferred: importing the package should not pay for OpenCV

    # OpenCV's BGR->HSV is per pixel, so converting only the block holding the regions
    # gives the same values as the original's whole-image conversion, 6x faster.
    hsv = cv2.cvtColor(block_bgr, cv2.COLOR_BGR2HSV)
    # One contiguous plane per channel makes each region gather a cheap 1-D take.
    _, plane_s, plane_v = (c.reshape(-1) for c in cv2.split(hsv))
    planes_bgr = [c.reshape(-1) for c in cv2.split(block_bgr)]
    out = np.empty((len(PLS_REGION_BOXES), 3), dtype=np.int64)
    for rids, flat, h, w in _GROUPS:
        out[rids] = _region_means(
            np.take(plane_s, flat),
            np.take(plane_v, flat),
            tuple(np.take(c, flat) for c in planes_bgr),
            h,
            w,
        )
    return out.reshape(-1)


def pls_features(bgr: np.ndarray) -> np.ndarray:
    """The 360 PLS features of a BGR uint8 card image (as ``cv.imread`` returns it).

    Returns int64 ``(360,)`` ordered lane A..L x region 1..10 x (R, G, B), the order of
    ``PLS_FEATURE_NAMES`` and of the coefficient files. Integers because the original
    features are ``int(x + 0.5)``; the PLS model casts them to float itself.
    """
    return _block_features(_regions_block(bgr, "BGR"))


def pls_features_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """``pls_features`` of an RGB array (what Pillow decodes), converted to BGR first.

    For 8-bit RGB PNGs, Pillow's RGB converted with ``COLOR_RGB2BGR`` gives the pixels
    ``cv.imread`` gives. Only the block holding the regions is converted (a per-pixel
    channel swap), which saves converting the whole 0.9 Mpx card.
    """
    import cv2

    block = _regions_block(rgb, "RGB")
    return _block_features(cv2.cvtColor(block, cv2.COLOR_RGB2BGR))


class PADPLSPipeline(PreprocessingPipeline):
    """The PAD PLS features of a card, cached like any pipeline.

    Output: int64 ``(360,)`` (see ``pls_features``). No parameters: there is one way the lab
    computes these features, and only it matches the published PLS coefficients.

    ``code_version`` history (part of the cache key, so an entry computed by an older
    version is never served): "1" selected pixels by a running maximum that the lab's code
    has commented out (wrong on real cards); "2" is the lab's code as it runs.
    """

    name = "pad_pls"
    code_version = "2"

    def get_parameters(self) -> dict[str, Any]:
        return {}

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        if raw_image.mode != "RGB":
            raw_image = raw_image.convert("RGB")
        return pls_features_from_rgb(np.asarray(raw_image))
