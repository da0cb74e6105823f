"""gc's two promises that no other test could see broken (issue 18's planted bugs):

- the weights a cached model record vouches for stay, however old, while that record is
  referenced (else an offline ``PADTensorFlowAdapter(model_id=...)`` breaks after a gc);
- a shard that gc rewrote stays readable for the grace period, so a reader that looked up
  an item's place a moment before the rewrite still reads it.

Both run on a real store and real shard files; the second one replaces the race of a
reader process against gc with a deterministic hook: gc's wait for the grace period is
where the reader reads.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from pad_assets import maintenance as mt
from pad_assets.cli import main
from pad_assets.devtools.emulator import DatasetSpec, Emulator, ModelArtifact
from pad_assets.hashing import sha256_bytes
from pad_assets.maintenance import rewrite as rewrite_module
from pad_assets.settings import Settings
from pad_assets.sources.model_artifacts import resolve_model
from pad_assets.store import CardRecord, ContentStore, NewItem
from pad_assets_tests.conftest import make_config

MODEL_ID = 951
WEIGHTS = b"weights of model 951 " * 500


@pytest.fixture(scope="module")
def emu():
    model = ModelArtifact(record={"id": MODEL_ID, "name": "gc_guard", "type": "tf_lite",
                                  "labels": ["a", "b"], "version": "1"},
                          filename="gc_guard.tflite", data=WEIGHTS)
    with Emulator(make_config([DatasetSpec("gcG", [53500])], models=[model])) as e:
        yield e


def _age_everything(store: ContentStore, days: float) -> None:
    old = time.time() - days * 86400
    with store.index.transaction() as con:
        con.execute("UPDATE items SET last_used=?, created=?", (old, old))


def test_gc_keeps_the_weights_of_a_referenced_model_record(emu: Emulator, tmp_path: Path
                                                           ) -> None:
    settings = Settings(cache_dir=tmp_path / "c", api_url=emu.base_url,
                        registry_url=emu.registry_url, http_retries=1)
    store = ContentStore(settings.cache_dir)
    resolved = resolve_model(MODEL_ID, settings, store=store)
    assert resolved.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    # control: weights no record names (a model whose record moved on) go on the same terms
    orphan = b"weights nobody references " * 500
    store.put([NewItem(sha256_bytes(orphan), "weights", orphan, {"model_id": 1})])
    _age_everything(store, 40)

    report = mt.gc(store, older_than="30d", grace_seconds=0.0)

    assert report.evicted == {"weights": 1}, report.evicted
    assert store.has([sha256_bytes(orphan)]) == set()
    assert store.has([resolved.sha256]) == {resolved.sha256}
    assert report.protected == {"target of a model-record ref": 1,
                                "weights of a model record": 1}
    # as a user sees it: the model still resolves offline, from the cache alone
    offline = Settings(cache_dir=settings.cache_dir, api_url=emu.base_url,
                       registry_url=emu.registry_url, offline=True)
    resolved.weights_path.unlink()  # the artifact copy is rebuilt from the store
    emu.reset_stats()
    again = resolve_model(MODEL_ID, offline, store=ContentStore(settings.cache_dir))
    assert again.weights_path.read_bytes() == WEIGHTS and emu.stats()["total"] == 0
    assert mt.verify(store).ok


def test_an_unreadable_model_record_keeps_every_weights_file(tmp_path: Path) -> None:
    """gc cannot tell which weights a record it cannot parse vouches for, so it keeps them
    all (and says why) rather than guess; a ref whose target is gone does not stop it."""
    store = ContentStore(tmp_path / "c")
    blobs = [b"weights one " * 300, b"weights two " * 300]
    broken = b'{"SHA256": "not json after all'
    store.put([NewItem(sha256_bytes(w), "weights", w, {}) for w in blobs]
              + [NewItem(sha256_bytes(broken), "model_record", broken, {"model_id": 7})],
              refs=[("model-record/emu/7", sha256_bytes(broken)), ("manifest/gone", "0" * 64)])
    _age_everything(store, 40)

    report = mt.gc(store, older_than="30d", grace_seconds=0.0)

    assert report.evicted == {}, report.evicted
    assert report.protected == {"target of a model-record ref": 1,
                                "weights (model record unreadable)": 2}
    assert store.has([sha256_bytes(w) for w in blobs]) == {sha256_bytes(w) for w in blobs}


def _mixed_shards(store: ContentStore, rounds: int = 3) -> tuple[list[str], list[str]]:
    """Shards that each hold items of a kept dataset and (larger) items of another one."""
    rng = np.random.default_rng(7)
    keep, drop = [], []
    for r in range(rounds):
        items, cards = [], []
        for i in range(3):
            small = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
            big = rng.integers(0, 256, 60_000, dtype=np.uint8).tobytes()
            ks, kb = sha256_bytes(small), sha256_bytes(big)
            items += [NewItem(ks, "raw", small, {}), NewItem(kb, "raw", big, {})]
            cards += [CardRecord("keep", r * 10 + i, ks, "ok"),
                      CardRecord("drop", r * 10 + i, kb, "ok")]
            keep.append(ks)
            drop.append(kb)
        store.put(items, cards=cards)
    return keep, drop


class _GraceClock:
    """The maintenance code's clock (``rewrite.time``): ``sleep`` advances it instead of
    sleeping, and is the moment a reader that looked up old places reads them."""

    def __init__(self, on_sleep) -> None:
        self.offset = 0.0
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def time(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.on_sleep()
        self.slept.append(seconds)
        self.offset += seconds


@pytest.mark.parametrize("how", ["api", "cli"])
def test_a_reader_that_looked_up_before_gc_reads_during_the_grace_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``api``: ``gc(grace_seconds=5)``; ``cli``: ``pad-assets cache gc`` as a user runs it,
    with the default grace period (a default of 0 would fail here)."""
    store = ContentStore(tmp_path / "c")
    keep, drop = _mixed_shards(store)
    # Another reader (its own index connection and file handles, as another process has)
    # has looked up where the kept items are, and has not opened those files yet.
    reader = ContentStore(tmp_path / "c")
    looked_up = reader.entries(keep)
    old_paths = {e["path"] for e in looked_up.values()}
    reads: list[dict[str, bool]] = []

    def reader_reads_old_places() -> None:
        got = {k: reader._read_verified(k, e) for k, e in looked_up.items()}
        reads.append({k: sha256_bytes(v) == k for k, v in got.items()})

    clock = _GraceClock(reader_reads_old_places)
    monkeypatch.setattr(rewrite_module, "time", clock)
    if how == "api":
        grace = 5.0
        report = mt.gc(store, keep_datasets=["keep"], grace_seconds=grace)
        assert report.evicted == {"raw": len(drop)}
        assert report.protected == {"kept dataset": len(keep)}
        assert report.compacted, "nothing was rewritten: the test would prove nothing"
    else:
        grace = mt.DEFAULT_GRACE_SECONDS
        assert main(["cache", "gc", "--cache-dir", str(store.root), "--keep-dataset", "keep",
                     "--json"]) == 0
        assert store.has(drop) == set()
        out = json.loads(capsys.readouterr().out)  # what a script reads (mutation survivor)
        assert out["evicted"] == {"raw": len(drop)} and out["target_met"] is True
        assert out["protected"] == {"kept dataset": len(keep)} and out["dry_run"] is False

    assert reads, "gc deleted the rewritten shards without waiting out the grace period"
    assert all(all(r.values()) and len(r) == len(keep) for r in reads)
    assert sum(clock.slept) >= grace * 0.5
    # after the grace period the old files are gone and the items live in the new shard
    assert not any((store.root / p).exists() for p in old_paths)
    fresh = ContentStore(tmp_path / "c").get_many(keep)
    assert {sha256_bytes(v) for v in fresh.values()} == set(keep)
    assert mt.verify(store).ok
