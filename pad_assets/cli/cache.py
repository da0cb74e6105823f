"""``pad-assets cache ...``: operations on the content-addressed cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import PadAssetsError
from ._base import (
    PadGroup,
    cache_dir_option,
    console,
    emit_json,
    json_option,
    problem,
    progress,
    progress_bar,
    settings,
)


def _open(cache_dir: Path | None, recover: bool = True) -> Any:
    from ..store import ContentStore

    return ContentStore(settings(cache_dir).cache_dir, recover=recover)


def _run(cache_dir: Path | None, what: str, op: Callable[[Any], Any], as_json: bool,
         recover: bool = True, show: Callable[[Any], None] | None = None,
         bar: Any = None) -> Any:
    """Open the cache, run ``op`` under a progress spinner on stderr (or ``bar``, a
    ``progress_bar`` whose callback ``op`` feeds), close it, then print the report."""
    store = _open(cache_dir, recover=recover)
    try:
        with bar if bar is not None else progress(what):
            report = op(store)
    finally:
        store.close()
    if as_json:
        emit_json(report)
    elif show is not None:
        show(report)
    else:
        click.echo(str(report))
    return report


@click.group(cls=PadGroup)
@cache_dir_option
def cache(cache_dir: Path | None) -> None:
    """Operations on the cache: stats, verify, reindex, gc, rm, export, import, push, pull,
    status."""


@cache.command()
@cache_dir_option
@json_option
def stats(cache_dir: Path | None, as_json: bool) -> None:
    """Sizes per layer, dataset and model; shared payloads; folders beside the shards."""
    from ..maintenance import stats as stats_op
    from .views import stats_view

    def show(st: Any) -> None:
        con = console()
        for part in stats_view(st):
            con.print(part)

    _run(cache_dir, "reading the index", stats_op, as_json, show=show)


@cache.command()
@cache_dir_option
@json_option
@click.option("--repair", is_flag=True,
              help="Drop damaged entries, re-fetch raw images, index orphan shards.")
@click.option("--tier", "tier_url", default=None, metavar="URL",
              help="Verify a shared shard tier (s3://..., a folder) instead of the cache: "
                   "every published shard read back against its entry objects.")
def verify(cache_dir: Path | None, as_json: bool, repair: bool, tier_url: str | None) -> None:
    """Check every shard, payload, index row, ref and card."""
    from ..dataset import CachedDataset
    from ..maintenance import verify as verify_op

    if tier_url is not None:
        from ..sharing.tier_verify import verify_tier

        if repair:
            problem("pad-assets cache verify", "--repair applies to a cache, not to --tier "
                    "(a tier is repaired by pushing from a verified cache)")
        with progress("verifying every published shard of the tier"):
            tier_report = verify_tier(tier_url)
        if as_json:
            emit_json(tier_report)
        else:
            click.echo(str(tier_report))
        if not tier_report.ok:
            problem("pad-assets cache verify", "problems found on the tier (see above)")
        return
    st = settings(cache_dir)
    datasets: dict[str, Any] = {}

    def run(store: Any) -> Any:
        def resolver(name: str) -> Any:
            if name not in datasets:
                datasets[name] = CachedDataset(name, settings=st, store=store, progress=False)
            return datasets[name]

        try:
            return verify_op(store, repair=repair, dataset_resolver=resolver, settings=st,
                             progress=bar.update)
        finally:
            for ds in datasets.values():
                ds.derived.close()

    # recover=False: orphan shards are verify's to report (and --repair's to index), and a
    # damaged orphan must not stop the command that is meant to deal with it
    bar = progress_bar("verifying every payload")
    report = _run(cache_dir, "", run, as_json, recover=False, bar=bar)
    if not report.ok:
        what = "problems remain after repair" if repair else "problems found"
        problem("pad-assets cache verify", f"{what} (see above)")


@cache.command()
@cache_dir_option
@json_option
def reindex(cache_dir: Path | None, as_json: bool) -> None:
    """Rebuild the index from the shard files alone."""
    from ..maintenance import reindex as reindex_op

    report = _run(cache_dir, "rebuilding the index", reindex_op, as_json, recover=False)
    if report.unreadable:
        problem("pad-assets cache reindex", "some shard files are unreadable; run "
                "`pad-assets cache verify --repair`")


@cache.command()
@cache_dir_option
@json_option
@click.option("--max-size", default=None, metavar="SIZE",
              help="Target size, e.g. 10GB, 500MB.")
@click.option("--older-than", default=None, metavar="AGE",
              help="Only evict items unused for this long, e.g. 30d, 12h (report runs "
                   "older than this go too).")
@click.option("--keep-dataset", multiple=True, metavar="DATASET",
              help="Never evict what this dataset uses (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would go and why; change nothing.")
def gc(cache_dir: Path | None, as_json: bool, max_size: str | None, older_than: str | None,
       keep_dataset: tuple[str, ...], dry_run: bool) -> None:
    """Evict least-recently-used items, compact shards, drop stale artifacts.

    Cached predictions are metadata only and are never evicted for size: after a gc that
    evicts images, apply_model still serves them without downloading anything.
    """
    from ..maintenance import gc as gc_op

    report = _run(cache_dir, "collecting garbage", lambda store: gc_op(
        store, max_size=max_size, older_than=older_than, keep_datasets=keep_dataset,
        dry_run=dry_run), as_json)
    if report.skipped:
        problem("pad-assets cache gc", "some shards were skipped (see above)")


@cache.command()
@cache_dir_option
@json_option
@click.option("--dataset", default=None, help="Remove this dataset's cards, manifest and "
              "every item chained to images no other dataset lists.")
@click.option("--model", "-m", default=None, help="Remove this model's predictions (name, "
              "signature, or a signature prefix of 8+ hex digits).")
@click.option("--pipeline", default=None, help="Remove this preprocessing pipeline's items "
              "and the tensors and predictions made from them.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
def rm(cache_dir: Path | None, as_json: bool, dataset: str | None, model: str | None,
       pipeline: str | None, dry_run: bool) -> None:
    """Remove one dataset, model or pipeline from the cache (exactly one of the three)."""
    from ..maintenance.removal import remove

    if sum(x is not None for x in (dataset, model, pipeline)) != 1:
        raise click.UsageError("expected exactly one of --dataset, --model, --pipeline")
    _run(cache_dir, "removing", lambda store: remove(
        store, dataset=dataset, model=model, pipeline=pipeline, dry_run=dry_run), as_json)


@cache.command(name="export")
@cache_dir_option
@json_option
@click.option("--dataset", required=True, help="Registry dataset name.")
@click.option("--layers", default="raw,tensors,predictions", show_default=True,
              help="Comma-separated: raw, preprocessed, tensors, predictions.")
@click.option("-o", "--output", required=True,
              help="New bundle directory, or a path ending in .tar.")
def export_(cache_dir: Path | None, as_json: bool, dataset: str, layers: str,
            output: str) -> None:
    """Write one dataset's items into a bundle a colleague can import."""
    from ..sharing import export_bundle

    _run(cache_dir, f"exporting {dataset}",
         lambda store: export_bundle(store, dataset, layers, out=output), as_json)


@cache.command(name="import")
@cache_dir_option
@json_option
@click.argument("bundle")
def import_(cache_dir: Path | None, as_json: bool, bundle: str) -> None:
    """Verify a bundle (directory or .tar) and add its items."""
    from ..sharing import import_bundle

    _run(cache_dir, f"importing {bundle}", lambda store: import_bundle(store, bundle), as_json)


_REMOTE_HELP = ("A remote name (`pad-assets remote list`), an fsspec URL (s3://bucket/pad, "
                "file:///...) or a directory; default: the default remote.")


def _remote(cache_dir: Path | None, remote: str | None) -> tuple[str, str]:
    from ..sharing.remotes import resolve_remote

    return resolve_remote(settings(cache_dir).cache_dir, remote)


@cache.command(help="Copy the shards the remote lacks (each verified first).\n\nREMOTE: "
               + _REMOTE_HELP)
@cache_dir_option
@json_option
@click.argument("remote", required=False)
def push(cache_dir: Path | None, as_json: bool, remote: str | None) -> None:
    from ..sharing import push as push_op

    _, url = _remote(cache_dir, remote)
    bar = progress_bar(f"pushing to {url}")
    report = _run(cache_dir, "", lambda store: push_op(store, url, progress=bar.update),
                  as_json, bar=bar)
    if report.skipped:
        problem("pad-assets cache push", "some shards were not pushed (see above)")


@cache.command(help="Copy and verify the shards this cache lacks.\n\nREMOTE: " + _REMOTE_HELP)
@cache_dir_option
@json_option
@click.argument("remote", required=False)
@click.option("--dataset", default=None, help="Only the shards of this dataset.")
def pull(cache_dir: Path | None, as_json: bool, remote: str | None,
         dataset: str | None) -> None:
    from ..sharing import pull as pull_op

    _, url = _remote(cache_dir, remote)
    bar = progress_bar(f"pulling from {url}")
    report = _run(cache_dir, "", lambda store: pull_op(
        store, url, dataset=dataset, strict=False, progress=bar.update), as_json, bar=bar)
    if report.failed:
        problem("pad-assets cache pull", f"{len(report.failed)} shards failed verification "
                "and were not kept (see above)")


@cache.command()
@cache_dir_option
@json_option
@click.option("--remote", "-r", "remote", default=None, is_flag=False, flag_value="",
              help="Compare with this remote (name or URL; bare --remote: the default).")
def status(cache_dir: Path | None, as_json: bool, remote: str | None) -> None:
    """What the remote lacks and what it has that this cache lacks (like dvc status -c).

    Without --remote: one line per configured remote.
    """
    from ..sharing.remotes import load_config, remote_status

    st = settings(cache_dir)
    if remote is None:
        cfg = load_config(st.cache_dir)
        targets = [(n, v["url"]) for n, v in sorted(cfg["remotes"].items())]
        if not targets:
            raise click.UsageError("no remote configured: give --remote URL, or run "
                                   "`pad-assets remote add NAME URL` first")
    else:
        targets = [_remote(cache_dir, remote or None)]
    failed: list[str] = []

    def compare(store: Any) -> list[Any]:
        out = []
        for label, url in targets:
            try:
                out.append(remote_status(store, url, label))
            except PadAssetsError as exc:
                if len(targets) == 1:
                    raise
                failed.append(f"remote {label}: {exc}")  # the others still get compared
        return out

    reports = _run(cache_dir, "comparing with the remote", compare, False, show=lambda _: None)
    if as_json:
        emit_json([r.as_dict() for r in reports])
    else:
        for r in reports:
            click.echo(str(r))
    if failed:
        problem("pad-assets cache status", "; ".join(failed))
