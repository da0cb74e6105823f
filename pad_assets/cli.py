"""The ``pad-assets`` command: one entry point, sub-commands owned by their modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import PadAssetsError


def _emulator(argv: list[str]) -> int:
    from .emulator.server import cli_main

    return cli_main(argv)


def _demo(argv: list[str]) -> int:
    from .demo import main

    return main(argv)


def _ops(argv: list[str]) -> int:
    from .ops.cli import main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "emulator": (_emulator, "start the local PAD API emulator"),
    "demo": (_demo, "run the main job end to end (Dagster, on the built-in emulator by default)"),
    "lineage": (_ops, "print the provenance chain of one card's prediction"),
    "audit": (_ops, "export every prediction of a dataset with its chain (CSV + PROV-JSON)"),
    "cache": (_ops, "cache operations: stats, verify, reindex, gc, export, import, push, pull"),
    "download": (_ops, "download and cache a dataset"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        parser = argparse.ArgumentParser(prog="pad-assets", description=__doc__)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, (_, help_) in COMMANDS.items():
            sub.add_parser(name, help=help_)
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pad-assets: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    fn, _ = COMMANDS[name]
    try:
        return fn(rest if fn is not _ops else [name, *rest])
    except PadAssetsError as exc:
        print(f"pad-assets {name}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
