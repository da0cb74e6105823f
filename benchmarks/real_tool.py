"""The released PAD tool, ``pad-analytics`` 0.2.2, in a virtualenv of its own.

It is the reference pad_assets is checked against (``conformance_pad_analytics.py``) and the
baseline of B1 and B5, and it must never become a dependency of the project: it pins its
own stack (TensorFlow, opencv-python, Jupyter widgets) and imports them at module level.
So it lives in ``benchmarks/out/pad-analytics-0.2.2/`` (gitignored), created on first use
with the ordinary ``pip`` from the package registry (~2 min, ~2 GB), and every call runs
``pad_analytics_worker.py`` with that venv's interpreter in a fresh working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import venv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

VERSION = "0.2.2"
REQUIREMENT = f"pad-analytics=={VERSION}"
WORKER = Path(__file__).resolve().parent / "pad_analytics_worker.py"
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def venv_dir(out: Path = DEFAULT_OUT) -> Path:
    return Path(out) / f"pad-analytics-{VERSION}"


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _installed_version(python: Path) -> str | None:
    probe = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; "
         "print(version('pad-analytics'))"],
        capture_output=True, text=True, check=False)
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_venv(out: Path = DEFAULT_OUT, log: Callable[[str], None] = print) -> Path:
    """The venv's interpreter, with ``pad-analytics==0.2.2`` installed (created if needed).

    Raises ``RuntimeError`` naming the venv and pip's output if the install fails (e.g. no
    access to the package registry).
    """
    folder = venv_dir(out)
    python = _python(folder)
    if python.exists() and _installed_version(python) == VERSION:
        return python
    log(f"creating {folder} and installing {REQUIREMENT} (once; ~2 min)")
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", REQUIREMENT],
                         capture_output=True, text=True, check=False)
    got = _installed_version(python)
    if pip.returncode != 0 or got != VERSION:
        raise RuntimeError(
            f"could not install {REQUIREMENT} into {folder} (pip exit {pip.returncode}, "
            f"installed version {got!r}); pip said:\n{(pip.stdout + pip.stderr)[-3000:]}")
    return python


def _worker(python: Path, args: Sequence[str], workdir: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the tool must not see the project's modules
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONNOUSERSITE"] = "1"
    with tempfile.TemporaryDirectory(prefix="pad-analytics-run-") as tmp:
        out_json = Path(tmp) / "out.json"
        cwd = Path(workdir) if workdir is not None else Path(tmp) / "work"
        cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(python), str(WORKER), "--out", str(out_json), *args],
                              cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out_json.exists():
            raise RuntimeError(f"pad-analytics worker failed (exit {proc.returncode}): "
                               f"{proc.stderr[-3000:]}")
        doc = json.loads(out_json.read_text())
    doc["stderr_tail"] = proc.stderr[-2000:]
    return doc


def predict(python: Path, base_url: str, card_ids: Sequence[int], model_ids: Sequence[int],
            warmup: bool = False) -> dict[str, Any]:
    """``pad_analytics.padanalytics.predict(card, model)`` for every card and model, each
    timed, against ``base_url`` (a fresh working directory: weights downloaded once)."""
    args = ["predict", "--base-url", base_url, "--cards", *map(str, card_ids),
            "--models", *map(str, model_ids)]
    return _worker(python, args + (["--warmup"] if warmup else []))


def pls_features(python: Path, images: Sequence[Path]) -> dict[str, Any]:
    """The tool's ``fullRoutine(..., findMaxIntensitiesFiltered, ...)`` on PNG files, each
    timed (the ``cv.imread`` before it is not)."""
    return _worker(python, ["pls-features", *map(str, images)])


if __name__ == "__main__":  # ``python -m benchmarks.real_tool``: create the venv only
    print(ensure_venv(log=lambda m: print(m, file=sys.stderr)))
