"""``pad-assets download|lineage|audit``: fill the cache, and read a card's or a dataset's
provenance out of it."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInputError
from ._base import PadCommand, cache_dir_option, console, json_option, problem, settings


def _known_dataset(ds: Any) -> None:
    """Raise unless the cache holds a manifest or card records of ``ds`` (a misspelt name
    would otherwise give an empty answer and exit 0)."""
    from ..sources.listing import manifest_ref
    from ..store.queries import each, select

    if ds.store.ref(manifest_ref(ds.settings, ds.name)) or ds.store.cards(ds.name):
        return
    known = sorted(each(select(ds.store.index, "cards", "dataset", distinct=True)))
    close = difflib.get_close_matches(ds.name, known, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidInputError(f"dataset {ds.name!r} is not in the cache at "
                            f"{ds.settings.cache_dir}; expected one of "
                            f"{known or '(none cached: run `pad-assets download NAME`)'}.{hint}")


@click.command(cls=PadCommand)
@cache_dir_option
@click.argument("dataset")
@click.option("--force-refresh", is_flag=True, help="Download every image again, even if cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def download(cache_dir: Path | None, dataset: str, force_refresh: bool, quiet: bool) -> None:
    """Download and cache a registry dataset (incremental, md5-checked)."""
    from ..dataset import CachedDataset
    from ._base import stderr_is_tty

    ds = CachedDataset(dataset, settings=settings(cache_dir),
                       progress=not quiet and stderr_is_tty())
    try:
        summary = ds.download_and_cache(force_refresh=force_refresh)
    finally:
        ds.close()
    click.echo(str(summary))
    if summary.failed:
        problem("pad-assets download", f"{len(summary.failed)} of {summary.total} cards could "
                "not be cached (listed above)")


@click.command(cls=PadCommand)
@cache_dir_option
@json_option
@click.argument("dataset")
@click.argument("card_id")
@click.option("--model", "-m", default=None, help="The model whose chain to show: a PAD model "
              "id (16), pls:ID, or a model file (.tflite, .onnx, ...).")
@click.option("--labels", default=None, help="Comma-separated labels for a .tflite/custom file.")
@click.option("--verify", is_flag=True,
              help="Read and checksum every present layer, and print the full chain.")
def lineage(cache_dir: Path | None, as_json: bool, dataset: str, card_id: str,
            model: str | None, labels: str | None, verify: bool) -> None:
    """The provenance chain of one card: a short tree, or the full chain with --verify."""
    from ..dataset import CachedDataset
    from ..provenance.lineage import card_id_of, card_lineage, format_lineage
    from ..provenance.model_spec import resolve_model_spec
    from .views import lineage_tree

    ds = CachedDataset(dataset, settings=settings(cache_dir), progress=False)
    try:
        _known_dataset(ds)
        adapter = None
        if model:
            names = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
            adapter = resolve_model_spec(model, ds.settings, ds.store, labels=names)
        lin = card_lineage(ds, card_id_of(card_id), adapter, verify=verify)
    finally:
        ds.close()
    if lin.get("status") == "unknown card" or (
            lin["manifest"].get("status") == "card not in manifest"
            and lin["raw"].get("status") == "missing"):
        raise InvalidInputError(f"card {card_id} is not in dataset {dataset!r} (neither its "
                                "cached manifest nor its cached cards list it)")
    if as_json:
        click.echo(json.dumps(lin, indent=2, default=str))
    elif verify:
        click.echo(format_lineage(lin))
    else:
        console().print(lineage_tree(lin))


@click.command(cls=PadCommand)
@cache_dir_option
@click.argument("dataset")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for the CSV and PROV-JSON.")
@click.option("--model", "-m", "models", multiple=True, help="Restrict to this model "
              "(repeatable): a cached model name or signature (prefix), or a model spec; "
              "default: every model with cached predictions.")
def audit(cache_dir: Path | None, dataset: str, output: str, models: tuple[str, ...]) -> None:
    """Export every cached prediction of a dataset with its chain (CSV + PROV-JSON)."""
    from ..dataset import CachedDataset
    from ..provenance.audit import audit_dataset

    ds = CachedDataset(dataset, settings=settings(cache_dir), progress=False)
    try:
        _known_dataset(ds)
        n, paths = audit_dataset(ds, output, list(models) or None)
    finally:
        ds.close()
    click.echo(f"{dataset}: {n} prediction(s) exported")
    for kind, path in paths.items():
        click.echo(f"  {kind}: {path}")


@click.command(cls=PadCommand)
@cache_dir_option
@json_option
@click.option("--offline", is_flag=True, help="Never open a connection: the last cached listing.")
def datasets(cache_dir: Path | None, as_json: bool, offline: bool) -> None:
    """List the registry's datasets (PAD_REGISTRY_URL); offline, the last cached listing."""
    from ..dataset import CachedDataset

    st = settings(cache_dir, offline=True if offline else None)
    df = CachedDataset.list_datasets(settings=st)
    if as_json:
        click.echo(df.to_json(orient="records", indent=2))
        return
    cols = [c for c in ("name", "version", "records", "license") if c in df]
    click.echo(df[cols].fillna("").to_string(index=False) if len(df) else "(no datasets)")
    click.echo(f"{len(df)} dataset(s)")
