"""Compressed storage of preprocessed arrays and tensors (issue 19): lossless, the same
blob ids (keys are of content, not of bytes on disk), ~2x smaller on real card crops,
only for image-like layers, and shards written before it still read."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pad_assets.errors import CacheCorruptionError
from pad_assets.preprocessing import PADNeuralNetworkPipeline
from pad_assets.store import ContentStore, NewItem
from pad_assets.store import shards as shard_io

REAL = Path(__file__).resolve().parents[1] / "data" / "real"


@pytest.fixture(scope="module")
def cards() -> dict[str, bytes]:
    return {n: (REAL / f"{n}_processed.png").read_bytes() for n in ("19208", "25834")}


def _stored_sizes(store: ContentStore) -> dict[str, int]:
    out = {}
    for rel in store.index.shard_paths().values():
        with h5py.File(store.root / rel, "r", locking=False) as f:
            for blob, ds in f[shard_io.BLOBS_GROUP].items():
                out[blob] = int(ds.id.get_storage_size())
    return out


def test_compressed_arrays_read_back_exactly_under_the_same_keys(tmp_path: Path,
                                                                 cards: dict[str, bytes]) -> None:
    arrays = {n: PADNeuralNetworkPipeline().run(cards[n])[0] for n in ("19208", "25834")}
    plain, packed = ContentStore(tmp_path / "plain", compress=False), ContentStore(tmp_path / "z")
    for store in (plain, packed):
        store.put([NewItem(f"pre-{n}", "preprocessed", a, {}) for n, a in arrays.items()]
                  + [NewItem(f"ten-{n}", "tensor", a, {}) for n, a in arrays.items()])
    keys = [f"{p}-{n}" for p in ("pre", "ten") for n in arrays]
    assert ({k: e["blob"] for k, e in plain.entries(keys).items()}
            == {k: e["blob"] for k, e in packed.entries(keys).items()})
    for store in (plain, packed):
        got = store.get_many(keys)
        for k in keys:
            assert np.array_equal(got[k], arrays[k.split("-")[1]])
    size_plain, size_packed = sum(_stored_sizes(plain).values()), sum(_stored_sizes(packed).values())
    assert size_plain == sum(a.nbytes for a in arrays.values())  # one blob per array
    assert size_plain / size_packed >= 1.5  # the real cards' crops, losslessly
    for store in (packed, plain):  # the index rebuilds from compressed shards too
        store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "z" / ("index.sqlite3" + suffix)).unlink(missing_ok=True)
    rebuilt = ContentStore(tmp_path / "z")
    assert np.array_equal(rebuilt.get("ten-25834"), arrays["25834"])
    rebuilt.close()


def test_only_image_like_layers_are_compressed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    store = ContentStore(tmp_path)
    store.put([NewItem("raw", "raw", big.tobytes(), {}),
               NewItem("pre", "preprocessed", big + 1, {}),
               NewItem("small", "tensor", big[:10, :10] + 2, {}),
               NewItem("float", "tensor", big.astype(np.float32) + 3, {})])
    codecs = {}
    for rel in store.index.shard_paths().values():
        with h5py.File(tmp_path / rel, "r", locking=False) as f:
            for blob, ds in f[shard_io.BLOBS_GROUP].items():
                codecs[blob] = ds.attrs.get(shard_io.CODEC_ATTR, "")
    by_key = {k: codecs[e["blob"]] for k, e in store.entries(["raw", "pre", "small", "float"]).items()}
    assert by_key == {"raw": "", "pre": shard_io.DELTA_ZSTD, "small": "", "float": ""}


def test_shards_written_before_compression_still_read(tmp_path: Path) -> None:
    a = np.arange(454 * 454 * 3, dtype=np.uint32).astype(np.uint8).reshape(454, 454, 3)
    store = ContentStore(tmp_path)
    store.put([NewItem("t", "tensor", a, {})])
    rel, blob = store.entries(["t"])["t"]["path"], store.entries(["t"])["t"]["blob"]
    store.close()
    with h5py.File(tmp_path / rel, "r+", locking=False) as f:  # as the previous version wrote
        del f[shard_io.BLOBS_GROUP][blob]
        ds = f[shard_io.BLOBS_GROUP].create_dataset(blob, data=a, chunks=a.shape)
        ds.attrs["kind"] = "array"
    assert np.array_equal(ContentStore(tmp_path).get("t"), a)


def test_an_unknown_codec_is_refused_naming_it(tmp_path: Path) -> None:
    a = np.tile(np.arange(256, dtype=np.uint8), (300, 3))
    store = ContentStore(tmp_path)
    store.put([NewItem("t", "tensor", a, {})])
    e = store.entries(["t"])["t"]
    store.close()
    with h5py.File(tmp_path / e["path"], "r+", locking=False) as f:
        f[shard_io.BLOBS_GROUP][e["blob"]].attrs[shard_io.CODEC_ATTR] = "zfp-from-the-future"
    with pytest.raises(CacheCorruptionError, match="zfp-from-the-future"):
        ContentStore(tmp_path).get("t")




def test_the_codec_is_chosen_at_its_documented_bounds() -> None:
    """``codec_for``: unsigned, at least 2-D, at least 2 rows, ``MIN_CODEC_BYTES`` and 256
    values per row; one step below any bound is stored as is (the store's mutation run
    found each bound unpinned)."""
    rows, per_row = 2, shard_io.MIN_CODEC_BYTES // 2
    at = np.zeros((rows, per_row), np.uint8)  # exactly MIN_CODEC_BYTES, 2 rows
    assert at.nbytes == shard_io.MIN_CODEC_BYTES
    assert shard_io.codec_for(at) == shard_io.DELTA_ZSTD
    assert shard_io.codec_for(np.zeros((2, per_row - 1), np.uint8)) == ""  # 1 byte short
    assert shard_io.codec_for(np.zeros((1, 2 * per_row), np.uint8)) == ""  # one row
    assert shard_io.codec_for(np.zeros(2 * per_row, np.uint8)) == ""  # 1-D
    assert shard_io.codec_for(np.zeros((rows, per_row), np.int8)) == ""  # signed
    assert shard_io.codec_for(np.zeros((rows, per_row // 2), np.uint16)) == shard_io.DELTA_ZSTD
    # 256 values per row is enough, 255 is not (a tall, narrow array)
    assert shard_io.codec_for(np.zeros((256, 256), np.uint8)) == shard_io.DELTA_ZSTD
    assert shard_io.codec_for(np.zeros((1024, 255), np.uint8)) == ""
    # 3-D image crops count every value of a row: 454 x 454 x 3
    assert shard_io.codec_for(np.zeros((454, 454, 3), np.uint8)) == shard_io.DELTA_ZSTD
