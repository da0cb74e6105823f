"""Offline work on a cached dataset, and hostile input that must be refused cleanly.

Offline (``offline=True`` or ``PAD_OFFLINE=1``): with the emulator stopped and every socket
connection guarded, work on cached data runs (manifest, preprocessed batches, warm
``apply_model`` with zero HTTP requests and zero inference), and whatever is not cached is
listed in ONE ``OfflineError``.

Hostile input: traversal in dataset names and partition keys, foreign schemes and hosts in
a manifest, decompression-bomb PNGs, weights whose sha256 does not match their record,
oversized and malformed manifests. Each is refused with a typed error naming the input,
nothing is cached from it, and nothing already cached is lost.

Four tests here first pinned bugs as strict xfails (URL parser tricks and ports, a refused
model's record being cached, untyped card-id errors, ids beyond int64); all are fixed.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import ImageFile

import pad_assets.sources.registry as registry
from pad_assets.cli import main as cli_main
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator, EmulatorConfig, ModelArtifact
from pad_assets.errors import (
    IntegrityError,
    InvalidInputError,
    ManifestError,
    OfflineError,
    UnknownDatasetError,
)
from pad_assets.models import PADTensorFlowAdapter, PLSModelAdapter
from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline
from pad_assets.provenance.audit import export_audit
from pad_assets.provenance.lineage import card_lineage
from pad_assets.settings import Settings
from pad_assets.sources.pad_api import http_client_for
from pad_assets.sources.registry import RegistryClient
from pad_assets.store import ContentStore
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

OFFLINE_DS = "offline8"
OFFLINE_CARDS = list(range(63000, 63008))
PARTIAL = OFFLINE_CARDS[:3]  # the partial cache holds only these images
GOOD_DS = "good3"  # cached before each hostile input: it must survive untouched
GOOD_CARDS = [64000, 64001, 64002]
SPARE_CARD = 64100  # servable, never cached: the one legitimate row of hostile manifests
BOMB_DS = "bombs"
BOMB_OK, BOMB_HEADER, BOMB_REAL = 65001, 65002, 65003
MODEL_ID, BAD_TFLITE_ID, BAD_PLS_ID = 81, 82, 83
HEADER = "id,sample_id,sample_name,quantity,camera_type_1,url,hashlib_md5,image_name"
COMPARE = ["card_id", "prediction", "probability", "energy", "status", "raw_key",
           "preprocessed_key", "tensor_key", "prediction_key", "model_signature"]


# ---------------------------------------------------------------------------- network guard
class NetGuard:
    """Records (and refuses) every connection or name lookup not explicitly allowed."""

    def __init__(self) -> None:
        self.allowed: set[tuple[str, int]] = set()
        self.attempts: list[Any] = []

    def allow(self, url: str) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.allowed.add((parts.hostname or "", int(parts.port or 80)))

    def ok(self, host: Any, port: Any) -> bool:
        try:
            return (str(host), int(port)) in self.allowed
        except (TypeError, ValueError):
            return False


@pytest.fixture
def net_guard(monkeypatch: pytest.MonkeyPatch) -> NetGuard:
    """Block ``socket.socket.connect``/``connect_ex``, ``create_connection`` and
    ``getaddrinfo`` for every address not allowed; record each attempt."""
    guard = NetGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create = socket.create_connection
    real_getaddrinfo = socket.getaddrinfo

    def blocked(what: Any) -> OSError:
        guard.attempts.append(what)
        return OSError(f"network access blocked by the test: {what!r}")

    def connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and guard.ok(address[0], address[1]):
            return real_connect(sock, address)
        raise blocked(address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and guard.ok(address[0], address[1]):
            return real_connect_ex(sock, address)
        raise blocked(address)

    def create_connection(address: Any, *a: Any, **k: Any) -> Any:
        if guard.ok(address[0], address[1]):
            return real_create(address, *a, **k)
        raise blocked(address)

    def getaddrinfo(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        if guard.ok(host, port or 80):
            return real_getaddrinfo(host, port, *a, **k)
        raise blocked(("getaddrinfo", host, port))

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return guard


# ---------------------------------------------------------------------------- helpers
def _settings(url: str, registry_url: str, cache: Path, **kw: Any) -> Settings:
    kw.setdefault("http_retries", 1)
    return Settings(cache_dir=cache, api_url=url, registry_url=registry_url, **kw)


def snapshot(cache: Path) -> dict[str, Any]:
    """Everything the index holds: item keys, refs and card records."""
    store = ContentStore(cache)
    try:
        return {
            "items": {r[0]: r[1] for r in store.index.query("SELECT key, layer FROM items")},
            "refs": store.index.refs(),
            "cards": sorted(store.index.query(
                "SELECT dataset, card_id, raw_key, status FROM cards")),
        }
    finally:
        store.close()


def assert_nothing_lost(before: dict[str, Any], after: dict[str, Any],
                        added_layers: frozenset[str] = frozenset()) -> None:
    """Every item, ref and card of ``before`` is still there, unchanged; new items are only
    of ``added_layers``."""
    assert set(before["items"]) <= set(after["items"]), "cached items were lost"
    assert {k: v for k, v in after["refs"].items() if k in before["refs"]} == before["refs"]
    assert set(before["cards"]) <= set(after["cards"])
    new = {after["items"][k] for k in set(after["items"]) - set(before["items"])}
    assert new <= added_layers, f"unexpected new items of layers {new - added_layers}"


def png_bomb(width: int, height: int, full: bool) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels.

    ``full=True`` is a real bomb: the IDAT holds every (all-zero) row, ~1000:1 compressed,
    so decoding it would allocate width * height * 3 bytes. ``full=False`` holds 16 rows
    only (a truncated stream that tolerant decoding would still try to expand).
    """

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + 3 * width)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height if full else 16)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _tiny_artifact(model_id: int, data: bytes, name: str = "tiny_nn",
                   mtype: str = "tf_lite", filename: str = "tiny.tflite") -> ModelArtifact:
    return ModelArtifact({"id": model_id, "name": name, "type": mtype,
                          "labels": TINY_DRUG_LABELS}, filename, data)


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    return df[COMPARE].sort_values("card_id").reset_index(drop=True)


def _counting(model: Any) -> list[int]:
    """Wrap ``model.predict_batch`` (instance attribute) and return its call log."""
    calls: list[int] = []
    original = model.predict_batch

    def predict_batch(x: Any, contexts: Any = None) -> Any:
        calls.append(len(x))
        return original(x, contexts)

    model.predict_batch = predict_batch
    return calls


# ---------------------------------------------------------------------------- offline world
@pytest.fixture(scope="module")
def offline_world(tmp_path_factory: pytest.TempPathFactory,
                  tiny_tflite_path: Path) -> dict[str, Any]:
    """A warm cache and a partial cache made online, then the emulator is STOPPED."""
    base = tmp_path_factory.mktemp("offline_world")
    config = EmulatorConfig(datasets=[DatasetSpec(OFFLINE_DS, OFFLINE_CARDS)],
                            models_provider=lambda: [
                                _tiny_artifact(MODEL_ID, tiny_tflite_path.read_bytes())])
    emu = Emulator(config)
    emu.start()
    try:
        warm = base / "warm"
        s = _settings(emu.base_url, emu.registry_url, warm)
        ds = CachedDataset(OFFLINE_DS, settings=s, progress=False)
        by_id = PADTensorFlowAdapter(model_id=MODEL_ID, settings=s)
        by_path = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
        reference = _frame(ds.apply_model(by_id))
        ds.apply_model(by_path)
        batches = list(ds.get_preprocessed_batch(PADNeuralNetworkPipeline(), batch_size=3))
        ds.close()
        partial = base / "partial"
        ds = CachedDataset(OFFLINE_DS, settings=_settings(emu.base_url, emu.registry_url,
                                                         partial), progress=False)
        ds.download_and_cache(card_ids=PARTIAL)
        ds.close()
        urls = {c: emu.image_url(c) for c in OFFLINE_CARDS}
    finally:
        emu.stop()
    assert not emu.running
    return {"base_url": emu.base_url, "registry_url": emu.registry_url, "warm": warm,
            "partial": partial, "reference": reference, "urls": urls,
            "batches": batches, "tiny": tiny_tflite_path}


def _offline_dataset(world: dict[str, Any], template: str, tmp_path: Path, mode: str,
                     monkeypatch: pytest.MonkeyPatch) -> CachedDataset:
    cache = tmp_path / "cache"
    shutil.copytree(world[template], cache)
    if mode == "flag":
        monkeypatch.delenv("PAD_OFFLINE", raising=False)
        s = _settings(world["base_url"], world["registry_url"], cache, offline=True)
        return CachedDataset(OFFLINE_DS, settings=s, progress=False)
    monkeypatch.setenv("PAD_OFFLINE", "1")
    monkeypatch.setenv("PAD_API_URL", world["base_url"])
    monkeypatch.setenv("PAD_REGISTRY_URL", world["registry_url"])
    monkeypatch.setenv("PAD_CACHE_DIR", str(cache))
    return CachedDataset(OFFLINE_DS, progress=False)


@pytest.mark.parametrize("mode", ["flag", "env"])
def test_cached_work_runs_offline_without_any_network_or_inference(
        mode: str, offline_world: dict[str, Any], tmp_path: Path, net_guard: NetGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _offline_dataset(offline_world, "warm", tmp_path, mode, monkeypatch)
    assert ds.settings.offline is True
    before = snapshot(ds.settings.cache_dir)

    assert ds.manifest().card_ids == OFFLINE_CARDS
    batches = list(ds.get_preprocessed_batch(PADNeuralNetworkPipeline(), batch_size=3))
    assert [b.card_ids for b in batches] == [b.card_ids for b in offline_world["batches"]]
    for got, want in zip(batches, offline_world["batches"], strict=True):
        assert (got.arrays == want.arrays).all()

    settings = ds.settings if mode == "flag" else None  # env mode: Settings.from_env()
    by_id = PADTensorFlowAdapter(model_id=MODEL_ID, settings=settings)  # record + weights cached
    by_path = PADTensorFlowAdapter(model_path=offline_world["tiny"], labels=TINY_DRUG_LABELS)
    for model in (by_id, by_path):
        calls = _counting(model)
        df = ds.apply_model(model)
        assert calls == [], "a warm apply_model ran inference"
        assert df["cached"].all()
        pd.testing.assert_frame_equal(_frame(df), offline_world["reference"], check_exact=True)
        assert not model.interpreter_loaded  # not even an interpreter was built
    # provenance works offline too
    assert card_lineage(ds, OFFLINE_CARDS[0], by_id)["prediction"]["status"] == "present"
    export_audit(ds, tmp_path / "audit")

    assert ds._http.stats.requests == 0
    assert net_guard.attempts == []
    assert snapshot(ds.settings.cache_dir) == before  # read-only work wrote nothing
    ds.close()


def test_offline_makes_no_request_even_with_the_server_up(tiny_tflite_path: Path,
                                                         tmp_path: Path) -> None:
    config = EmulatorConfig(datasets=[DatasetSpec(OFFLINE_DS, OFFLINE_CARDS[:4])],
                            models_provider=lambda: [])
    model = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    with Emulator(config) as emu:
        online = CachedDataset(OFFLINE_DS, settings=_settings(emu.base_url, emu.registry_url,
                                                              tmp_path), progress=False)
        reference = _frame(online.apply_model(model))
        online.close()
        emu.reset_stats()
        off = CachedDataset(OFFLINE_DS, settings=_settings(emu.base_url, emu.registry_url,
                                                           tmp_path, offline=True),
                            progress=False)
        calls = _counting(model)
        df = off.apply_model(model)
        off.download_and_cache()  # incremental and offline: nothing to do, nothing asked
        off.close()
        assert emu.stats()["total"] == 0
    assert calls == []
    pd.testing.assert_frame_equal(_frame(df), reference, check_exact=True)


@pytest.mark.parametrize("mode", ["flag", "env"])
def test_everything_missing_offline_is_listed_in_one_error(
        mode: str, offline_world: dict[str, Any], tmp_path: Path, net_guard: NetGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _offline_dataset(offline_world, "partial", tmp_path, mode, monkeypatch)
    before = snapshot(ds.settings.cache_dir)
    missing = [c for c in OFFLINE_CARDS if c not in PARTIAL]
    model = PADTensorFlowAdapter(model_path=offline_world["tiny"], labels=TINY_DRUG_LABELS)
    calls = _counting(model)
    for work in (lambda: ds.apply_model(model), ds.download_and_cache,
                 lambda: list(ds.get_preprocessed_batch(PADNeuralNetworkPipeline()))):
        with pytest.raises(OfflineError) as err:
            work()
        assert len(err.value.missing) == len(missing)
        for cid, entry in zip(missing, sorted(err.value.missing), strict=True):
            assert entry.startswith(f"card {cid} ")
            assert offline_world["urls"][cid].split("//", 2)[-1] in entry  # names the URL
        assert "offline mode" in str(err.value) and "PAD_OFFLINE" in str(err.value)
    assert calls == []
    # the cached part is still usable: ask for exactly the cached cards
    df = ds.apply_model(model, card_ids=PARTIAL)
    assert list(df["status"]) == ["ok"] * len(PARTIAL)
    # a model that was never fetched, and a dataset never seen, fail the same clear way
    settings = ds.settings if mode == "flag" else None
    with pytest.raises(OfflineError, match="neural-networks/99") as err:
        PADTensorFlowAdapter(model_id=99, settings=settings)
    assert len(err.value.missing) == 1
    other = CachedDataset("never_seen", settings=ds.settings, progress=False)
    with pytest.raises(OfflineError, match="never_seen"):
        other.manifest()
    other.close()
    assert net_guard.attempts == []
    assert_nothing_lost(before, snapshot(ds.settings.cache_dir),
                        frozenset({"preprocessed", "tensor", "prediction"}))
    ds.close()


# ---------------------------------------------------------------------------- hostile world
@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory,
            tiny_tflite_path: Path) -> Iterator[Emulator]:
    images = tmp_path_factory.mktemp("bomb_images")
    (images / f"{BOMB_HEADER}_processed.png").write_bytes(png_bomb(30000, 30000, full=False))
    (images / f"{BOMB_REAL}_processed.png").write_bytes(png_bomb(7000, 6000, full=True))
    config = EmulatorConfig(
        datasets=[DatasetSpec(GOOD_DS, GOOD_CARDS), DatasetSpec("spare", [SPARE_CARD]),
                  DatasetSpec(BOMB_DS, [BOMB_OK, BOMB_HEADER, BOMB_REAL])],
        real_images_dir=images,
        models_provider=lambda: [_tiny_artifact(MODEL_ID, tiny_tflite_path.read_bytes())])
    with Emulator(config) as emu:
        yield emu


@pytest.fixture
def good_cache(hostile: Emulator, tmp_path: Path) -> Path:
    """A cache that already holds the good3 dataset (what hostile input must not harm)."""
    cache = tmp_path / "cache"
    ds = CachedDataset(GOOD_DS, settings=_settings(hostile.base_url, hostile.registry_url,
                                                   cache), progress=False)
    assert not ds.download_and_cache().failed
    ds.close()
    return cache


def _local_registry(tmp_path: Path, name: str, files: dict[str, bytes | str]) -> str:
    folder = tmp_path / "registry" / name
    folder.mkdir(parents=True)
    for fname, data in files.items():
        (folder / fname).write_bytes(data.encode() if isinstance(data, str) else data)
    return str(tmp_path / "registry")


BAD_NAMES = ["../x", "a/b", "..", "./x", "/etc/passwd", "x/../../y", "a\\b", "", " ", "..x",
             "x" * 200, "nul\x00byte", "~root"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_dataset_names_that_try_traversal_are_refused(bad: str, hostile: Emulator,
                                                      tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    s = _settings(hostile.base_url, str(tmp_path / "registry"), cache)
    with pytest.raises(InvalidInputError, match="invalid dataset name") as err:
        CachedDataset(bad, settings=s)
    assert repr(bad)[:40] in str(err.value)
    with pytest.raises(InvalidInputError):
        RegistryClient(s, http_client_for(s)).load(bad)
    assert cli_main(["lineage", bad, "1", "--json", "--cache-dir", str(cache)]) == 1
    assert not cache.exists()  # refused before anything was created


@pytest.mark.parametrize("key", ["../x", "a/b", "..", "1/../2", "-1", "1e3"])
def test_partition_keys_that_are_not_card_ids_are_refused(key: str, hostile: Emulator,
                                                          good_cache: Path) -> None:
    before = snapshot(good_cache)
    ds = CachedDataset(GOOD_DS, settings=_settings(hostile.base_url, hostile.registry_url,
                                                   good_cache), progress=False)
    with pytest.raises(InvalidInputError, match="card id"):
        card_lineage(ds, key)
    with pytest.raises(ValueError, match=re.escape(key)):
        ds.download_and_cache(card_ids=[key])  # type: ignore[list-item]
    ds.close()
    assert snapshot(good_cache) == before


def test_partition_key_errors_are_typed(hostile: Emulator, good_cache: Path) -> None:
    ds = CachedDataset(GOOD_DS, settings=_settings(hostile.base_url, hostile.registry_url,
                                                   good_cache), progress=False)
    try:
        with pytest.raises(InvalidInputError, match="card id"):
            ds.download_and_cache(card_ids=["../x"])  # type: ignore[list-item]
    finally:
        ds.close()


FOREIGN_URLS = {
    1: "https://evil.example.com/x.png",
    2: "file:///etc/passwd",
    3: "ftp://127.0.0.1/x.png",
    4: "gopher://127.0.0.1:70/_x",
    5: "javascript:alert(1)",
    6: "//evil.example.com/x.png",
    7: "http://127.0.0.1@evil.example.com/x.png",
    8: "/var/www/html/images/padimages/processed/../../../../../etc/passwd",
    9: "http://[::1]/x.png",
    10: "data:image/png;base64,iVBORw0KGgo=",
}


def test_manifest_urls_with_other_schemes_or_hosts_are_refused(
        hostile: Emulator, good_cache: Path, tmp_path: Path, net_guard: NetGuard) -> None:
    net_guard.allow(hostile.base_url)
    good = hostile.image_url(SPARE_CARD)
    rows = [f"{SPARE_CARD},1,amoxicillin,100,P,{good},,a.png"]
    rows += [f'{cid},1,amoxicillin,100,P,"{url}",,x.png' for cid, url in FOREIGN_URLS.items()]
    reg = _local_registry(tmp_path, "HOSTILE", {"metadata_dev.csv": "\n".join([HEADER, *rows])})
    before = snapshot(good_cache)
    hostile.reset_stats()
    ds = CachedDataset("HOSTILE", settings=_settings(hostile.base_url, reg, good_cache),
                       progress=False)
    summary = ds.download_and_cache()
    ds.close()
    assert summary.downloaded == [SPARE_CARD]
    assert sorted(summary.failed) == sorted(FOREIGN_URLS)
    for cid, url in FOREIGN_URLS.items():
        reason = summary.failed[cid]
        assert re.search(r"scheme|not a configured PAD or registry host|'\.\.' path segment|user info|backslash",
                         reason), (url, reason)
    assert hostile.stats()["image"] == 1
    assert net_guard.attempts == []  # refused by policy, not by a failed connection
    after = snapshot(good_cache)
    assert_nothing_lost(before, after, frozenset({"raw", "manifest"}))
    new = set(after["items"]) - set(before["items"])
    assert sorted(after["items"][k] for k in new) == ["manifest", "raw"]


def test_parser_tricks_and_other_ports_are_refused_by_policy(
        hostile: Emulator, tmp_path: Path, net_guard: NetGuard) -> None:
    net_guard.allow(hostile.base_url)
    port = int(hostile.base_url.rsplit(":", 1)[1])
    tricks = {1: f"http://evil.invalid\\@127.0.0.1:{port}/x.png",
              2: f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/x.png"}
    rows = [f"{cid},1,amoxicillin,100,P,{url},,x.png" for cid, url in tricks.items()]
    reg = _local_registry(tmp_path, "TRICKS", {"metadata_dev.csv": "\n".join([HEADER, *rows])})
    ds = CachedDataset("TRICKS", settings=_settings(hostile.base_url, reg, tmp_path / "c",
                                                    http_retries=0), progress=False)
    summary = ds.download_and_cache()
    ds.close()
    assert sorted(summary.failed) == [1, 2]
    assert net_guard.attempts == [], f"connections attempted: {net_guard.attempts}"


@pytest.mark.parametrize("card, pattern", [
    (BOMB_HEADER, r"decompression bomb"),  # 30000 x 30000: Pillow's own bomb guard
    (BOMB_REAL, r"7000x6000 = 42000000 pixels, over the limit"),  # pad_assets' 40 Mpx limit
])
def test_decompression_bombs_are_refused_before_decoding(
        card: int, pattern: str, hostile: Emulator, good_cache: Path,
        tiny_tflite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every decode Pillow starts, by image size (not by time: a timed bound says nothing
    # under load and something different on every machine).
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def recording_load(self):
        decoded.append(tuple(self.size))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    # ... and every decode of the fast row decoder (ISA-L + NumPy), which skips Pillow's
    from pad_assets.preprocessing import decode as decode_module

    real_rows = decode_module.top_rows

    def recording_rows(data, offset, width, rows):  # noqa: ANN001, ANN202
        decoded.append((width, rows))
        return real_rows(data, offset, width, rows)

    monkeypatch.setattr(decode_module, "top_rows", recording_rows)
    before = snapshot(good_cache)
    ds = CachedDataset(BOMB_DS, settings=_settings(hostile.base_url, hostile.registry_url,
                                                   good_cache), progress=False)
    summary = ds.download_and_cache()
    reason = summary.failed[card]
    assert re.search(pattern, reason, re.IGNORECASE), reason
    assert f"card {card}" in reason and "_processed.png" in reason  # names the input
    assert BOMB_OK in summary.downloaded  # the good card of the same dataset is fine
    model = PADTensorFlowAdapter(model_path=tiny_tflite_path, labels=TINY_DRUG_LABELS)
    res = ds.apply_model(model).set_index("card_id")
    ds.close()
    assert res.loc[card, "status"] == "failed" and pd.isna(res.loc[card, "raw_key"])
    assert res.loc[BOMB_OK, "status"] == "ok"
    assert decoded, "the good card was never decoded: the recorder saw nothing"
    too_big = [wh for wh in decoded if wh[0] * wh[1] > 40_000_000]
    assert not too_big, f"a bomb was (at least partly) decoded: {too_big}"
    after = snapshot(good_cache)
    assert_nothing_lost(before, after, frozenset({"raw", "manifest", "preprocessed", "tensor",
                                                  "prediction"}))
    bomb_sizes = {len(p.read_bytes()) for p in hostile.config.real_images_dir.iterdir()}
    store = ContentStore(good_cache)
    try:
        raw_sizes = {r[0] for r in store.index.query(
            "SELECT json_extract(meta, '$.nbytes') FROM items WHERE layer='raw'")}
    finally:
        store.close()
    assert not raw_sizes & bomb_sizes  # no bomb bytes were cached


def _wrong_sha(hostile: Emulator, model_id: int, tiny_tflite_path: Path,
               pls_bytes: bytes | None = None) -> ModelArtifact:
    if pls_bytes is not None:
        art = ModelArtifact({"id": model_id, "name": "bad_pls", "type": "pls"}, "bad_pls.csv",
                            pls_bytes)
    else:
        art = _tiny_artifact(model_id, tiny_tflite_path.read_bytes(), name=f"bad_{model_id}")
    art = art.with_wrong_sha256()
    if not any(int(r["id"]) == model_id for r in hostile.catalog.model_records(
            hostile.base_url)):
        hostile.add_model(art)
    return art


def _pls_bytes() -> bytes:
    row = ",".join(['"amoxicillin"', '"1.0"', *(['"0.001"'] * 360)])
    return (row + "\n").encode()


@pytest.mark.parametrize("kind", ["tflite", "pls"])
def test_weights_with_the_wrong_sha256_are_refused_and_not_cached(
        kind: str, hostile: Emulator, good_cache: Path, tiny_tflite_path: Path) -> None:
    model_id = BAD_TFLITE_ID if kind == "tflite" else BAD_PLS_ID
    art = _wrong_sha(hostile, model_id, tiny_tflite_path,
                     _pls_bytes() if kind == "pls" else None)
    actual_sha = __import__("hashlib").sha256(art.data).hexdigest()
    before = snapshot(good_cache)
    s = _settings(hostile.base_url, hostile.registry_url, good_cache)
    cls = PADTensorFlowAdapter if kind == "tflite" else PLSModelAdapter
    for _ in range(2):  # and again: a refused download leaves nothing to trust next time
        with pytest.raises(IntegrityError) as err:
            cls(model_id=model_id, settings=s)
        msg = str(err.value)
        assert actual_sha in msg and art.declared_sha256 in msg and str(model_id) in msg
        assert "/neuralnetworks/" in msg
    after = snapshot(good_cache)
    assert_nothing_lost(before, after, frozenset({"model_record"}))
    assert actual_sha not in after["items"]
    store = ContentStore(good_cache)
    try:
        assert store.index.present_blobs([actual_sha]) == set()
    finally:
        store.close()
    artifacts = good_cache / "artifacts"
    assert not artifacts.exists() or not any(actual_sha in p.name for p in artifacts.iterdir())


def test_a_refused_model_caches_not_even_its_record(hostile: Emulator, good_cache: Path,
                                                     tiny_tflite_path: Path) -> None:
    _wrong_sha(hostile, BAD_TFLITE_ID, tiny_tflite_path)
    before = snapshot(good_cache)
    with pytest.raises(IntegrityError):
        PADTensorFlowAdapter(model_id=BAD_TFLITE_ID,
                             settings=_settings(hostile.base_url, hostile.registry_url,
                                                good_cache))
    assert snapshot(good_cache) == before


@pytest.mark.parametrize("where", ["http", "local"])
def test_an_oversized_manifest_is_refused(where: str, hostile: Emulator, good_cache: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    before = snapshot(good_cache)
    if where == "http":
        name, reg = GOOD_DS, hostile.registry_url  # its dev CSV is a few hundred bytes
    else:
        rows = [f"{SPARE_CARD},1,amoxicillin,100,P,{hostile.image_url(SPARE_CARD)},,a.png"]
        name, reg = "BIG", _local_registry(tmp_path, "BIG",
                                           {"metadata_dev.csv": "\n".join([HEADER, *rows * 40])})
    monkeypatch.setattr(registry, "MANIFEST_MAX_BYTES", 200)
    hostile.reset_stats()
    ds = CachedDataset(name, settings=_settings(hostile.base_url, reg, good_cache),
                       progress=False)
    with pytest.raises(ManifestError, match=r"limit of 200") as err:
        ds.manifest(refresh=True)
    assert "metadata_dev.csv" in str(err.value)
    ds.close()
    assert hostile.stats()["image"] == 0
    assert snapshot(good_cache) == before


def test_a_manifest_with_too_many_rows_is_refused(hostile: Emulator, good_cache: Path,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [f"{i},1,amoxicillin,100,P,/x/{i}.png,,a.png" for i in range(1, 6)]
    reg = _local_registry(tmp_path, "MANY", {"metadata_dev.csv": "\n".join([HEADER, *rows])})
    monkeypatch.setattr(registry, "MAX_ROWS", 3)
    before = snapshot(good_cache)
    ds = CachedDataset("MANY", settings=_settings(hostile.base_url, reg, good_cache),
                       progress=False)
    with pytest.raises(ManifestError, match="more than 3 rows"):
        ds.download_and_cache()
    ds.close()
    assert snapshot(good_cache) == before


_ROW = "1,1,amoxicillin,100,P,/var/www/html/images/padimages/processed/0/1_processed.png,,a.png"
MALFORMED: dict[str, tuple[bytes, str]] = {
    "short_row": (f"{HEADER}\n1,1,amoxicillin,100\n".encode(), r"line 2: 4 fields"),
    "traversal_id": (f"{HEADER}\n../x,1,a,1,P,/a.png,,a.png\n".encode(),
                     r"id '\.\./x' is not an integer"),
    "bad_md5": (f"{HEADER}\n1,1,a,1,P,/a.png,zz,a.png\n".encode(), r"md5 'zz' is not 32 hex"),
    "no_url": (f"{HEADER}\n1,1,a,1,P,,,a.png\n".encode(), r"has no image URL"),
    "wrong_header": (b"foo,bar\n1,2\n", r"neither the current columns"),
    "empty": (b"", r"empty file"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage", r"not UTF-8"),
    "huge_field": (f"{HEADER}\n1,1,{'a' * 200_000},1,P,/a.png,,a.png\n".encode(),
                   r"malformed CSV"),
    "unbalanced_quote": (f'{HEADER}\n1,1,"amoxicillin,100,P,/a.png,,a.png\n{_ROW}\n'.encode(),
                         r"fields, expected 8"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_manifest_is_refused_and_caches_nothing(
        case: str, hostile: Emulator, good_cache: Path, tmp_path: Path) -> None:
    data, pattern = MALFORMED[case]
    reg = _local_registry(tmp_path, "BAD", {"metadata_dev.csv": data})
    before = snapshot(good_cache)
    hostile.reset_stats()
    ds = CachedDataset("BAD", settings=_settings(hostile.base_url, reg, good_cache),
                       progress=False)
    with pytest.raises(ManifestError, match=pattern) as err:
        ds.download_and_cache()
    assert "BAD/metadata_dev.csv" in str(err.value)  # names the file at fault
    ds.close()
    assert hostile.stats()["total"] == 0
    assert snapshot(good_cache) == before


def test_a_registry_without_the_dataset_is_a_clear_error(hostile: Emulator, good_cache: Path,
                                                         tmp_path: Path) -> None:
    reg = _local_registry(tmp_path, "OTHER", {"metadata_dev.csv": HEADER + "\n"})
    ds = CachedDataset("ABSENT", settings=_settings(hostile.base_url, reg, good_cache),
                       progress=False)
    with pytest.raises(UnknownDatasetError, match="ABSENT"):
        ds.download_and_cache()
    ds.close()


def test_a_card_id_beyond_int64_is_a_manifest_error(hostile: Emulator, good_cache: Path,
                                                    tmp_path: Path) -> None:
    reg = _local_registry(tmp_path, "HUGEID", {
        "metadata_dev.csv": f"{HEADER}\n99999999999999999999999,1,a,1,P,/a.png,,a.png\n"})
    before = snapshot(good_cache)
    ds = CachedDataset("HUGEID", settings=_settings(hostile.base_url, reg, good_cache),
                       progress=False)
    try:
        with pytest.raises(ManifestError, match="line 2"):
            ds.download_and_cache()
    finally:
        ds.close()
    assert snapshot(good_cache) == before
