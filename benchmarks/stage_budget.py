"""Per-stage CPU budget of a cold ``apply_model`` (issue 16): CPU time per card per stage.

    python -m benchmarks.stage_budget --cards 300

Starts the benchmark world (pre-rendered synthetic cards, MobileNetV2 model 16, the
emulator), then runs ONE cold ``apply_model`` of model 16 on an empty cache in a child
process where the functions of each stage are wrapped to add their own thread's CPU time
(``time.thread_time``, exclusive of nested stages) to the stage: PNG decode, PNG verify,
crop + resize, inference, hashing, HDF5 writes and reads, the SQLite index, the HTTP
client, the emulator's serving. "other" is the process's CPU time minus all of them
(Python glue, pandas, thread pools, the interpreter's set-up). CPU time, unlike wall
time, is robust to machine load (within the cache and SMT effects a busy machine has).
Sampling profilers (py-spy) count a runnable thread that waits for a core as busy, which
on a loaded machine moves time between stages; this does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path
sys.path.append(os.environ["BENCH_REPO"])  # after PYTHONPATH: --ref's pad_assets wins
from benchmarks import world
from benchmarks.stage_budget import instrument
out, n, cache = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
models = world.bench_models(out, print)
folder = world.card_folder(out, n, None, print)
name = world.dataset_name(n)
emu = world.start_emulator(folder, {name: n}, models, out, in_process=True)
emu.warm()
import pad_assets.dataset  # noqa: F401  (everything the cold path imports)
import pad_assets.models.tflite  # noqa: F401
from pad_assets import CachedDataset, PADTensorFlowAdapter
totals = instrument()
from benchmarks.stage_budget import native_thread_cpu
s = world.settings_for(emu, cache)
native0 = native_thread_cpu()
c0, t0 = time.process_time(), time.perf_counter()
ds = CachedDataset(name, settings=s, progress=False)
df = ds.apply_model(PADTensorFlowAdapter(model_id=16, settings=s))
native1 = native_thread_cpu()
totals["inference"] += sum(v - native0.get(k, 0.0) for k, v in native1.items())
doc = {"code": pad_assets.dataset.__file__, "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "cards": n,
       "ok": int((df["status"] == "ok").sum()), "stages_s": dict(totals)}
print("RESULT " + json.dumps(doc), flush=True)
emu.stop()
"""


_PYTHON_TIDS: set[int] = set()


def native_thread_cpu() -> dict[int, float]:
    """CPU seconds of this process's live threads that never ran Python code.

    They are the inference runtime's worker threads (XNNPACK's thread pool): the wrapped
    ``invoke`` counts only the calling thread's share.
    """
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        if tid in _PYTHON_TIDS:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def instrument() -> dict[str, float]:
    """Wrap each stage's functions; returns the live dict of CPU seconds per stage."""
    import threading
    from collections import defaultdict

    import PIL.Image
    import PIL.ImageFile
    import PIL.PngImagePlugin

    from pad_assets.devtools.emulator import server
    from pad_assets.models import runtime
    from pad_assets.sources import http
    from pad_assets.store import index, shards

    totals: dict[str, float] = defaultdict(float)
    local = threading.local()
    _PYTHON_TIDS.add(threading.get_native_id())
    thread_run = threading.Thread.run

    def run(self):  # noqa: ANN001, ANN202
        _PYTHON_TIDS.add(threading.get_native_id())
        return thread_run(self)

    threading.Thread.run = run
    for t in threading.enumerate():
        if t.native_id:
            _PYTHON_TIDS.add(t.native_id)

    def wrap(stage: str, fn):  # noqa: ANN001, ANN202
        def inner(*a, **k):  # noqa: ANN002, ANN003, ANN202
            stack = getattr(local, "stack", None)
            if stack is None:
                stack = local.stack = []
            stack.append(0.0)
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                dt = time.thread_time() - t0
                nested = stack.pop()
                totals[stage] += dt - nested
                if stack:
                    stack[-1] += dt
        inner.__wrapped__ = fn
        return inner

    def patch(owner, attr: str, stage: str) -> None:  # noqa: ANN001
        fn = getattr(owner, attr, None)
        if fn is not None:
            setattr(owner, attr, wrap(stage, fn))

    patch(runtime.TFLiteRunner, "_invoke", "inference")
    patch(PIL.ImageFile.ImageFile, "load", "png decode")
    patch(PIL.PngImagePlugin.PngImageFile, "verify", "png verify")
    patch(PIL.Image.Image, "crop", "crop + resize")
    patch(PIL.Image.Image, "resize", "crop + resize")
    patch(shards, "write_shard", "hdf5 write")
    patch(shards.ShardReader, "read", "hdf5 read")
    for name in ("items", "json_fields", "present", "present_blobs", "cards", "touch",
                 "apply_shard", "query", "refs_for"):
        patch(index.Index, name, "index (sqlite)")
    patch(http.HttpClient, "fetch", "http client")
    patch(server._Handler, "do_GET", "emulator")
    try:
        import pyspng
        patch(pyspng, "load", "png decode")
    except ImportError:
        pass
    # functions imported by name into other modules: replace every reference
    import pad_assets.hashing as hashing

    wrapped = {}
    for attr in ("sha256_bytes", "md5_bytes", "array_digest"):
        wrapped[getattr(hashing, attr)] = wrap("hashing", getattr(hashing, attr))
    for extra in ("decode_rows", "decode_png_rows", "top_rows"):
        for modname in ("pad_assets.preprocessing.decode", "pad_assets.preprocessing.png_rows"):
            mod = sys.modules.get(modname)
            fn = getattr(mod, extra, None) if mod else None
            if fn is not None:
                wrapped[fn] = wrap("png decode", fn)
    fast_verify = getattr(sys.modules.get("pad_assets.preprocessing.decode"), "_chunks_verify",
                          None)
    if fast_verify is not None:  # check_image's own chunk walk (Pillow's verify otherwise)
        wrapped[fast_verify] = wrap("png verify", fast_verify)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("pad_assets"):
            for attr, val in list(vars(mod).items()):
                if callable(val) and val in wrapped:
                    setattr(mod, attr, wrapped[val])
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage_budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cards", type=int, default=300)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    p.add_argument("--json", type=Path, default=None, help="also write the budget here")
    p.add_argument("--ref", default=None, metavar="REV",
                   help="measure REV's pad_assets (git archive) instead of this checkout's, "
                        "e.g. main: before/after budgets in one sitting")
    args = p.parse_args(argv)
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="stage-budget-") as tmp:
        code = REPO
        if args.ref:
            from benchmarks.parity_check import export

            code = export(args.ref, Path(tmp) / "ref")
        env = dict(os.environ, BENCH_REPO=str(REPO), TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=str(code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, "-c", CHILD, str(out), str(args.cards),
                               str(Path(tmp) / "cache")], capture_output=True, text=True,
                              env=env, cwd=tmp, check=False)  # cwd: no pad_assets beside
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
    if result is None:
        print(f"child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return 1
    n = result["cards"]
    cpu_ms = result["cpu_s"] / n * 1e3
    stages = {k: v / n * 1e3 for k, v in result["stages_s"].items()}
    stages["other"] = cpu_ms - sum(stages.values())
    budget = dict(sorted(stages.items(), key=lambda kv: -kv[1]))
    print(f"code: {result['code']}")
    print(f"cold apply_model, {n} cards: wall {result['wall_s'] / n * 1e3:.1f} ms/card, "
          f"CPU {cpu_ms:.1f} ms/card ({result['ok']} ok); "
          f"load {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for k, v in budget.items():
        print(f"  {k:16s} {v:6.1f} ms CPU/card")
    if args.json:
        args.json.write_text(json.dumps({"result": result, "budget_ms_per_card": budget},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
