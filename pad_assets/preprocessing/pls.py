"""The 360 PLS region features of the PAD tool, vectorised, with output identical to it.

The PLS coefficients (model 18, ``24fhiPLS1conc``) were trained on features computed by the
pad-analytics ``regionRoutine.fullRoutine(img, intFind.findMaxIntensitiesFiltered, ...)``
loop. A coefficient is only meaningful next to the exact integer it was fitted on, so this
module reproduces that code bit for bit rather than its intent. In particular the pixel
selection is *not* "the mean of the kept pixels" (the primer's summary): it is the result of
a sequential scan that keeps a running maximum, compared against weighted saturations but
updated with the *unweighted* one. That quirk is reproduced exactly (``"pad_max_intensity"``);
the primer's variant is available as ``"threshold_mean"`` for experiments.

How the scan is vectorised exactly (for a region flattened in row-major scan order, with
``cS = w * S`` and ``cV = w * V``, ``w`` the cosine weight):

* a pixel is *dropped* when ``cS <= 35 and cV <= 70``; the others are *kept*;
* a kept pixel with ``cS > maxI`` is a *reset*: the set becomes that pixel and ``maxI`` its
  unweighted ``S``. As ``w <= 1``, ``cS <= S``, so successive ``maxI`` strictly increase
  (at most 255 resets), and the reset after one with saturation ``S_k`` is simply the first
  kept pixel *of the whole region* with ``cS > S_k`` (an earlier one would itself have been a
  reset with a larger ``S``, contradicting the increase). With a per-region table
  ``first[t]`` = first kept index with ``cS > t`` (``t`` integer), the chain is a few gathers;
* the final set is the last reset plus the later kept pixels with ``cS == maxI`` (exact float
  equality); with no reset ``maxI`` stays 0 and the set is every kept pixel with ``cS == 0``.

The weight grid is computed with ``math.cos`` exactly as the original (``np.cos`` may differ
in the last bit, and the thresholds compare floats exactly), once per region shape.
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
    "SELECTIONS",
    "cos_weight_grid",
    "pls_features",
    "pls_features_from_rgb",
    "region_rgb_means",
]

#: Pixels with weighted saturation <= 35 *and* weighted value <= 70 are ignored (black bars).
BLACK_THRESH_S: Final = 35
BLACK_THRESH_V: Final = 70

#: ``"pad_max_intensity"``: the PAD tool's selection (what the coefficients were trained on);
#: ``"threshold_mean"``: the average of every non-dropped pixel (the primer's description).
SELECTIONS: Final = ("pad_max_intensity", "threshold_mean")

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

    Computed with ``math.cos`` in the original's operation order, because the drop and
    tie tests compare the weighted values as floats, exactly; read-only as it is shared.
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


def _check_selection(selection: str) -> str:
    if selection not in SELECTIONS:
        raise InvalidInputError(
            f"PLS parameter 'selection' must be one of {list(SELECTIONS)}, got {selection!r}"
        )
    return selection


def _pad_max_intensity_mask(c_s: np.ndarray, s: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Which pixels ``findMaxIntensitiesFiltered`` returns, for ``(n, p)`` flattened regions."""
    n, p = c_s.shape
    # level = the largest integer t with c_s > t (c_s in [0, 255] so level in [-1, 254]):
    # for every integer t, ``c_s > t`` <=> ``level >= t``. Dropped pixels get -1.
    level = np.ceil(c_s).astype(np.int64) - 1
    level[~kept] = -1
    # The running maximum of level is non-decreasing along each region, so "first pixel
    # with c_s > t" is a binary search; offsetting region r by 512 * r makes the whole
    # (n, p) array one sorted sequence, so one searchsorted serves every region at once.
    running = np.maximum.accumulate(level, axis=1)
    regions = np.arange(n)
    running += (512 * regions)[:, None]
    sorted_flat = running.reshape(-1)
    region_base = regions * p

    max_i = np.zeros(n, dtype=np.int64)  # maxI: unweighted S of the last reset (0 if none)
    last = np.full(n, -1, dtype=np.int64)  # index of the last reset (-1 if none)
    for _ in range(257):  # maxI strictly increases over 0..255: at most 256 resets
        # first pixel with level >= max_i, i.e. c_s > max_i; p when there is none
        nxt = np.searchsorted(sorted_flat, max_i + 512 * regions, side="left") - region_base
        active = nxt < p
        if not active.any():
            break
        last = np.where(active, nxt, last)
        max_i = np.where(active, s[regions, np.minimum(nxt, p - 1)], max_i)

    later = np.arange(p)[None, :] > last[:, None]
    mask = kept & later & (c_s == max_i[:, None])
    has_reset = last >= 0
    mask[regions[has_reset], last[has_reset]] = True
    return mask


def _region_means(
    s: np.ndarray,
    v: np.ndarray,
    bgr: tuple[np.ndarray, np.ndarray, np.ndarray],
    height: int,
    width: int,
    selection: str,
) -> np.ndarray:
    """``(n, 3)`` rounded R, G, B means from flattened ``(n, p)`` S, V, B, G and R planes."""
    n, p = s.shape
    weights = cos_weight_grid(height, width).reshape(1, p)
    # float64 products, exactly the original's ``sF * imgS[i, j]``.
    c_s = weights * s
    c_v = weights * v
    kept = (c_s > BLACK_THRESH_S) | (c_v > BLACK_THRESH_V)
    mask = kept if selection == "threshold_mean" else _pad_max_intensity_mask(c_s, s, kept)

    counts = mask.sum(axis=1)
    weights_sel = mask.astype(np.float64)
    # Sums of at most p * 255 are exact in float64 whatever the summation order, so these
    # equal the original's float running sums exactly; then its division and int(x + 0.5)
    # (floor, as x >= 0). An empty selection keeps the sum 0, as the original does.
    means = np.empty((n, 3), dtype=np.float64)
    for out_col, plane in zip((2, 1, 0), bgr, strict=True):  # BGR planes -> RGB columns
        means[:, out_col] = np.einsum("np,np->n", weights_sel, plane.astype(np.float64))
    nonzero = counts > 0
    means[nonzero] /= counts[nonzero, None]
    return np.floor(means + 0.5).astype(np.int64)


def region_rgb_means(
    hsv: np.ndarray, bgr: np.ndarray, selection: str = "pad_max_intensity"
) -> np.ndarray:
    """Rounded mean ``(R, G, B)`` of the selected pixels of each of ``n`` same-shape regions.

    ``hsv`` and ``bgr`` are ``(n, h, w, 3)`` uint8 stacks (OpenCV HSV and BGR order); only S
    and V of ``hsv`` matter. Exposed on its own so region-level edge cases (and other card
    layouts) can be checked against the per-pixel original. Returns ``(n, 3)`` int64.
    """
    _check_selection(selection)
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
        selection,
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


def _block_features(block_bgr: np.ndarray, selection: str) -> np.ndarray:
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
            selection,
        )
    return out.reshape(-1)


def pls_features(bgr: np.ndarray, selection: str = "pad_max_intensity") -> np.ndarray:
    """The 360 PLS features of a BGR uint8 card image (as ``cv.imread`` returns it).

    Returns int64 ``(360,)`` ordered lane A..L x region 1..10 x (R, G, B), the order of
    ``PLS_FEATURE_NAMES`` and of the coefficient files. Integers because the original
    features are ``int(x + 0.5)``; the PLS model casts them to float itself.
    """
    _check_selection(selection)
    return _block_features(_regions_block(bgr, "BGR"), selection)


def pls_features_from_rgb(rgb: np.ndarray, selection: str = "pad_max_intensity") -> np.ndarray:
    """``pls_features`` of an RGB array (what Pillow decodes), converted to BGR first.

    For 8-bit RGB PNGs, Pillow's RGB converted with ``COLOR_RGB2BGR`` gives the pixels
    ``cv.imread`` gives. Only the block holding the regions is converted (a per-pixel
    channel swap), which saves converting the whole 0.9 Mpx card.
    """
    import cv2

    _check_selection(selection)
    block = _regions_block(rgb, "RGB")
    return _block_features(cv2.cvtColor(block, cv2.COLOR_RGB2BGR), selection)


class PADPLSPipeline(PreprocessingPipeline):
    """The PAD PLS features of a card, cached like any pipeline.

    Output: int64 ``(360,)`` (see ``pls_features``). ``selection`` picks the pixel selection;
    only the default reproduces the features the published PLS coefficients expect.
    """

    name = "pad_pls"
    code_version = "1"

    def __init__(self, selection: str = "pad_max_intensity") -> None:
        if not isinstance(selection, str):
            raise InvalidInputError(
                f"PLS parameter 'selection' must be a string, one of {list(SELECTIONS)}, "
                f"got {type(selection).__name__}"
            )
        self.selection = _check_selection(selection)

    def get_parameters(self) -> dict[str, Any]:
        return {"selection": self.selection}

    def process_image(self, raw_image: Image.Image) -> np.ndarray:
        if raw_image.mode != "RGB":
            raw_image = raw_image.convert("RGB")
        return pls_features_from_rgb(np.asarray(raw_image), self.selection)
