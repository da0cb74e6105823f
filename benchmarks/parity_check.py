"""Issue 16's parity check: cold outputs of this checkout against another revision's code.

    python -m benchmarks.parity_check                 # against main, 120 synthetic cards +
                                                      # the real cards 19208 and 25834
    python -m benchmarks.parity_check --ref af23614 --cards 500

The other revision's ``pad_assets`` is exported with ``git archive`` into a temporary
folder; both run the same cold work in a child process each (empty cache, same emulator,
model 16 = the benchmark MobileNetV2): ``apply_model`` with the PAD NN pipeline (cards
downloaded inside the prediction pipeline), then ``apply_model`` with a
``WhiteBalancedNNPipeline`` on the cached raw images. Checked card by card:
labels, status and truncated flags identical, probabilities and energies within 1e-6,
every key identical, and the preprocessed arrays bit-identical (each array's blob id is
the sha256 of its dtype, shape and bytes). Exit code 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = REPO / "pad_assets_tests" / "data" / "real"

CHILD = r"""
import json, os, sys, warnings
warnings.filterwarnings("ignore")
from pathlib import Path
from pad_assets import CachedDataset, PADTensorFlowAdapter, WhiteBalancedNNPipeline
from pad_assets.settings import Settings
import pad_assets
api, registry, name, cache = sys.argv[1:5]
s = Settings.from_env(cache_dir=Path(cache), api_url=api, registry_url=registry, offline=False)
ds = CachedDataset(name, settings=s, progress=False)
model = PADTensorFlowAdapter(model_id=16, settings=s)
out = {"code": pad_assets.__file__}
for label, pipe in (("pad_nn", None), ("white_balanced", WhiteBalancedNNPipeline())):
    df = ds.apply_model(model, preprocessing=pipe)
    cols = ["card_id", "prediction", "probability", "energy", "status", "truncated",
            "raw_key", "preprocessed_key", "tensor_key", "prediction_key"]
    out[label] = json.loads(df[cols].to_json(orient="records"))
blobs = dict(ds.store.index.query(
    "SELECT key, blob FROM items WHERE layer IN ('preprocessed', 'tensor')"))
out["blobs"] = blobs
ds.close()
print("RESULT " + json.dumps(out))
"""


def export(rev: str, dest: Path) -> Path:
    """``rev``'s pad_assets package, extracted under ``dest``."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "pad_assets"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_child(code_root: Path, emu, name: str, cache: Path) -> dict:  # noqa: ANN001
    env = dict(os.environ, PYTHONPATH=str(code_root), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", CHILD, emu.base_url, emu.registry_url, name,
                           str(cache)], capture_output=True, text=True, env=env,
                          cwd=str(cache.parent), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child ({code_root}) failed: {proc.stderr[-3000:]}")


def compare(ref: dict, new: dict, where: str) -> list[str]:
    problems = []
    for label in ("pad_nn", "white_balanced"):
        a = {r["card_id"]: r for r in ref[label]}
        b = {r["card_id"]: r for r in new[label]}
        if a.keys() != b.keys():
            problems.append(f"{where} {label}: different cards")
            continue
        for cid in sorted(a):
            x, y = a[cid], b[cid]
            for col in ("prediction", "status", "truncated", "raw_key", "preprocessed_key",
                        "tensor_key", "prediction_key"):
                if x[col] != y[col]:
                    problems.append(f"{where} {label} card {cid}: {col} {x[col]!r} != {y[col]!r}")
            for col in ("probability", "energy"):
                u, v = x[col], y[col]
                if (u is None) != (v is None) or (u is not None and not (
                        math.isclose(u, v, rel_tol=0, abs_tol=1e-6))):
                    problems.append(f"{where} {label} card {cid}: {col} {u!r} vs {v!r}")
            for col in ("preprocessed_key", "tensor_key"):
                k = x[col]
                if k and ref["blobs"].get(k) != new["blobs"].get(k):
                    problems.append(f"{where} {label} card {cid}: {col} array differs "
                                    f"({ref['blobs'].get(k)} vs {new['blobs'].get(k)})")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default="main", help="git revision to compare with (default main)")
    p.add_argument("--cards", type=int, default=120, help="synthetic cards (default 120)")
    p.add_argument("--real-cards", type=int, default=6,
                   help="cards served from the real PNGs 19208 and 25834, cycled (default 6)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks import world

    out = args.out.resolve()
    models = world.bench_models(out, print)
    worlds = [("synthetic", world.card_folder(out, args.cards, None, print), args.cards),
              ("real", world.card_folder(out, args.real_cards, REAL_IMAGES, print),
               args.real_cards)]
    problems: list[str] = []
    summary = []
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        ref_code = export(args.ref, Path(tmp) / "ref")
        for kind, folder, n in worlds:
            name = world.dataset_name(n, tag=kind[:4])
            emu = world.start_emulator(folder, {name: n}, models, out, in_process=True)
            try:
                runs = {}
                for who, code in (("ref", ref_code), ("new", REPO)):
                    cache = Path(tmp) / f"{kind}-{who}" / "cache"
                    cache.parent.mkdir(parents=True)
                    runs[who] = run_child(code, emu, name, cache)
            finally:
                emu.stop()
            found = compare(runs["ref"], runs["new"], kind)
            problems += found
            trunc = sum(bool(r["truncated"]) for r in runs["new"]["pad_nn"])
            worst = max((abs(a["probability"] - b["probability"])
                         for a, b in zip(runs["ref"]["pad_nn"], runs["new"]["pad_nn"],
                                         strict=True) if a["probability"] is not None), default=0)
            summary.append(f"{kind}: {n} cards x 2 pipelines, {trunc} truncated, max "
                           f"|dprob| {worst:.1e}, {len(found)} differences "
                           f"(ref code {runs['ref']['code']})")
    for line in summary:
        print(line)
    for line in problems[:50]:
        print("  DIFF", line)
    print("PASS" if not problems else f"FAIL: {len(problems)} differences")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
