"""``pad-assets remote add|list|remove|default``: named locations for push, pull, status.

Stored in ``<cache>/remotes.json`` (``pad_assets.sharing.remotes``), like ``dvc remote``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ._base import PadGroup, cache_dir_option, emit_json, json_option, settings


@click.group(cls=PadGroup)
@cache_dir_option
def remote(cache_dir: Path | None) -> None:
    """Named remotes for `cache push`, `cache pull` and `cache status --remote`."""


@remote.command()
@cache_dir_option
@click.argument("name")
@click.argument("url")
@click.option("--default", "-d", "make_default", is_flag=True,
              help="Make it the default remote (the first remote added is the default).")
@click.option("--force", "-f", is_flag=True, help="Replace the URL of an existing remote.")
def add(cache_dir: Path | None, name: str, url: str, make_default: bool, force: bool) -> None:
    """Name a remote URL (`pad-assets remote add lab s3://lab-bucket/pad --default`)."""
    from ..sharing.remotes import add_remote

    cfg = add_remote(settings(cache_dir).cache_dir, name, url, default=make_default,
                     force=force)
    star = " (default)" if cfg["default"] == name else ""
    click.echo(f"remote {name}{star}: {cfg['remotes'][name]['url']}")


@remote.command(name="list")
@cache_dir_option
@json_option
def list_(cache_dir: Path | None, as_json: bool) -> None:
    """List the remotes; the default is marked with '*'."""
    from ..sharing.remotes import load_config

    cfg = load_config(settings(cache_dir).cache_dir)
    if as_json:
        emit_json(cfg)
        return
    if not cfg["remotes"]:
        click.echo("no remotes (add one: pad-assets remote add NAME URL)")
    for name, v in sorted(cfg["remotes"].items()):
        click.echo(f"{'*' if cfg['default'] == name else ' '} {name}\t{v['url']}")


@remote.command()
@cache_dir_option
@click.argument("name")
def remove(cache_dir: Path | None, name: str) -> None:
    """Forget a remote (nothing on the remote is touched)."""
    from ..sharing.remotes import remove_remote

    remove_remote(settings(cache_dir).cache_dir, name)
    click.echo(f"removed remote {name}")


@remote.command()
@cache_dir_option
@click.argument("name")
def default(cache_dir: Path | None, name: str) -> None:
    """Make NAME the default remote."""
    from ..sharing.remotes import set_default

    set_default(settings(cache_dir).cache_dir, name)
    click.echo(f"default remote: {name}")
