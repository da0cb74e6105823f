"""The ``pad-assets`` command: one click tree.

    pad-assets demo | emulator | datasets | download | lineage | audit | cache ... | remote ...

``main(argv)`` returns the exit status instead of exiting, so tests call it in-process.
Shell completion is click's own, e.g. for bash (in ~/.bashrc):

    eval "$(_PAD_ASSETS_COMPLETE=bash_source pad-assets)"

(``zsh_source`` / ``fish_source`` for zsh and fish).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click

from ._base import EXIT_PIPE, PadGroup, quiet_broken_pipe
from .cache import cache
from .records import audit, datasets, download, lineage
from .remote import remote

COMPLETION_HELP = ("Shell completion: eval \"$(_PAD_ASSETS_COMPLETE=bash_source pad-assets)\" "
                   "in ~/.bashrc (zsh_source, fish_source for zsh and fish).")


def _version() -> str:
    try:
        return version("pad_assets")
    except PackageNotFoundError:
        return "unknown (not installed)"


@click.group(cls=PadGroup, epilog=COMPLETION_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="pad-assets")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Cache directory for every sub-command (default: $PAD_CACHE_DIR or "
                   "~/.pad_cache).")
def cli(cache_dir: str | None) -> None:
    """Cached, reproducible, auditable PAD data assets."""


def _export_cache_dir(ctx: click.Context) -> None:
    """``pad-assets --cache-dir D demo|emulator``: the demo and the emulator read
    ``PAD_CACHE_DIR`` (cache, demo models), so the option becomes that variable."""
    cache_dir = (ctx.parent.params if ctx.parent else {}).get("cache_dir")
    if cache_dir:
        os.environ["PAD_CACHE_DIR"] = str(Path(cache_dir).expanduser().resolve())


_PASS = {"ignore_unknown_options": True, "allow_extra_args": True,
         "help_option_names": []}


@cli.command(context_settings=_PASS, add_help_option=False)
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the main job end to end (Dagster, on the built-in emulator by default).

    Options are the demo's own: `pad-assets demo --help`.
    """
    from ..devtools.demo import main as demo_main

    _export_cache_dir(ctx)
    ctx.exit(int(demo_main(list(ctx.args)) or 0))


@cli.command(context_settings=_PASS, add_help_option=False)
@click.pass_context
def emulator(ctx: click.Context) -> None:
    """Start the local PAD API emulator (options: `pad-assets emulator --help`)."""
    from ..devtools.emulator.server import cli_main

    _export_cache_dir(ctx)
    ctx.exit(int(cli_main(list(ctx.args)) or 0))


for _cmd in (download, datasets, lineage, audit, cache, remote):
    cli.add_command(_cmd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pad-assets`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv: Any = cli.main(args=args, prog_name="pad-assets", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("pad-assets: interrupted", err=True)
        return 130
    except BrokenPipeError:
        quiet_broken_pipe()
        return EXIT_PIPE
    except SystemExit as exc:
        # click met a closed pipe (e.g. --help | head) and wrapped stdout to pacify it
        # (matched by name: click deprecates importing the class)
        if type(sys.stdout).__name__.endswith("PacifyFlushWrapper"):
            quiet_broken_pipe()
            return EXIT_PIPE
        return exc.code if isinstance(exc.code, int) else 1
    return int(rv) if isinstance(rv, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
