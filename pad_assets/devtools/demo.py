"""The main job, end to end: ``pad-assets demo``.

Starts the built-in PAD API emulator (unless ``--external``: then PAD_API_URL and
PAD_REGISTRY_URL are used as set), and runs the Dagster graph into a persistent
``DAGSTER_HOME``: refresh the manifest, add new cards as partitions, materialize the image
layers of every card in one batched run, then the model comparison and integrity checks.
Afterwards ``dagster dev`` shows the runs, partitions and lineage. A second run is
incremental: only what changed is downloaded or computed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEMO_PORT = 18765


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _emulator(cards: int, external: bool, port: int) -> Iterator[Any]:
    if external:
        yield None
        return
    from .emulator import Emulator, EmulatorConfig

    # A fixed port keeps the registry URL (part of the manifest's cache ref) stable across
    # demo runs, so the second run is incremental; fall back to any free port.
    emu = Emulator(EmulatorConfig.with_cards(cards), port=port if _port_free(port) else 0)
    emu.start()
    os.environ["PAD_API_URL"] = emu.base_url
    os.environ["PAD_REGISTRY_URL"] = emu.registry_url
    try:
        yield emu
    finally:
        emu.stop()


def _log_config() -> dict[str, Any]:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


DAGSTER_YAML = """\
# Written by `pad-assets demo`: SQLite storage under this folder, and no usage
# telemetry (the demo runs offline; see https://docs.dagster.io/about/telemetry).
telemetry:
  enabled: false
"""


def _prepare_home(dagster_home: Path) -> Path:
    """DAGSTER_HOME with a dagster.yaml that turns telemetry off and uses the lab's event log
    storage (each kept if the user's file already says something about it)."""
    home = dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    from ..orchestration.storage import dagster_yaml_block

    cfg = home / "dagster.yaml"
    text = cfg.read_text() if cfg.is_file() else ""
    if "telemetry" not in text:
        text = DAGSTER_YAML + ("\n" + text if text.strip() else "")
    if "event_log_storage" not in text:
        text = text.rstrip("\n") + "\n" + dagster_yaml_block(home)
    if not cfg.is_file() or cfg.read_text() != text:
        cfg.write_text(text)
    return home


def _quiet_libraries() -> None:
    """No TensorFlow/absl start-up chatter and no Dagster beta/preview warnings on the
    terminal; errors still surface."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
    warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
    import logging

    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


#: start-up chatter TensorFlow, absl and LiteRT write straight to file descriptor 2 (C++),
#: which no Python logging setting reaches.
_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|I0000 |W0000 |"
    r"INFO: Created TensorFlow Lite|.*oneDNN custom operations|.*cudart_stub|"
    r".*Could not find cuda drivers|.*TF-TRT Warning|.*computation placer|"
    r".*Unable to register cu(DNN|FFT|BLAS) factory|.*This TensorFlow binary is optimized)")


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Hold file descriptor 2 in a temporary file while TensorFlow may load, then replay
    every line except known start-up chatter (errors and tracebacks are replayed)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if not _CHATTER.match(line):
                    print(line, file=sys.stderr)


class _Steps:
    """One line per step with its duration: progress a terminal and a log file both show."""

    def __init__(self, out: Any, total: int) -> None:
        self.out, self.total, self.n, self.t = out, total, 0, time.time()

    def start(self, what: str) -> None:
        self.n += 1
        self.t = time.time()
        print(f"[{self.n}/{self.total}] {what} ...", file=self.out, flush=True)

    def done(self, what: str) -> None:
        print(f"      {what} ({time.time() - self.t:.1f} s)", file=self.out, flush=True)


def dagster_dev_command(dagster_home: Path, settings: Any) -> str:
    """A command that opens this demo's runs in the UI from any folder."""
    env = [f"DAGSTER_HOME={dagster_home}", f"PAD_CACHE_DIR={settings.cache_dir.resolve()}",
           f"PAD_API_URL={settings.api_url}", f"PAD_REGISTRY_URL={settings.registry_url}"]
    if os.environ.get("PAD_ASSETS_CONFIG"):
        env.append(f"PAD_ASSETS_CONFIG={Path(os.environ['PAD_ASSETS_CONFIG']).resolve()}")
    return " ".join(env) + " dagster dev -m pad_assets.definitions -h 127.0.0.1 -p 3000"


def _compact(value: dict[str, Any]) -> str:
    """The comparison in a few lines: one per model, one per pair."""
    import pandas as pd

    summary = pd.DataFrame(value["summary"])
    lines = []
    for r in summary.to_dict("records"):
        parts = [f"{r['model']:<12}", f"{r.get('label_type', ''):<13}",
                 f"n={r.get('n_scored', '')}"]
        for metric in ("accuracy", "rmse"):
            v = r.get(metric)
            if v is not None and v == v:
                lo, hi = r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high")
                ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and lo == lo else ""
                parts.append(f"{metric} {v:.3f}{ci}")
        lines.append("  " + "  ".join(parts))
    for r in value["pairwise"]:
        p = r.get("mcnemar_p")
        p_txt = f", McNemar p={p:.3g}" if p is not None and p == p else ""
        lines.append(f"  {r['model_a']} - {r['model_b']} ({r['metric']}): {r['diff']:+.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]{p_txt}")
    return "\n".join(lines)


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    """The demo points ``PAD_*`` and ``DAGSTER_HOME`` at its emulator and instance; a
    caller (a notebook, a test) gets its own environment back afterwards."""
    saved = os.environ.copy()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(dataset: str, cards: int, external: bool, port: int, dagster_home: Path,
        out: Any = sys.stdout) -> dict[str, Any]:
    """Run the main job; returns what it did (for tests and the printed summary).

    Runs go through the persistent instance in ``dagster_home`` and carry the code
    location's tag, so ``dagster dev`` lists them in Overview and on the jobs' pages.
    The process environment is the caller's again when it returns.
    """
    with _restored_environ():
        return _run(dataset, cards, external, port, dagster_home, out)


def _run(dataset: str, cards: int, external: bool, port: int, dagster_home: Path,
         out: Any) -> dict[str, Any]:
    home = _prepare_home(dagster_home)
    _quiet_libraries()
    os.environ["DAGSTER_HOME"] = str(home)
    t0 = time.time()
    steps = _Steps(out, 4)
    with _emulator(cards, external, port) as emu:
        import dagster as dg

        from ..orchestration.assets import DatasetAssetKeys, partitions_for
        from ..orchestration.definitions import (
            build_definitions,
            comparison_job_name,
            file_run_under_location,
            images_job_name,
            location_tags,
        )
        from ..orchestration.sync import new_card_keys, range_tags
        from ..project_config import DatasetConfig, load_config
        from ..settings import Settings

        project = load_config()
        ds = next((d for d in project.datasets if d.name == dataset), DatasetConfig(dataset))
        project = type(project)((ds,), project.models)
        keys = DatasetAssetKeys(ds, project.models)
        defs = build_definitions(project)
        settings = Settings.from_env()
        tags = location_tags()
        print(f"pad_assets demo: dataset {dataset}, cache {settings.cache_dir}, "
              f"DAGSTER_HOME {home}", file=out)
        if emu is not None:
            print(f"  emulator: {emu.base_url} ({cards} synthetic cards; demo models are built "
                  "offline on first use, ~1 min, then cached)", file=out)
        with dg.DagsterInstance.get() as instance:
            steps.start("manifest")
            refresh = defs.resolve_job_def("refresh_manifests_job").execute_in_process(
                instance=instance, run_config=_log_config(), tags=tags)
            file_run_under_location(instance, refresh.run_id)
            from ..dataset import CachedDataset

            dataset_obj = CachedDataset(dataset, settings=settings, progress=False)
            card_ids = dataset_obj.manifest().card_ids
            dataset_obj.close()
            new = new_card_keys(instance, ds, card_ids)
            if new:
                instance.add_dynamic_partitions(partitions_for(ds).name, new)
            parts = instance.get_dynamic_partitions(partitions_for(ds).name)
            steps.done(f"{len(card_ids)} cards, {len(new)} new partitions")

            steps.start(f"image layers of {len(parts)} cards (download, preprocess, predict)")
            stats0 = emu.stats() if emu else None
            images = defs.resolve_job_def(images_job_name(ds.key)).execute_in_process(
                instance=instance, tags={**tags, **range_tags(parts)},
                run_config=_log_config())
            stats1 = emu.stats() if emu else None
            file_run_under_location(instance, images.run_id)
            recorded = len(images.get_asset_materialization_events())
            downloaded = (stats1["image"] - stats0["image"]) if emu else None
            steps.done(f"run {images.run_id[:8]}: {recorded} new partition materializations"
                       + (f", {downloaded} images downloaded" if downloaded is not None else ""))
            evaluations = list(images.get_asset_check_evaluations())

            steps.start("model comparison")
            comparison = defs.resolve_job_def(comparison_job_name(ds.key)).execute_in_process(
                instance=instance, run_config=_log_config(), raise_on_error=True, tags=tags)
            file_run_under_location(instance, comparison.run_id)
            value = comparison.asset_value(keys.comparison.path)
            evaluations += comparison.get_asset_check_evaluations()
            steps.done(f"{value['items_compared']} of {value['published_rows']} published "
                       "rows scored")
        steps.start("checks")
        checks = [(e.check_name, e.asset_key.to_user_string(), e.passed, e.severity.value)
                  for e in evaluations]
        for e in evaluations:
            state = "passed" if e.passed else ("WARN" if e.severity.value == "WARN" else "FAILED")
            why = "" if e.passed or not e.description else f"  ({_one_line(e.description)})"
            print(f"      {state:<6} {e.asset_key.to_user_string().split('/', 1)[-1]}:"
                  f"{e.check_name}{why}", file=out)
        print(f"\nModel comparison (identical cards for every model, item set "
              f"{value['item_set_hash'][:12]}):", file=out)
        print(_compact(value), file=out)
        print(f"\nReport: {value['report_path']}  (also inline in the UI: "
              f"{keys.comparison.to_user_string()} > report)", file=out)
        shapes = _registry_shapes(settings, out)
        print(f"Done in {time.time() - t0:.1f} s. Explore the runs, checks and each card's "
              "lineage (then open http://127.0.0.1:3000):", file=out)
        print(f"  {dagster_dev_command(home, settings)}", file=out)
        if emu is not None:
            print(f"  (to launch runs from the UI, serve the same data first: pad-assets "
                  f"emulator --port {urlsplit(emu.base_url).port} --cards {cards})", file=out)
        return {"images_run": images.run_id, "downloaded": downloaded, "partitions": len(parts),
                "checks": checks, "comparison": value, "image_materializations": recorded,
                "dagster_dev": dagster_dev_command(home, settings), "registry_shapes": shapes}


def _one_line(text: str, width: int = 200) -> str:
    """A check's description on the demo's one line per check (the UI shows it whole)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _registry_shapes(settings: Any, out: Any) -> dict[str, dict[str, Any]]:
    """The registry listing, and the published shape of each real-extract dataset."""
    from ..dataset import CachedDataset

    listing = CachedDataset.list_datasets(settings=settings)
    print(f"\nRegistry: {len(listing)} dataset(s) (`pad-assets datasets`)", file=out)
    shapes = {}
    for name in listing["name"]:
        if not str(name).endswith("_extract"):
            continue
        ds = CachedDataset(str(name), settings=settings, progress=False)
        try:
            m = ds.manifest()
        finally:
            ds.close()
        shapes[str(name)] = {"rows": len(m.rows), "splits": m.split_counts,
                             "cards": len(m.card_ids), "leakage": m.leakage["count"]}
        kinds = "/".join(sorted({f["shape"] for f in m.files.values() if "shape" in f}))
        print(f"  {name}: {len(m.rows)} published rows {m.split_counts}, "
              f"{len(m.card_ids)} cards, leakage {m.leakage['count']}, shape {kinds}"
              + (f", extra columns {len(m.extra_columns)}" if m.extra_columns else ""),
              file=out)
    return shapes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pad-assets demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="FHI2020_Stratified_Sampling")
    p.add_argument("--cards", type=int, default=48, help="emulator dataset size (default 48)")
    p.add_argument("--external", action="store_true",
                   help="use PAD_API_URL / PAD_REGISTRY_URL as set instead of the emulator")
    p.add_argument("--port", type=int, default=DEMO_PORT, help="emulator port (0: any)")
    p.add_argument("--dagster-home", type=Path,
                   default=Path(os.environ.get("DAGSTER_HOME") or ".dagster_home"))
    args = p.parse_args(argv)
    with _filtered_stderr():
        run(args.dataset, args.cards, args.external, args.port, args.dagster_home)
    return 0
