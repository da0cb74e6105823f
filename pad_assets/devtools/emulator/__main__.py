"""``python -m pad_assets.devtools.emulator``: the same as ``pad-assets emulator``."""

from __future__ import annotations

from .server import cli_main

if __name__ == "__main__":
    raise SystemExit(cli_main())
