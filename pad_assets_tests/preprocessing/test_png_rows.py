"""The ISA-L + NumPy PNG row decoder (issue 16) gives Pillow's pixels, byte for byte, and
hands every file it does not handle back to Pillow (None).

PNGs are encoded here from the specification (each row filtered with a chosen filter,
zlib, IDAT chunks of a chosen size) and decoded by Pillow as the reference.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pad_assets.preprocessing import png_rows
from pad_assets.preprocessing.decode import decode_image, decode_top_rows

REAL = Path(__file__).resolve().parents[1] / "data" / "real"

pytestmark = pytest.mark.skipif(not png_rows.available(),
                                reason="isal (ISA-L) not installed: Pillow decodes every row")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def _filter_row(kind: int, row: np.ndarray, above: np.ndarray) -> np.ndarray:
    """PNG filter types 0-4 applied to one row of 8-bit RGB (bpp 3), as the spec defines."""
    r = row.astype(np.int32)
    b = above.astype(np.int32)
    a = np.concatenate([np.zeros(3, np.int32), r[:-3]])
    c = np.concatenate([np.zeros(3, np.int32), b[:-3]])
    if kind == 0:
        pred = np.zeros_like(r)
    elif kind == 1:
        pred = a
    elif kind == 2:
        pred = b
    elif kind == 3:
        pred = (a + b) // 2
    else:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((r - pred) % 256).astype(np.uint8)


def encode_png(pixels: np.ndarray, filters: list[int], idat_size: int = 65536,
               text_first: bool = False) -> bytes:
    """An 8-bit RGB PNG of ``pixels`` with row ``y`` filtered by ``filters[y]``."""
    h, w, _ = pixels.shape
    flat = pixels.reshape(h, w * 3)
    rows = []
    above = np.zeros(w * 3, np.uint8)
    for y in range(h):
        rows.append(bytes([filters[y]]) + _filter_row(filters[y], flat[y], above).tobytes())
        above = flat[y]
    stream = zlib.compress(b"".join(rows), 6)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    if text_first:
        out += _chunk(b"tEXt", b"Comment\x00card")
    for i in range(0, len(stream), idat_size):
        out += _chunk(b"IDAT", stream[i:i + idat_size])
    return out + _chunk(b"IEND", b"")


def _pixels(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * 3).reshape(1, w, 3)
    return ((base + rng.integers(0, 40, (h, w, 3))) % 256).astype(np.uint8)


def _reference(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data).image)


def _offset(data: bytes) -> int:
    return Image.open(io.BytesIO(data)).tile[0][2]


@pytest.mark.parametrize("filters", ["up", "sub", "none", "mixed"])
def test_rows_match_pillow_for_each_fast_filter(filters: str) -> None:
    h, w = 61, 37  # odd sizes: no power-of-two shortcut hides an off-by-one
    kinds = {"up": [2] * h, "sub": [1] * h, "none": [0] * h,
             "mixed": [(y * 7 + y // 3) % 3 for y in range(h)]}[filters]
    data = encode_png(_pixels(h, w, 1), kinds, idat_size=97, text_first=True)
    full = _reference(data)
    for rows in (1, 2, 30, h - 1, h):
        got = png_rows.top_rows(data, _offset(data), w, rows)
        assert got is not None and got.mode == "RGB" and got.size == (w, rows)
        assert np.array_equal(np.asarray(got), full[:rows]), (filters, rows)


def test_the_real_cards_and_pillow_style_cards_decode_identically() -> None:
    card = (REAL / "25834_processed.png").read_bytes()  # OpenCV's writer: "Sub" rows
    pix = _reference(card)
    up_card = encode_png(pix, [0] + [2] * (pix.shape[0] - 1))  # the benchmark's "Up" rows
    for data in (card, up_card):
        got = decode_top_rows(data, 849, "card")
        assert got is not None and np.array_equal(np.asarray(got), pix[:849])
        direct = png_rows.top_rows(data, _offset(data), pix.shape[1], 849)
        assert direct is not None and np.array_equal(np.asarray(direct), pix[:849])


@pytest.mark.parametrize("kind", [3, 4])
def test_average_and_paeth_rows_are_left_to_pillow(kind: int) -> None:
    h, w = 20, 16
    kinds = [2] * h
    kinds[7] = kind
    data = encode_png(_pixels(h, w, 2), kinds)
    assert png_rows.top_rows(data, _offset(data), w, 6) is not None  # rows above it
    assert png_rows.top_rows(data, _offset(data), w, 10) is None
    top = decode_top_rows(data, 10)  # Pillow's partial decode takes over, same pixels
    assert top is not None and np.array_equal(np.asarray(top), _reference(data)[:10])


def test_damaged_or_short_streams_are_left_to_pillow() -> None:
    h, w = 40, 16
    data = encode_png(_pixels(h, w, 3), [1] * h, idat_size=200)
    off = _offset(data)
    cut = data[: off + 150]  # inside the first IDAT chunk
    assert png_rows.top_rows(cut, off, w, 2) is None
    bad = bytearray(data)
    bad[off + 2:off + 40] = bytes(38)  # garbage in the deflate stream
    assert png_rows.top_rows(bytes(bad), off, w, h - 1) is None
    assert png_rows.top_rows(data, off, w, h + 1) is None  # more rows than the file has
    bad_filter = encode_png(_pixels(h, w, 3), [1] * h)
    raw = zlib.decompress(b"".join(  # rebuild with an invalid filter byte (5) on row 3
        [bad_filter[off:off + int.from_bytes(bad_filter[off - 8:off - 4], "big")]]))
    rows = bytearray(raw)
    rows[3 * (w * 3 + 1)] = 5
    stream = zlib.compress(bytes(rows))
    invalid = bad_filter[:off - 8] + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
    assert png_rows.top_rows(invalid, off, w, 10) is None


def test_images_do_not_share_the_reused_buffers() -> None:
    first = encode_png(_pixels(30, 12, 5), [1] * 30)
    second = encode_png(_pixels(30, 12, 6), [2] * 30)
    a = png_rows.top_rows(first, _offset(first), 12, 20)
    before = np.asarray(a).copy()
    b = png_rows.top_rows(second, _offset(second), 12, 20)
    assert a is not None and b is not None
    assert np.array_equal(np.asarray(a), before)  # decoding the next card changed nothing
    assert np.array_equal(np.asarray(b), _reference(second)[:20])


def test_without_isal_pillow_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode_png(_pixels(30, 12, 4), [2] * 30)
    monkeypatch.setattr(png_rows, "_inflate", None)
    assert not png_rows.available()
    assert png_rows.top_rows(data, _offset(data), 12, 10) is None
    top = decode_top_rows(data, 10)
    assert top is not None and np.array_equal(np.asarray(top), _reference(data)[:10])


def _pillow_verifies(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data), formats=("PNG",)).verify()
    except Exception:  # noqa: BLE001 - any failure: the slow path decides
        return False
    return True


def test_the_fast_chunk_walk_passes_only_what_pillow_verify_passes() -> None:
    from pad_assets.preprocessing.decode import _chunks_verify, check_image

    good = encode_png(_pixels(40, 16, 7), [2] * 40, idat_size=300)
    off = _offset(good)
    text_after = good[:-12] + _chunk(b"tEXt", b"Comment\x00late") + good[-12:]
    variants = {"good": good, "text after IDAT": text_after,
                "real 25834": (REAL / "25834_processed.png").read_bytes(),
                "real 19208 (truncated)": (REAL / "19208_processed.png").read_bytes(),
                "no IEND": good[:-12], "cut in a chunk": good[: len(good) // 2],
                "cut in a CRC": good[:off + 300 + 2]}
    flipped = bytearray(good)
    flipped[off + 100] ^= 1  # IDAT data changed
    variants["bad IDAT CRC"] = bytes(flipped)
    late = bytearray(text_after)
    late[-14] ^= 1  # the late tEXt's CRC
    variants["bad late tEXt CRC"] = bytes(late)
    badtype = bytearray(good)
    badtype[off - 4:off] = b"ID T"  # not a chunk type
    variants["bad chunk type"] = bytes(badtype)
    for name, data in variants.items():
        start = Image.open(io.BytesIO(data)).tile[0][2] if name != "bad chunk type" else off
        fast = _chunks_verify(data, start)
        assert fast == _pillow_verifies(data), name
        assert fast == (name in ("good", "text after IDAT", "real 25834")), name
    assert check_image(variants["real 19208 (truncated)"]) is True
    assert check_image(good) is False


def test_with_global_tolerance_on_pillow_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    from pad_assets.preprocessing.decode import _chunks_verify

    good = encode_png(_pixels(10, 8, 8), [0] * 10)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _chunks_verify(good, _offset(good)) is False


def test_pillow_block_cache_changes_no_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines switch Pillow's block cache on (reused image memory); outputs are the
    same bits with and without it, on the real cards and on Pillow-written ones."""
    from PIL import Image as PILImage

    from pad_assets import WhiteBalancedNNPipeline
    from pad_assets.preprocessing import PADNeuralNetworkPipeline
    from pad_assets.preprocessing import decode as decode_module

    cards = [(REAL / "25834_processed.png").read_bytes(),
             (REAL / "19208_processed.png").read_bytes()]
    pix = _reference(cards[0])
    cards.append(encode_png(pix, [0] + [2] * (pix.shape[0] - 1)))
    pipelines = [PADNeuralNetworkPipeline(), WhiteBalancedNNPipeline()]
    previous = PILImage.core.get_blocks_max()
    try:
        PILImage.core.set_blocks_max(0)
        monkeypatch.delenv("PILLOW_BLOCKS_MAX", raising=False)
        monkeypatch.setattr(decode_module, "_block_cache_checked", True)  # stays off
        plain = [p.run(c, "card", False)[0] for p in pipelines for c in cards[::2]]
        plain += [p.run(cards[1], "card")[0] for p in pipelines]  # truncated: whole decode
        assert PILImage.core.get_blocks_max() == 0
        monkeypatch.setattr(decode_module, "_block_cache_checked", False)
        for _round in range(2):  # the second round reuses blocks the first one freed
            cached = [p.run(c, "card", False)[0] for p in pipelines for c in cards[::2]]
            cached += [p.run(cards[1], "card")[0] for p in pipelines]
            assert PILImage.core.get_blocks_max() == decode_module.PILLOW_BLOCKS_MAX  # on
            assert all(np.array_equal(a, b) for a, b in zip(plain, cached, strict=True))
        # a user's own setting is kept
        PILImage.core.set_blocks_max(3)
        monkeypatch.setattr(decode_module, "_block_cache_checked", False)
        pipelines[0].run(cards[0], "card", False)
        assert PILImage.core.get_blocks_max() == 3
    finally:
        PILImage.core.set_blocks_max(previous)
