"""``get_preprocessed_batch(card_ids=)`` as a researcher uses it: a few cards of a dataset,
in the order asked for, from the ids a notebook has at hand (a list, decimal strings, a
pandas column or a NumPy array of the manifest's ids); an id the dataset does not publish
is an error naming it, before anything is downloaded.

Real emulator over HTTP on 127.0.0.1, real HDF5 store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator
from pad_assets.errors import InvalidInputError
from pad_assets.preprocessing.base import FunctionPipeline
from pad_assets.settings import Settings
from pad_assets_tests.conftest import make_config

DS = "batch_ids"
IDS = list(range(71000, 71012))
#: pinned splits, so the test knows which card is where
SPLITS = {c: ("test" if i % 3 == 0 else "dev") for i, c in enumerate(IDS)}


@pytest.fixture(scope="module")
def emu():
    with Emulator(make_config([DatasetSpec(DS, IDS, splits=SPLITS)], models=[])) as e:
        yield e


def _thumb(image: Image.Image, side: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((side, side)))


PIPE = FunctionPipeline(_thumb, name="thumb", code_version="1", side=24)


def _dataset(emu: Emulator, cache: Path) -> CachedDataset:
    return CachedDataset(DS, settings=Settings(cache_dir=cache, api_url=emu.base_url,
                                               registry_url=emu.registry_url, http_retries=1),
                         progress=False)


def _stream(ds: CachedDataset, **kwargs) -> tuple[list[int], np.ndarray]:
    batches = list(ds.get_preprocessed_batch(PIPE, **kwargs))
    ids = [c for b in batches for c in b.card_ids]
    arrays = np.concatenate([b.arrays for b in batches]) if batches else np.empty((0,))
    return ids, arrays


def test_card_ids_stream_those_cards_in_the_order_asked(emu: Emulator, tmp_path: Path) -> None:
    ds = _dataset(emu, tmp_path / "c")
    wanted = [IDS[7], IDS[2], IDS[10]]
    emu.reset_stats()
    ids, arrays = _stream(ds, batch_size=2, card_ids=wanted)
    assert ids == wanted
    assert emu.stats()["image"] == len(wanted)  # only those cards were downloaded
    assert arrays.shape == (3, 24, 24, 3) and arrays.dtype == np.uint8
    # each array is its own card's: the same card streamed alone gives the same pixels
    for card, arr in zip(wanted, arrays, strict=True):
        alone, got = _stream(ds, card_ids=[card])
        assert alone == [card] and np.array_equal(got[0], arr), card
    assert len({a.tobytes() for a in arrays}) == len(wanted)  # the cards are not alike
    # the ids a notebook has: decimal strings, a repeat, a pandas column of the manifest
    assert _stream(ds, card_ids=[str(IDS[2]), IDS[7], IDS[2]])[0] == [IDS[2], IDS[7]]
    rows = ds.manifest().rows
    column = rows.loc[rows["split"] == "test", "card_id"]
    ids, _ = _stream(ds, card_ids=column)
    assert ids == [c for c in IDS if SPLITS[c] == "test"]
    assert _stream(ds, card_ids=column.to_numpy()[::-1])[0] == ids[::-1]  # NumPy ints
    # with a split, the ids are chosen within it
    assert _stream(ds, split="dev", card_ids=[IDS[4], IDS[1]])[0] == [IDS[4], IDS[1]]
    assert _stream(ds, card_ids=[])[0] == []
    ds.close()


def test_unknown_card_ids_are_named_before_any_download(emu: Emulator, tmp_path: Path) -> None:
    ds = _dataset(emu, tmp_path / "c")
    ds.manifest()
    emu.reset_stats()
    with pytest.raises(InvalidInputError) as exc:
        next(ds.get_preprocessed_batch(PIPE, card_ids=[IDS[0], 99, 71999]))
    assert f"card id(s) [99, 71999] are not in the manifest of {DS!r}" in str(exc.value)
    assert str(IDS[0]) not in str(exc.value)
    # a card of the dataset, but not of the split asked for
    with pytest.raises(InvalidInputError, match=rf"\[{IDS[0]}\] are not in the manifest of "
                                                rf"'{DS}' \(split 'dev'\)"):
        next(ds.get_preprocessed_batch(PIPE, split="dev", card_ids=[IDS[1], IDS[0]]))
    for bad in ("../71000", 1.5, True):
        with pytest.raises(InvalidInputError, match="expected a non-negative integer"):
            next(ds.get_preprocessed_batch(PIPE, card_ids=[bad]))
    assert emu.stats()["image"] == 0
    assert ds.store.cards(DS) == {}
    ds.close()
