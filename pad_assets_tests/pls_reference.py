"""Per-pixel reference of the PAD PLS features, written like the original pad-analytics code.

Test and benchmark only. The loops deliberately mirror ``regionRoutine.fullRoutine``,
``intensityFind.findMaxIntensitiesFiltered`` / ``cosCorrectFactor`` and
``pixelProcessing.avgPixels`` statement by statement (NumPy scalars included), so that
"identical to the reference" means "identical to what trained the coefficients". Do not
"improve" this file: its value is its literalness. It follows the code *as it runs*: the
original's running-maximum branches in ``findMaxIntensitiesFiltered`` are commented out (in
every published version, 0.2.2 included), so they are absent here too; an earlier version
of this file executed them, and the suite then checked the pipeline against that misreading.

Also holds ``synthetic_card``, a small deterministic card generator shared by the tests and
the benchmark (so they never depend on real files).
"""

from __future__ import annotations

import csv
import io
import math

import cv2 as cv
import numpy as np
from PIL import Image

BLACK_THRESH_S = 35
BLACK_THRESH_V = 70
HORIZONTAL_BORDER = 12
VERTICAL_BORDER = 0


def cosCorrectFactor(dx, dy, centerX, centerY):
    relevantD = max((dx / centerX), dy / centerY)
    relevnatDRads = (math.pi / 2) * relevantD
    return math.cos(relevnatDRads)


def findMaxIntensitiesFiltered(img):
    # Despite the name, no maximum: the original's ``elif cS > maxI`` / ``elif cS == maxI``
    # branches are commented out, so every pixel the filter does not drop is returned
    # (``maxI`` is assigned and never read there either).
    imgS = img[:, :, 1]
    imgV = img[:, :, 2]
    maxSet = []
    centerX = imgS.shape[0] / 2
    centerY = imgS.shape[1] / 2
    for i in range(imgS.shape[0]):
        dX = abs(centerX - i)
        for j in range(imgS.shape[1]):
            dY = abs(centerY - j)
            sF = cosCorrectFactor(dX, dY, centerX, centerY)
            cS = sF * imgS[i, j]
            cV = sF * imgV[i, j]
            if cS <= BLACK_THRESH_S and cV <= BLACK_THRESH_V:
                pass
            else:
                maxSet.append((i, j))
    return maxSet


def avgPixels(pixels, img):
    totalB = 0.0
    totalG = 0.0
    totalR = 0.0
    for pixel in pixels:
        x = pixel[0]
        y = pixel[1]
        b, g, r = img[x, y, :]
        totalB += float(b)
        totalG += float(g)
        totalR += float(r)
    if len(pixels) != 0:
        totalB /= len(pixels)
        totalG /= len(pixels)
        totalR /= len(pixels)
    return int(totalR + 0.5), int(totalG + 0.5), int(totalB + 0.5)


def regionGen(regions, region):
    start = 359
    totalLength = 273
    regionStart = start + math.floor(totalLength * (region / regions)) + VERTICAL_BORDER
    regionEnd = start + math.floor(totalLength * ((region + 1) / regions)) - VERTICAL_BORDER
    return regionStart, regionEnd


def fullRoutine(img, roiFunc, df, RGB=True, regions=10):
    letters = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L"]
    imgHSV = cv.cvtColor(img, cv.COLOR_BGR2HSV)
    for lane in range(1, 13):
        laneStart = 17 + (53 * lane) + HORIZONTAL_BORDER
        laneEnd = 17 + (53 * (lane + 1)) - HORIZONTAL_BORDER
        letter = letters[lane - 1]
        for region in range(regions):
            regionStart, regionEnd = regionGen(regions, region)
            roi = imgHSV[regionStart:regionEnd, laneStart:laneEnd, :]
            rgbROI = img[regionStart:regionEnd, laneStart:laneEnd, :]
            pixels = roiFunc(roi)
            tempString = letter + str(region + 1) + "-"
            r, g, b = avgPixels(pixels, rgbROI)
            df[tempString + "R"] = r
            df[tempString + "G"] = g
            df[tempString + "B"] = b
    return df


def reference_features(bgr: np.ndarray) -> np.ndarray:
    """The 360 features in coefficient order (lane A..L x region 1..10 x R, G, B)."""
    f = fullRoutine(bgr, findMaxIntensitiesFiltered, {}, True, 10)
    names = [
        letter + str(region + 1) + "-" + colour
        for letter in "ABCDEFGHIJKL"
        for region in range(10)
        for colour in "RGB"
    ]
    return np.array([f[name] for name in names], dtype=np.int64)


def reference_coefficients(path) -> dict[str, list[float]]:
    """A coefficient file read like the original ``pls.__init__``: ``csv.reader``, every
    field after the first through ``float``, keyed by the first field as written."""
    coeff = {}
    with open(path) as csvcoeffs:
        for row in csv.reader(csvcoeffs):
            elmts = []
            for j in range(1, len(row)):
                elmts.append(float(row[j]))
            coeff[row[0]] = elmts
    return coeff


def reference_quantity(f: dict, coeff: dict[str, list[float]], drug: str) -> float:
    """The original ``pls.quantity`` arithmetic on a ``fullRoutine`` feature dict: the
    intercept, then ``float(pixval) * coefficient`` added lane by lane, region by region,
    R, G, B. ``-1`` for a drug without a row, as pad-analytics 0.2.2 returns."""
    if drug.lower() not in coeff:
        return -1
    drug_coeff = coeff[drug.lower()]
    pls_concentration = drug_coeff[0]
    coeff_index = 1
    for letter in ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L"]:
        for region in range(10):
            for color_letter in ["R", "G", "B"]:
                pixval = f[letter + str(region + 1) + "-" + color_letter]
                pls_concentration += float(pixval) * drug_coeff[coeff_index]
                coeff_index += 1
    return pls_concentration


def reference_region_rgb(hsv_roi: np.ndarray, bgr_roi: np.ndarray) -> tuple:
    """``avgPixels(findMaxIntensitiesFiltered(roi), rgbROI)`` for one region."""
    return avgPixels(findMaxIntensitiesFiltered(hsv_roi), bgr_roi)


def synthetic_card(seed: int, height: int = 1220, width: int = 730) -> np.ndarray:
    """A deterministic RGB uint8 card: light noisy paper, dark lane bars, colour bands.

    Built to exercise the PLS pixel filter: saturated bands and specks, bright unsaturated
    (white) specks, dark bars that the filter drops, and flat patches that create ties.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(200, 240, size=3)
    img = (base + rng.normal(0, 6, size=(height, width, 3))).clip(0, 255).astype(np.uint8)
    for lane in range(1, 14):  # dark wax bars between lanes
        x = 17 + 53 * lane
        img[300:900, max(x - 6, 0) : x + 6] = rng.integers(20, 70, size=3)
    for _ in range(rng.integers(10, 30)):  # colour bands
        lane = int(rng.integers(1, 13))
        x0 = 17 + 53 * lane + int(rng.integers(0, 20))
        x1 = x0 + int(rng.integers(8, 40))
        y0 = int(rng.integers(340, 640))
        y1 = y0 + int(rng.integers(5, 200))
        colour = rng.integers(0, 256, size=3)
        band = colour + rng.normal(0, rng.choice([0.0, 3.0, 15.0]), size=(y1 - y0, x1 - x0, 3))
        img[y0:y1, x0:x1] = band.clip(0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 400)):  # specks: saturated, white, grey
        y = int(rng.integers(340, 650))
        x = int(rng.integers(60, 710))
        kind = rng.integers(0, 3)
        if kind == 0:
            img[y, x] = rng.permutation([255, int(rng.integers(0, 256)), 0])
        elif kind == 1:
            img[y, x] = 255
        else:
            img[y, x] = int(rng.integers(0, 256))
    return img


def png_bytes(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG encoding of an RGB array (fast compression: tests encode many cards)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def card_rgb(index: int) -> np.ndarray:
    """Card ``index`` for parity tests: even indices from the project's emulator renderer
    (realistic colours), the others from ``synthetic_card`` (harsher edge cases: specks,
    white pixels, saturated bands)."""
    if index % 2 == 0:
        from pad_assets.devtools.emulator.synthetic import render_card

        return render_card(1000 + index)
    return synthetic_card(index)
