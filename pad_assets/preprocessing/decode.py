"""Decoding card images exactly as the PAD tool did, without its global side effect.

The original tool sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` for the whole process, so
damaged files (card 19208 is a truncated PNG whose md5 still matches the registry) decode
silently. For parity we decode such files the same way, but only for the image at hand and
with the fact recorded (``DecodedImage.truncated``) so it travels with every derived item.

Pillow reads that switch as a module global, so a tolerant decode flips it under an
exclusive lock while strict decodes in other threads hold a shared lock: a strict decode
can never succeed on a truncated file by accident.
"""

from __future__ import annotations

import io
import os
import threading
import zlib
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFile
from PIL.PngImagePlugin import is_cid

from ..errors import ImageDecodeError
from .png_rows import top_rows

#: Larger images are refused before decoding (a PAD card is 730 x 1220 = 0.9 Mpx).
MAX_PIXELS = 40_000_000


class _SharedExclusiveLock:
    """Many strict decoders at once, or one tolerant decoder alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_shared(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


_LOCK = _SharedExclusiveLock()

#: Freed Pillow image blocks kept for reuse (Pillow's ``PILLOW_BLOCKS_MAX``; its default is
#: none). Why: a card's decode, crop and resize allocate four images of 0.8-2.5 MB; fresh,
#: each is mapped and page-faulted again (~1,300 faults, ~3.7 ms of CPU per card measured
#: on this machine, 2026-11-30). Pixels do not depend on it: Pillow zeroes a reused block
#: wherever it would have zeroed a new one. Retains at most a few such blocks.
PILLOW_BLOCKS_MAX = 16
_block_cache_checked = False


def use_pillow_block_cache() -> None:
    """Switch Pillow's block cache on, once per process, unless the user chose a setting
    (the ``PILLOW_BLOCKS_MAX`` variable, or a nonzero ``Image.core.set_blocks_max``)."""
    global _block_cache_checked
    if _block_cache_checked:
        return
    _block_cache_checked = True
    if "PILLOW_BLOCKS_MAX" in os.environ:
        return
    core: Any = Image.core
    if core.get_blocks_max() == 0:
        core.set_blocks_max(PILLOW_BLOCKS_MAX)


def _rgb(img: Image.Image) -> Image.Image:
    """RGB without the copy ``convert`` makes of an image that is RGB already (2.7 MB)."""
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image and whether it needed truncated-image tolerance to decode."""

    image: Image.Image
    truncated: bool


#: The only formats a PAD card comes in. Pillow would otherwise try every plugin it has,
#: including EPS (which runs Ghostscript where it is installed) on bytes from a server.
FORMATS = ("PNG", "JPEG")


def _open_checked(data: bytes, source: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception as exc:  # Pillow raises several types for non-images
        raise ImageDecodeError(
            f"{source}: not a PNG or JPEG image ({type(exc).__name__}: {exc}); "
            "expected the PNG (or JPEG) bytes of a processed PAD card"
        ) from exc
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{source}: image header says {width}x{height} = {width * height} pixels, over the "
            f"limit of {MAX_PIXELS} (possible decompression bomb); expected a 730x1220 PAD card"
        )
    return img


def decode_image(data: bytes, source: str = "image") -> DecodedImage:
    """Decode bytes to RGB; tolerate truncation for this image only, and say so."""
    img = _open_checked(data, source)
    _LOCK.acquire_shared()
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # Someone else's code switched tolerance on globally; decode strictly anyway by
            # falling through to the exclusive path, which restores their setting after.
            raise OSError("global truncated tolerance is on")
        img.load()
        return DecodedImage(_rgb(img), truncated=False)
    except OSError:
        pass
    except Exception as exc:
        raise ImageDecodeError(f"{source}: decoding failed ({type(exc).__name__}: {exc})") from exc
    finally:
        _LOCK.release_shared()

    _LOCK.acquire_exclusive()
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        strict = _open_checked(data, source)
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            strict.load()
            return DecodedImage(_rgb(strict), truncated=False)
        except OSError:
            pass
        tolerant = _open_checked(data, source)
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            tolerant.load()
        except Exception as exc:
            raise ImageDecodeError(
                f"{source}: cannot be decoded even with truncated-image tolerance "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return DecodedImage(_rgb(tolerant), truncated=True)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
        _LOCK.release_exclusive()


def decode_top_rows(data: bytes, rows: int, source: str = "image") -> Image.Image | None:
    """The first ``rows`` rows of a PNG card that is known to be complete, decoded strictly.

    Why: PNG rows are inflated and unfiltered in order, so a pipeline that reads only the
    top ``rows`` rows (the NN crop ends at row 849 of 1,220) need not inflate the rest:
    ~30 % less decode CPU, and rows ``0..rows-1`` are the very pixels a full decode gives.
    Only for a file whose completeness is already known (the raw layer's ``truncated``
    flag is False): the truncated flag cannot be learnt from a partial decode.

    Returns None, and the caller decodes the whole image with ``decode_image``, when the
    shortcut does not apply: not a plain RGB, non-interlaced, single-frame PNG taller
    than ``rows``; global truncated-image tolerance switched on by someone else; or the
    strict decode of those rows failing (data missing among them: only the full decode
    can say "truncated" or "undecodable").
    """
    img = _open_checked(data, source)
    width, height = img.size
    tiles = img.tile
    if (img.format != "PNG" or img.mode != "RGB" or not 0 < rows < height or len(tiles) != 1
            or tiles[0][0] != "zip" or tuple(tiles[0][1]) != (0, 0, width, height)
            or img.info.get("interlace") or getattr(img, "n_frames", 1) != 1):
        return None
    # ISA-L inflate + NumPy unfilter where the file allows it (same pixels, ~half the CPU)
    fast = top_rows(data, tiles[0][2], width, rows)
    if fast is not None:
        return fast
    _LOCK.acquire_shared()
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            return None
        # Pillow allocates and fills the image its size and tile say: ask for the top rows.
        img._size = (width, rows)
        img.tile = [tiles[0]._replace(extents=(0, 0, width, rows))]
        # The file position is inside the pixel data when the rows are done: the chunks
        # after it (text) are not read, and must not be parsed from the middle of IDAT.
        img.load_end = lambda: None  # type: ignore[method-assign]
        img.load()
    except OSError:
        return None
    except Exception as exc:
        raise ImageDecodeError(f"{source}: decoding failed ({type(exc).__name__}: {exc})") from exc
    finally:
        _LOCK.release_shared()
    if img.size != (width, rows) or img.mode != "RGB":
        return None
    return img


try:  # ISA-L's CRC-32 (carry-less multiply): ~13x faster than zlib's on a 1.5 MB card
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - same values, slower
    _crc32 = zlib.crc32


def _chunks_verify(data: bytes, idat_offset: int) -> bool:
    """True only where Pillow's ``PngImageFile.verify()`` passes, at a tenth of its CPU.

    The same walk: from the first IDAT to IEND, every chunk header complete with a valid
    type, every chunk's data and CRC present and the CRC right (IEND's is not read). No
    copies (memoryview slices) and ISA-L's CRC-32. False means "ask Pillow", never
    "broken": with global truncated-image tolerance on, Pillow skips some CRCs, so then
    it is always Pillow that decides.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        return False
    view = memoryview(data)
    end = len(data)
    pos = idat_offset - 8
    while pos + 8 <= end:
        kind = data[pos + 4:pos + 8]
        if not is_cid(kind):
            return False
        if kind == b"IEND":
            return True
        stop = pos + 8 + int.from_bytes(data[pos:pos + 4], "big")
        if stop + 4 > end:
            return False
        if _crc32(view[pos + 8:stop], _crc32(kind)) != int.from_bytes(data[stop:stop + 4], "big"):
            return False
        pos = stop + 4
    return False


def check_image(data: bytes, source: str = "image") -> bool:
    """Is this a decodable image, and does it need truncated-image tolerance?

    Pillow's ``verify()`` walks the PNG chunks and CRCs without decompressing (~0.5 ms vs
    ~13 ms for a full decode of a card that preprocessing decodes again anyway); only a
    file that fails it takes the full decode, which decides "truncated" vs "undecodable"
    exactly as ``decode_image`` does. Returns the truncated flag. An intact PNG passes
    ``_chunks_verify`` (the same walk, ~0.05 ms) and skips Pillow's.
    """
    img = _open_checked(data, source)
    if img.format == "PNG" and img.tile and _chunks_verify(data, img.tile[0][2]):
        return False
    try:
        img.verify()
    except Exception:
        damage = png_crc_damage(data) if img.format == "PNG" else None
        if damage:
            raise ImageDecodeError(
                f"{source}: corrupt PNG ({damage}): the bytes were damaged, which a truncated "
                "file is not; a failed download, not cached") from None
        return decode_image(data, source).truncated
    return False


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_crc_damage(data: bytes) -> str | None:
    """Why a PNG's complete chunks fail their CRC, or None (intact, or merely cut short).

    A truncated file (card 19208) ends inside a chunk: every chunk it has in full is
    intact. A chunk that is all there but fails its CRC means changed bytes.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return None  # cut inside this chunk: truncation
        crc = int.from_bytes(data[end - 4:end], "big")
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            name = kind.decode("latin-1", "replace")
            return f"chunk {name!r} at byte {pos} fails its CRC"
        if kind == b"IEND":
            return None
        pos = end
    return None
