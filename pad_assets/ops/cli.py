"""``pad-assets cache|download|lineage|audit``: operations on a cache, from a shell.

``pad_assets.cli`` dispatches here with ``argv[0]`` the command. Every handler prints a
human-readable report on stdout (``--json`` for machines, where offered) and returns the
exit status: 0 when all is well, 1 when problems were found or an operation failed (the
reason on stderr, without a traceback for ``PadAssetsError``), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import PadAssetsError

COMMANDS = ("cache", "download", "lineage", "audit")


def _settings(args: argparse.Namespace) -> Any:
    from ..settings import Settings

    return Settings.from_env(cache_dir=getattr(args, "cache_dir", None),
                             offline=True if getattr(args, "offline", False) else None)


def _store(args: argparse.Namespace, recover: bool = True) -> Any:
    from ..store import ContentStore

    return ContentStore(_settings(args).cache_dir, recover=recover)


def _emit(args: argparse.Namespace, report: Any) -> None:
    if getattr(args, "json", False) and hasattr(report, "as_dict"):
        json.dump(report.as_dict(), sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        print(report)


# ---- cache sub-commands -------------------------------------------------------------------
def _on_store(args: argparse.Namespace, command: str, run: Callable[[Any], Any],
              problem: Callable[[Any], str | None] = lambda report: None,
              recover: bool = True) -> int:
    """Open the cache, run one operation on it, print its report, close the cache.

    ``problem(report)`` names what went wrong, if anything: it goes to stderr and the exit
    status is 1, so scripts and cron jobs notice without parsing the report.
    """
    store = _store(args, recover=recover)
    try:
        report = run(store)
        _emit(args, report)
    finally:
        store.close()
    message = problem(report)
    if message:
        print(f"pad-assets cache {command}: {message}", file=sys.stderr)
        return 1
    return 0


def _cache_stats(args: argparse.Namespace) -> int:
    from .maintenance import stats

    return _on_store(args, "stats", stats)


def _cache_verify(args: argparse.Namespace) -> int:
    from .maintenance import verify

    settings = _settings(args)
    from ..store import ContentStore

    # recover=False: orphan shards are verify's to report (and --repair's to index), and a
    # damaged orphan must not stop the command that is meant to deal with it
    store = ContentStore(settings.cache_dir, recover=False)
    datasets: dict[str, Any] = {}

    def resolver(name: str) -> Any:
        from ..dataset import CachedDataset

        if name not in datasets:
            datasets[name] = CachedDataset(name, settings=settings, store=store, progress=False)
        return datasets[name]

    try:
        report = verify(store, repair=args.repair, dataset_resolver=resolver,
                        settings=settings)
        _emit(args, report)
    finally:
        for ds in datasets.values():
            ds.derived.close()
        store.close()
    if not report.ok:
        what = "problems remain after repair" if args.repair else "problems found"
        print(f"pad-assets cache verify: {what} (see above)", file=sys.stderr)
        return 1
    return 0


def _cache_reindex(args: argparse.Namespace) -> int:
    from .maintenance import reindex

    return _on_store(args, "reindex", reindex, recover=False, problem=lambda r: (
        "some shard files are unreadable; run `pad-assets cache verify --repair`"
        if r.unreadable else None))


def _cache_gc(args: argparse.Namespace) -> int:
    from .maintenance import gc

    return _on_store(args, "gc", lambda store: gc(
        store, max_size=args.max_size, older_than=args.older_than,
        keep_datasets=args.keep_dataset or (), dry_run=args.dry_run),
        problem=lambda r: "some shards were skipped (see above)" if r.skipped else None)


def _cache_export(args: argparse.Namespace) -> int:
    from .sharing import export_bundle

    return _on_store(args, "export",
                     lambda store: export_bundle(store, args.dataset, args.layers,
                                                 out=args.output))


def _cache_import(args: argparse.Namespace) -> int:
    from .sharing import import_bundle

    return _on_store(args, "import", lambda store: import_bundle(store, args.bundle))


def _cache_push(args: argparse.Namespace) -> int:
    from .sharing import push

    return _on_store(args, "push", lambda store: push(store, args.remote), problem=lambda r: (
        "some shards were not pushed (see above)" if r.skipped else None))


def _cache_pull(args: argparse.Namespace) -> int:
    from .sharing import pull

    return _on_store(args, "pull",
                     lambda store: pull(store, args.remote, dataset=args.dataset, strict=False),
                     problem=lambda r: (f"{len(r.failed)} shards failed verification and were "
                                        "not kept (see above)" if r.failed else None))


# ---- other commands -------------------------------------------------------------------
def _download(args: argparse.Namespace) -> int:
    from ..dataset import CachedDataset

    ds = CachedDataset(args.dataset, settings=_settings(args), progress=not args.quiet)
    try:
        summary = ds.download_and_cache(force_refresh=args.force_refresh)
    finally:
        ds.close()
    print(summary)
    if summary.failed:
        print(f"pad-assets download: {len(summary.failed)} of {summary.total} cards could not "
              "be cached (listed above)", file=sys.stderr)
        return 1
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from .lineage import main_lineage

    return int(main_lineage(args) or 0)


def _audit(args: argparse.Namespace) -> int:
    from .audit import main_audit

    return int(main_audit(args) or 0)


# ---- parsers ----------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--cache-dir`` is accepted before or after the sub-command; the sub-command's copy
    must not overwrite a value given earlier, hence SUPPRESS below the top level."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--cache-dir", dest="cache_dir", default=default,
                        help="cache directory (default: $PAD_CACHE_DIR or ~/.pad_cache)")


def _cache_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pad-assets cache",
                                description="Operations on the content-addressed cache.")
    _common(p, top=True)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str,
            json_: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp, top=False)
        if json_:
            sp.add_argument("--json", action="store_true", help="print the report as JSON")
        sp.set_defaults(handler=fn)
        return sp

    add("stats", _cache_stats, "sizes per layer and dataset, shards, reclaimable bytes")
    sp = add("verify", _cache_verify, "check every shard, payload, index row, ref and card")
    sp.add_argument("--repair", action="store_true",
                    help="drop damaged entries, re-fetch raw images, index orphan shards")
    add("reindex", _cache_reindex, "rebuild the index from the shard files alone")
    sp = add("gc", _cache_gc, "evict least-recently-used items and compact shards")
    sp.add_argument("--max-size", default=None, help="target size, e.g. 10GB, 500MB")
    sp.add_argument("--older-than", default=None,
                    help="only evict items unused for this long, e.g. 30d, 12h")
    sp.add_argument("--keep-dataset", action="append", default=[], metavar="DATASET",
                    help="never evict what this dataset uses (repeatable)")
    sp.add_argument("--dry-run", action="store_true", help="report, change nothing")
    sp = add("export", _cache_export, "write one dataset's items into a bundle")
    sp.add_argument("--dataset", required=True, help="registry dataset name")
    sp.add_argument("--layers", default="raw,tensors,predictions",
                    help="comma-separated: raw, preprocessed, tensors, predictions")
    sp.add_argument("-o", "--output", required=True,
                    help="new bundle directory, or a path ending in .tar")
    sp = add("import", _cache_import, "verify a bundle and add its items")
    sp.add_argument("bundle", help="bundle directory or .tar")
    sp = add("push", _cache_push, "copy shards the remote lacks (fsspec URL or directory)")
    sp.add_argument("remote", help="e.g. /mnt/lab/pad_cache, file:///..., s3://bucket/pad")
    sp = add("pull", _cache_pull, "copy and verify shards this cache lacks")
    sp.add_argument("remote", help="e.g. /mnt/lab/pad_cache, file:///..., s3://bucket/pad")
    sp.add_argument("--dataset", default=None, help="only the shards of this dataset")
    return p


def _download_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pad-assets download",
                                description="Download and cache a registry dataset.")
    _common(p, top=True)
    p.add_argument("dataset", help="registry dataset name, e.g. FHI2020_Stratified_Sampling")
    p.add_argument("--force-refresh", action="store_true",
                   help="download every image again, even if cached")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(handler=_download)
    return p


def _lineage_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pad-assets lineage",
                                description="Print the provenance chain of one card.")
    try:
        from .lineage import add_lineage_arguments
    except ImportError:
        add_lineage_arguments = None  # type: ignore[assignment]
    if add_lineage_arguments is not None:
        add_lineage_arguments(p)
    else:
        _common(p, top=True)
        p.add_argument("dataset")
        p.add_argument("card_id")
        p.add_argument("--model", "-m", default=None)
    p.set_defaults(handler=_lineage)
    return p


def _audit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pad-assets audit",
        description="Export every prediction of a dataset with its chain (CSV + PROV-JSON).")
    try:
        from .audit import add_audit_arguments
    except ImportError:
        add_audit_arguments = None  # type: ignore[assignment]
    if add_audit_arguments is not None:
        add_audit_arguments(p)
    else:
        _common(p, top=True)
        p.add_argument("dataset")
        p.add_argument("-o", "--output", "--out", dest="output", required=True,
                       help="output directory")
    p.set_defaults(handler=_audit)
    return p


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "cache": _cache_parser, "download": _download_parser, "lineage": _lineage_parser,
    "audit": _audit_parser,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``argv`` = [command, *arguments]; returns the exit status (never raises for
    ``PadAssetsError`` or usage errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in PARSERS:
        got = repr(argv[0]) if argv else "nothing"
        print(f"pad-assets: expected a command out of {', '.join(COMMANDS)}, got {got}",
              file=sys.stderr)
        return 2
    command = argv[0]
    parser = PARSERS[command]()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    if getattr(args, "cache_dir", None):
        args.cache_dir = str(Path(args.cache_dir).expanduser())
    label = f"{command} {getattr(args, 'action', '')}".strip()
    try:
        return int(args.handler(args))
    except PadAssetsError as exc:
        print(f"pad-assets {label}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pad-assets {label}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
