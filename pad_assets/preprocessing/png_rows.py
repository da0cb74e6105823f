"""The top rows of an 8-bit RGB PNG, inflated by ISA-L and unfiltered by NumPy: Pillow's pixels.

Why: decoding is the second largest CPU cost of a cold run after inference. Pillow inflates
with zlib-ng and unfilters byte by byte in C; ISA-L inflates the same stream ~1.7x faster
(2.8 vs 4.7 ms for the 849 rows the NN crop reads, 2026-11-30, this machine), and the two
filters PAD cards use are whole-array operations: the lab's cards (OpenCV's writer) put
"Sub" on every row, Pillow-written cards "Up". Inflating and unfiltering are defined
exactly by the PNG specification (modulo-256 sums of the filtered bytes), so the pixels
are the ones Pillow gives, byte for byte; ``png_rows`` tests compare them on the real
cards, on synthetic ones and on every filter mix.

Only the easy case is handled here: a caller that gets None decodes with Pillow. None
means ISA-L (the ``isal`` package) is not installed, a row uses the "Average" or "Paeth"
filter (sequential per pixel: NumPy has no fast form of them), a filter byte is invalid,
or the stream is damaged or ends before the rows: in every such case Pillow decides.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

try:  # ISA-L's inflate (python-isal); without it Pillow's own decode is faster than stdlib zlib
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - the fallback is tested by monkeypatching
    _inflate = None

__all__ = ["available", "top_rows"]

_NONE, _SUB, _UP = 0, 1, 2
_BPP = 3  # bytes per pixel of 8-bit RGB
#: Working buffers up to this size are kept per thread and reused (a card needs 3 x 1.9 MB).
#: Why: fresh multi-megabyte buffers come from mmap and page-fault on every card, which
#: measured ~4 ms per card here, as much as the whole gain (2026-11-30).
_KEEP_BYTES = 16 << 20
_local = threading.local()


def available() -> bool:
    """Is the fast path installed (ISA-L's inflate)?"""
    return _inflate is not None


def _buffer(slot: str, nbytes: int) -> np.ndarray:
    """A flat uint8 work buffer of ``nbytes`` for this thread (reused between calls)."""
    if nbytes > _KEEP_BYTES:
        return np.empty(nbytes, dtype=np.uint8)
    buf = getattr(_local, slot, None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(nbytes, dtype=np.uint8)
        setattr(_local, slot, buf)
    return buf[:nbytes]


def _idat_chunks(data: bytes, offset: int) -> list[memoryview] | None:
    """The data of the consecutive IDAT chunks from ``offset`` (the first IDAT's data, as
    Pillow's tile gives it), or None when the chunk layout is not as expected."""
    view = memoryview(data)
    parts = []
    pos = offset - 8
    end = len(data)
    while pos + 8 <= end and data[pos + 4:pos + 8] == b"IDAT":
        length = int.from_bytes(data[pos:pos + 4], "big")
        if pos + 8 + length > end:
            return None  # cut inside a chunk: not the complete file the caller promised
        parts.append(view[pos + 8:pos + 8 + length])
        pos += 12 + length
    return parts or None


def _inflate_into(chunks: list[memoryview], out: np.ndarray) -> bool:
    """Inflate the zlib stream split over ``chunks`` until ``out`` is full; False when the
    stream is damaged or ends first. Chunk by chunk: no copy of the whole stream, and
    each piece is small enough to come from the heap."""
    assert _inflate is not None
    d = _inflate.decompressobj()
    need = out.size
    got = 0
    try:
        for chunk in chunks:
            piece = d.decompress(chunk, need - got)
            out[got:got + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            got += len(piece)
            if got >= need or d.eof:
                break
    except Exception:  # noqa: BLE001 - a damaged stream: Pillow's decode names the error
        return False
    return got == need


def _unfilter_sub(rows: np.ndarray, scratch: np.ndarray) -> None:
    """Rows filtered with "Sub", in place: each byte plus the reconstructed byte one pixel
    to its left, i.e. a running sum per channel along the row, modulo 256. Computed for
    all rows at once as a Hillis-Steele scan (log2(row bytes / 3) whole-array additions,
    which NumPy runs with SIMD) instead of a per-pixel loop."""
    a, b = rows, scratch
    shift = _BPP
    while shift < rows.shape[1]:
        np.add(a[:, shift:], a[:, :-shift], out=b[:, shift:])
        b[:, :shift] = a[:, :shift]
        a, b = b, a
        shift *= 2
    if a is not rows:
        rows[...] = a


def top_rows(data: bytes, idat_offset: int, width: int, rows: int) -> Image.Image | None:
    """Rows ``0..rows-1`` of a non-interlaced 8-bit RGB PNG as an RGB image of ``rows``
    rows, or None (see the module docstring: the caller then decodes with Pillow).

    ``idat_offset`` is where the first IDAT chunk's data starts. Only the compressed bytes
    those rows need are inflated.
    """
    if _inflate is None or rows <= 0 or width <= 0:
        return None
    chunks = _idat_chunks(data, idat_offset)
    if chunks is None:
        return None
    stride = _BPP * width + 1
    filtered = _buffer("filtered", stride * rows).reshape(rows, stride)
    if not _inflate_into(chunks, filtered.reshape(-1)):
        return None
    kinds = filtered[:, 0]
    if int(kinds.max()) > _UP:
        return None  # Average, Paeth or an invalid filter byte
    pix = filtered[:, 1:]
    out = _buffer("pixels", rows * (stride - 1)).reshape(rows, stride - 1)
    # runs of rows with the same filter
    starts = [0, *(np.flatnonzero(kinds[1:] != kinds[:-1]) + 1).tolist()]
    ends = [*starts[1:], rows]
    for a, b in zip(starts, ends, strict=True):
        kind = int(kinds[a])
        if kind == _SUB:
            out[a:b] = pix[a:b]
            scratch = _buffer("scratch", (b - a) * (stride - 1)).reshape(b - a, stride - 1)
            _unfilter_sub(out[a:b], scratch)
        elif kind == _NONE:
            out[a:b] = pix[a:b]
        else:  # Up: each byte plus the reconstructed byte above it (zeros above row 0)
            if a == 0:
                out[0] = pix[0]
                a = 1
            for i in range(a, b):
                np.add(out[i - 1], pix[i], out=out[i])
    # frombytes copies (into Pillow's own RGBX layout): the buffers stay this thread's
    return Image.frombytes("RGB", (width, rows), memoryview(out.reshape(-1)))
