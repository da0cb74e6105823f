"""Issue 13 (notebook): what a researcher sees in Jupyter, on the emulator with real models.

Jupyter shows an object through its ``_repr_html_``; these tests call it as Jupyter does and
check the page holds the numbers and pictures the object carries.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from pad_assets import CachedDataset, CustomModelAdapter
from pad_assets.devtools.emulator import DRUGS, Emulator
from pad_assets.store import ContentStore
from pad_assets_tests.model_fixtures import write_tiny_onnx

DATASET = "FHI2020_Stratified_Sampling"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _open_shards(ds: CachedDataset) -> int:
    return len(ds.store._reader._files)


def test_dataset_context_manager_summary_and_report_in_a_notebook(
        pad_env: Emulator, tmp_path: Path) -> None:
    models = [CustomModelAdapter(write_tiny_onnx(tmp_path / f"m{seed}.onnx", seed=seed),
                                 labels=list(DRUGS[:5]), name=f"tiny_{seed}")
              for seed in (0, 1)]
    with CachedDataset(DATASET, progress=False) as ds:
        summary = ds.download_and_cache()
        report = ds.compare_models(models, n_bootstrap=200)
        assert ds.derived._pool is not None and _open_shards(ds) > 0  # work was done
        assert ds.store.index._local.con is not None
    # leaving the block closed the worker pool, the shard files and the index connection
    assert ds.derived._pool is None and _open_shards(ds) == 0
    assert ds.store.index._local.con is None

    page = summary._repr_html_()
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert cells[:2] == [str(summary.total), f"{len(summary.downloaded)} "
                         f"({summary.bytes_downloaded / 1e6:.1f} MB)"]
    assert summary.total == 48 and DATASET in page
    failed = sorted(summary.failed)
    assert all(f"<td>{c}</td>" in page for c in failed)  # each failure listed with its reason

    view = report._repr_html_()
    assert report.n_items > 0 and f"<b>{report.n_items}</b>" in view
    assert set(report.models) == {"tiny_0", "tiny_1"}
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", view)
    assert len(pngs) == len(report.figures) >= 4  # summary, differences, per class, 2 x conf.
    assert all(base64.b64decode(p).startswith(PNG_MAGIC) for p in pngs)
    assert "paired_differences.png" in report.figures
    assert "tiny_0 - tiny_1" in str(report) and "newcombe" in str(report)


def test_a_dataset_closes_only_a_store_it_opened(pad_env: Emulator, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "shared_cache")
    with CachedDataset(DATASET, store=store, progress=False) as ds:
        ds.download_and_cache(card_ids=ds.manifest().rows["card_id"][:3].tolist())
    # the caller's store still serves (its index connection is still open)
    assert store.index._local.con is not None
    assert len(store.cards(DATASET)) == 3
    store.close()
    with pytest.raises(ZeroDivisionError), CachedDataset(DATASET, progress=False) as ds2:
        _ = 1 / 0  # an error inside the block still closes, and is not swallowed
    assert ds2.derived._pool is None
