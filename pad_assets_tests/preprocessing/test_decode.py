"""Decoding: strict by default, truncated-image tolerance per image, hostile inputs refused."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from pad_assets.errors import ImageDecodeError
from pad_assets.preprocessing import DecodedImage, decode_image
from pad_assets_tests.pls_reference import png_bytes, synthetic_card


@pytest.fixture(scope="module")
def good_png() -> bytes:
    return png_bytes(synthetic_card(11))


@pytest.fixture(scope="module")
def truncated_png(good_png: bytes) -> bytes:
    return good_png[: int(len(good_png) * 0.6)]


def _tolerant_pillow(data: bytes) -> np.ndarray:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny 1-bit greyscale PNG whose header claims ``width x height`` pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_good_png_decodes_strictly(good_png: bytes) -> None:
    decoded = decode_image(good_png, "good")
    assert isinstance(decoded, DecodedImage)
    assert decoded.truncated is False
    assert decoded.image.mode == "RGB" and decoded.image.size == (730, 1220)
    np.testing.assert_array_equal(np.asarray(decoded.image), synthetic_card(11))


def test_truncated_png_is_tolerated_flagged_and_equal_to_pillow(truncated_png: bytes) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    decoded = decode_image(truncated_png, "cut")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global is left untouched
    assert decoded.truncated is True
    np.testing.assert_array_equal(np.asarray(decoded.image), _tolerant_pillow(truncated_png))


def test_garbage_bytes_name_the_source() -> None:
    with pytest.raises(ImageDecodeError, match="cards/123.png"):
        decode_image(b"this is not an image at all", "cards/123.png")


@pytest.mark.parametrize("size", [(20000, 20000), (7000, 7000)])
def test_decompression_bomb_is_refused(size: tuple[int, int]) -> None:
    # 20000^2 trips Pillow's own bomb guard at open(); 7000^2 (49 Mpx) only our limit.
    data = _png_header_only(*size)
    assert len(data) < 200
    with pytest.raises(ImageDecodeError, match="bomb-source"):
        decode_image(data, "bomb-source")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_concurrent_decodes_get_the_right_flags(good_png: bytes, truncated_png: bytes) -> None:
    expected_good = np.asarray(decode_image(good_png).image)
    expected_cut = _tolerant_pillow(truncated_png)
    jobs = [(good_png, False), (truncated_png, True)] * 16

    def work(job: tuple[bytes, bool]) -> tuple[bool, bool, bool]:
        data, is_cut = job
        decoded = decode_image(data, "cut" if is_cut else "good")
        pixels = np.asarray(decoded.image)
        same = np.array_equal(pixels, expected_cut if is_cut else expected_good)
        return is_cut, decoded.truncated, same

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, jobs))
    assert all(is_cut == flag for is_cut, flag, _ in results)
    assert all(same for _, _, same in results)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_download_check_agrees_with_a_full_decode(good_png: bytes, truncated_png: bytes) -> None:
    """The raw layer's cheap check (chunk CRCs, no decompression) flags exactly what a full
    decode would, and refuses what a full decode refuses."""
    from pad_assets.preprocessing.decode import check_image

    assert check_image(good_png) is False
    assert check_image(truncated_png) is True == decode_image(truncated_png).truncated
    with pytest.raises(ImageDecodeError, match="card 7"):
        check_image(b"\x89PNG\r\n\x1a\n" + b"junk" * 100, source="card 7")
