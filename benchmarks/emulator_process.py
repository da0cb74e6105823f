"""The benchmark world's emulator in its own process (issue 16's measurement condition).

B1-B8 compare two clients of one PAD API emulator: the real pad-analytics (a subprocess)
and pad_assets (the benchmark process). An emulator started inside the benchmark process
would share pad_assets' interpreter: its serving threads would compete with pad_assets'
download, preprocessing and inference threads for the GIL, and its CPU would count as
pad_assets'. Served from a child process, neither client shares an interpreter with the
server, as the issue's side-by-side measurement describes.

Child: ``python -m benchmarks.emulator_process SPEC.json`` builds the same emulator
``world.start_emulator`` builds in-process (same datasets, card files, models, md5 cache),
computes the manifest md5s, prints one JSON line with its URLs, and serves until its
stdin closes (so it dies with the parent). Parent: ``EmulatorProcess`` offers what the
scenarios use of an in-process emulator: ``base_url``, ``registry_url``, ``stats()``
(``/emulator/stats``, not counted by the emulator), ``warm()`` (done by the child before
it answers) and ``stop()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any


class EmulatorProcess:
    """A handle on the emulator served by a child process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.emulator_process", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=str(Path(__file__).resolve().parents[1]))
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise RuntimeError(f"the benchmark emulator process exited ({code}) before "
                               "serving; its error is above")
        urls = json.loads(line)
        self.base_url: str = urls["base_url"]
        self.registry_url: str = urls["registry_url"]
        self.pid = self._proc.pid

    def warm(self, progress: Any = None) -> None:
        """Nothing left to do: the child computed every manifest md5 before answering."""

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/emulator/stats", timeout=60) as r:
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _serve(spec: dict[str, Any]) -> None:
    from . import world

    def log(msg: str) -> None:
        print(f"[emulator process] {msg}", file=sys.stderr, flush=True)

    out = Path(spec["out"])
    models = world.bench_models(out, log)
    emu = world.start_emulator(Path(spec["folder"]), spec["datasets"], models, out,
                               spec["latency"], spec["render_on_request"], in_process=True)
    try:
        emu.warm()
        print(json.dumps({"base_url": emu.base_url, "registry_url": emu.registry_url}),
              flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        emu.stop()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
